//! Fake HTTP text-to-speech vendors: ElevenLabs streaming
//! (`POST /v1/text-to-speech/{voice}/stream?output_format=ulaw_8000`, key in `xi-api-key`,
//! `audio/basic` mu-law 8000 Hz) and OpenAI (`POST /v1/audio/speech`, `Authorization: Bearer`,
//! `audio/pcm` s16le 24000 Hz). The body is chunked, one 50 ms chunk of a deterministic
//! payload ([`TtsVendor::payload`]) every 50 ms. A wrong key gets the vendor's 401 JSON (OpenAI's
//! echoes the key it was given, as the real one does in part). The fake records each request
//! and whether its response was sent whole (`completed`) or the client went away first
//! (`cancelled`).

use crate::{Body, MAX_RECORDED_ITEMS, Shared, TEST_KEY, TestCa, json};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time between two chunks of the body.
pub const CADENCE: Duration = Duration::from_millis(50);

/// Which vendor the fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsVendor {
    /// ElevenLabs HTTP streaming, mu-law 8000 Hz.
    ElevenLabs,
    /// OpenAI `/v1/audio/speech`, PCM s16le 24000 Hz.
    OpenAi,
}

impl TtsVendor {
    /// Bytes of one 50 ms chunk: 400 (mu-law 8000 Hz) or 2400 (s16le 24000 Hz).
    pub fn chunk_bytes(self) -> usize {
        match self {
            TtsVendor::ElevenLabs => 400,
            TtsVendor::OpenAi => 2400,
        }
    }

    /// The whole payload of `chunks` chunks: a 400 Hz tone (mu-law bytes cycling through a
    /// fixed table for ElevenLabs; s16le samples of a sine at 24000 Hz for OpenAI).
    pub fn payload(self, chunks: usize) -> Vec<u8> {
        let n = chunks * self.chunk_bytes();
        match self {
            TtsVendor::ElevenLabs => {
                (0..n).map(|i| [0x80u8, 0x9A, 0xB4, 0xCE, 0xE8, 0x68, 0x4E, 0x34, 0x1A, 0x00][i % 10] ^ 0x55).collect()
            }
            TtsVendor::OpenAi => (0..n / 2)
                .flat_map(|i| {
                    let x = (i as f64 * 2.0 * std::f64::consts::PI * 400.0 / 24000.0).sin() * 8000.0;
                    (x.round() as i16).to_le_bytes()
                })
                .collect(),
        }
    }
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct TtsScript {
    /// The API key it accepts.
    pub key: String,
    /// 50 ms chunks per response.
    pub chunks: usize,
    /// Answer the first this many requests with 503.
    pub fail_first: usize,
    /// Break the connection after this many chunks of each response (none: send it whole).
    pub break_after_chunks: Option<usize>,
    /// Time between two chunks ([`CADENCE`], real time; zero: the whole body at once, as a
    /// vendor faster than real time).
    pub cadence: Duration,
}

impl Default for TtsScript {
    fn default() -> Self {
        TtsScript { key: TEST_KEY.into(), chunks: 10, fail_first: 0, break_after_chunks: None, cadence: CADENCE }
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct TtsRequestSeen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body (JSON).
    pub body: String,
    /// When the request was read whole; an accepted one's first chunk is sent at once after
    /// (the benchmark's "vendor first byte").
    pub at: std::time::Instant,
    /// The client's address: requests with the same one came on the same connection.
    pub peer: SocketAddr,
}

/// What the fake received and did.
#[derive(Debug, Clone, Default)]
pub struct TtsRecord {
    /// Every request, in order.
    pub requests: Vec<TtsRequestSeen>,
    /// Requests refused (401, 404, scripted 503).
    pub refused: usize,
    /// Responses sent whole.
    pub completed: usize,
    /// Responses the client went away from before their end.
    pub cancelled: usize,
    /// Responses broken by the script.
    pub broken: usize,
}

/// A running fake TTS vendor.
pub struct TtsFake {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA certificate to trust, PEM.
    pub ca_pem: String,
    /// Which vendor it plays.
    pub vendor: TtsVendor,
    record: Arc<Shared<TtsRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TtsFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    vendor: TtsVendor,
    script: Mutex<TtsScript>,
    record: Arc<Shared<TtsRecord>>,
}

impl TtsFake {
    /// Start on an ephemeral port of 127.0.0.1.
    pub async fn start(vendor: TtsVendor, script: TtsScript) -> TtsFake {
        let ca = TestCa::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let record = Shared::new(TtsRecord::default());
        let state = Arc::new(State { vendor, script: Mutex::new(script), record: record.clone() });
        let task = crate::serve(listener, ca.server.clone(), move |peer, req| handle(state.clone(), peer, req));
        TtsFake { addr, ca_pem: ca.ca_pem, vendor, record, task }
    }

    /// `https://127.0.0.1:<port>`: the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A snapshot of what it received.
    pub fn recorded(&self) -> TtsRecord {
        self.record.snapshot()
    }

    /// Wait until `pred` holds of the record; panics after [`crate::WAIT_LIMIT`] naming `what`.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&TtsRecord) -> bool) -> TtsRecord {
        self.record.wait_until(what, pred).await
    }
}

/// Records the end of a response body when dropped.
struct BodyGuard {
    record: Arc<Shared<TtsRecord>>,
    finished: bool,
    broken: bool,
}

impl BodyGuard {
    /// The body was sent whole.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        let (finished, broken) = (self.finished, self.broken);
        self.record.update(|r| {
            if broken {
                r.broken += 1
            } else if finished {
                r.completed += 1
            } else {
                r.cancelled += 1
            }
        });
    }
}

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(crate::WAIT_LIMIT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    let seen = TtsRequestSeen {
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: std::time::Instant::now(),
        peer,
    };
    state.record.update(|r| {
        if r.requests.len() < MAX_RECORDED_ITEMS {
            r.requests.push(seen)
        }
    });
    let refuse = |status, body| {
        state.record.update(|r| r.refused += 1);
        Ok(json(status, body))
    };
    let (script, fail) = {
        let mut s = state.script.lock().expect("script");
        let fail = s.fail_first > 0;
        s.fail_first = s.fail_first.saturating_sub(1);
        (s.clone(), fail)
    };
    let path = parts.uri.path();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (path_ok, key, content_type) = match state.vendor {
        TtsVendor::ElevenLabs => (
            parts.method == hyper::Method::POST
                && path.starts_with("/v1/text-to-speech/")
                && path.ends_with("/stream")
                && parts.uri.query().unwrap_or("").contains("output_format=ulaw_8000"),
            header("xi-api-key"),
            "audio/basic",
        ),
        TtsVendor::OpenAi => (
            parts.method == hyper::Method::POST && path == "/v1/audio/speech",
            header("authorization").strip_prefix("Bearer ").unwrap_or("").to_string(),
            "audio/pcm",
        ),
    };
    if !path_ok {
        return refuse(404, json!({"detail": "Not Found"}));
    }
    if key != script.key {
        return refuse(
            401,
            match state.vendor {
                TtsVendor::ElevenLabs => json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
                TtsVendor::OpenAi => json!({"error": {"message": format!("Incorrect API key provided: {key}."),
                    "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            },
        );
    }
    if fail {
        return refuse(503, json!({"detail": {"status": "service_unavailable", "message": "try again"}}));
    }
    let payload = Bytes::from(state.vendor.payload(script.chunks));
    let chunk = state.vendor.chunk_bytes();
    let guard = BodyGuard { record: state.record.clone(), finished: false, broken: false };
    let stream = futures_util::stream::unfold((0usize, guard), move |(i, mut guard)| {
        let payload = payload.clone();
        let break_after = script.break_after_chunks;
        let cadence = script.cadence;
        async move {
            if i > 0 && !cadence.is_zero() {
                tokio::time::sleep(cadence).await;
            }
            if break_after == Some(i) {
                guard.broken = true;
                return Some((Err(Box::new(BrokenBody) as crate::BoxError), (i + 1, guard)));
            }
            if i * chunk >= payload.len() {
                guard.finish();
                return None;
            }
            let data = payload.slice(i * chunk..((i + 1) * chunk).min(payload.len()));
            Some((Ok(hyper::body::Frame::data(data)), (i + 1, guard)))
        }
    });
    let body = http_body_util::StreamBody::new(stream);
    let response =
        hyper::Response::builder().header("content-type", content_type).body(BodyExt::boxed(body)).expect("response");
    Ok(response)
}

/// A scripted break of the response body.
#[derive(Debug)]
struct BrokenBody;

impl std::fmt::Display for BrokenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted break of the response body")
    }
}

impl std::error::Error for BrokenBody {}
