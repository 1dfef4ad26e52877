//! A fake Deepgram live API: `wss://127.0.0.1:<port>/v1/listen?encoding=..&sample_rate=..`.
//!
//! - The upgrade needs `Authorization: Token <key>`, else `401` with Deepgram's JSON error
//!   body; an encoding other than `mulaw`/`linear16` is refused with `400`.
//! - Binary messages are audio: recorded byte for byte. Non-silent audio (mu-law other than
//!   0xFF/0x7F; linear16 samples of magnitude 64 or more) starts an utterance
//!   (`SpeechStarted`), brings an interim `Results` every `interim_every_ms` of speech, and
//!   `silence_ms` of silence after it ends the utterance: a final `Results` (`is_final` and
//!   `speech_final` true), then `UtteranceEnd`. Utterance `n` (from 1) is `"utterance n"`.
//! - Text messages are recorded. `Finalize`: a final with `from_finalize:true` (empty when no
//!   speech is pending). `CloseStream`: the pending final, `Metadata`, close 1000. `KeepAlive`
//!   only keeps the connection alive: nothing received for `idle_close_ms` closes with 1011
//!   `NET-0001`.
//! - Scripts ([`DeepgramScript`]): drop the TCP connection (no close frame) once a connection
//!   has received `drop_after_bytes` of audio (once); accept then close at once (1011
//!   `NET-0000`) the first `quick_closes` connections; hold upgrades ([`DeepgramFake::hold`]).

use crate::{Body, MAX_RECORDED_BYTES, MAX_RECORDED_ITEMS, Shared, TEST_KEY, TestCa, json};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct DeepgramScript {
    /// The API key it accepts.
    pub key: String,
    /// Speech between two interim results, in ms of audio.
    pub interim_every_ms: u64,
    /// Silence that ends an utterance, in ms of audio.
    pub silence_ms: u64,
    /// Nothing received for this long closes the connection (1011 `NET-0001`), in ms.
    pub idle_close_ms: u64,
    /// Drop the first connection that has received this many audio bytes (once).
    pub drop_after_bytes: Option<usize>,
    /// Accept then close at once this many connections first.
    pub quick_closes: usize,
    /// Called with every binary (audio) message as it is read (the benchmark's clock).
    pub on_audio: Option<AudioHook>,
}

/// What [`AudioHook`] calls.
pub type AudioFn = dyn Fn(&[u8]) + Send + Sync;

/// A function the fake calls with each audio message it reads.
#[derive(Clone)]
pub struct AudioHook(pub Arc<AudioFn>);

impl std::fmt::Debug for AudioHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AudioHook")
    }
}

impl Default for DeepgramScript {
    fn default() -> Self {
        DeepgramScript {
            key: TEST_KEY.into(),
            interim_every_ms: 200,
            silence_ms: 300,
            idle_close_ms: 10_000,
            drop_after_bytes: None,
            quick_closes: 0,
            on_audio: None,
        }
    }
}

/// What the fake received.
#[derive(Debug, Clone, Default)]
pub struct DeepgramRecord {
    /// Every audio byte received, all connections in order (at most [`MAX_RECORDED_BYTES`]).
    pub audio: Vec<u8>,
    /// Audio bytes received per accepted connection.
    pub audio_per_connection: Vec<usize>,
    /// Every text message received, in order.
    pub texts: Vec<String>,
    /// Path and query of every upgrade request, accepted or not.
    pub targets: Vec<String>,
    /// Upgrades refused (401, 400).
    pub refused: usize,
    /// Upgrades accepted.
    pub accepted: usize,
    /// Connections that ended (any way).
    pub ended: usize,
    /// Connections the fake dropped (script) or closed at once (script).
    pub dropped: usize,
}

/// A running fake Deepgram.
pub struct DeepgramFake {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA certificate to trust, PEM.
    pub ca_pem: String,
    record: Arc<Shared<DeepgramRecord>>,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DeepgramFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    script: Mutex<DeepgramScript>,
    record: Arc<Shared<DeepgramRecord>>,
    hold: watch::Receiver<bool>,
}

impl DeepgramFake {
    /// Start on an ephemeral port of 127.0.0.1.
    pub async fn start(script: DeepgramScript) -> DeepgramFake {
        let ca = TestCa::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let record = Shared::new(DeepgramRecord::default());
        let (hold, hold_rx) = watch::channel(false);
        let state = Arc::new(State { script: Mutex::new(script), record: record.clone(), hold: hold_rx });
        let task = crate::serve(listener, ca.server.clone(), move |_peer, req| handle(state.clone(), req));
        DeepgramFake { addr, ca_pem: ca.ca_pem, record, hold, task }
    }

    /// `wss://127.0.0.1:<port>`: the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("wss://{}", self.addr)
    }

    /// A snapshot of what it received.
    pub fn recorded(&self) -> DeepgramRecord {
        self.record.snapshot()
    }

    /// Wait until `pred` holds of the record; panics after [`crate::WAIT_LIMIT`] naming `what`.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&DeepgramRecord) -> bool) -> DeepgramRecord {
        self.record.wait_until(what, pred).await
    }

    /// While `true`, upgrade requests wait (counted in `targets` only once let through).
    pub fn hold(&self, held: bool) {
        self.hold.send_replace(held);
    }
}

async fn handle(
    state: Arc<State>,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let mut hold = state.hold.clone();
    let _ = hold.wait_for(|held| !held).await;
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    state.record.update(|r| {
        if r.targets.len() < MAX_RECORDED_ITEMS {
            r.targets.push(target.clone())
        }
    });
    let script = state.script.lock().expect("script").clone();
    let refuse = |status, body| {
        state.record.update(|r| r.refused += 1);
        Ok(json(status, body))
    };
    if req.uri().path() != "/v1/listen" {
        return refuse(404, json!({"err_code": "NOT_FOUND", "err_msg": "Not found."}));
    }
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Token {}", script.key) {
        return refuse(
            401,
            json!({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials.", "request_id": "fake-401"}),
        );
    }
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let encoding = param("encoding").unwrap_or_default();
    let rate: u64 = param("sample_rate").and_then(|r| r.parse().ok()).unwrap_or(0);
    if !matches!(encoding.as_str(), "mulaw" | "linear16") || !(8000..=48000).contains(&rate) {
        return refuse(400, json!({"err_code": "Bad Request", "err_msg": "unsupported encoding or sample_rate"}));
    }
    let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
        return refuse(400, json!({"err_code": "Bad Request", "err_msg": "not a WebSocket upgrade"}));
    };
    let quick = {
        let mut s = state.script.lock().expect("script");
        let quick = s.quick_closes > 0;
        s.quick_closes = s.quick_closes.saturating_sub(1);
        quick
    };
    state.record.update(|r| {
        r.accepted += 1;
        r.audio_per_connection.push(0);
    });
    let bytes_per_ms = if encoding == "mulaw" { rate / 1000 } else { rate * 2 / 1000 };
    tokio::spawn(async move {
        if let Ok(ws) = upgrade.await {
            let mulaw = encoding == "mulaw";
            let mut conn = Connection {
                state: state.clone(),
                ws,
                bytes_per_ms,
                mulaw,
                script,
                received: 0,
                rec: Recogniser::default(),
            };
            if quick {
                let _ = conn.ws.write_frame(Frame::close(1011, b"NET-0000")).await;
                state.record.update(|r| r.dropped += 1);
            } else {
                conn.run().await;
            }
        }
        state.record.update(|r| r.ended += 1);
    });
    Ok(response.map(crate::boxed))
}

/// One accepted connection's recogniser.
#[derive(Default)]
struct Recogniser {
    /// Audio received, in ms.
    audio_ms: u64,
    /// Utterances ended so far.
    utterances: u64,
    /// The utterance in progress: its start, ms of speech, ms of speech at the last interim.
    current: Option<(u64, u64, u64)>,
    silence_run_ms: u64,
}

struct Connection {
    state: Arc<State>,
    ws: WebSocket<TokioIo<Upgraded>>,
    bytes_per_ms: u64,
    mulaw: bool,
    script: DeepgramScript,
    received: usize,
    rec: Recogniser,
}

impl Connection {
    async fn run(&mut self) {
        self.ws.set_auto_close(true);
        self.ws.set_auto_pong(true);
        loop {
            let idle = Duration::from_millis(self.script.idle_close_ms);
            let frame = match tokio::time::timeout(idle, self.ws.read_frame()).await {
                Err(_) => {
                    let _ = self.ws.write_frame(Frame::close(1011, b"NET-0001")).await;
                    return;
                }
                Ok(Err(_)) => return,
                Ok(Ok(frame)) => frame,
            };
            match frame.opcode {
                OpCode::Binary => {
                    let data = frame.payload.to_vec();
                    if !self.audio(&data).await {
                        return;
                    }
                }
                OpCode::Text => {
                    let text = String::from_utf8_lossy(&frame.payload).into_owned();
                    if !self.text(&text).await {
                        return;
                    }
                }
                OpCode::Close => return,
                _ => {}
            }
        }
    }

    async fn send(&mut self, value: serde_json::Value) -> bool {
        self.ws.write_frame(Frame::text(Payload::Owned(value.to_string().into_bytes()))).await.is_ok()
    }

    /// Record audio and recognise it. `false`: the connection is over.
    async fn audio(&mut self, data: &[u8]) -> bool {
        if let Some(hook) = &self.script.on_audio {
            (hook.0)(data);
        }
        self.received += data.len();
        let received = self.received;
        self.state.record.update(|r| {
            let room = MAX_RECORDED_BYTES.saturating_sub(r.audio.len());
            r.audio.extend_from_slice(&data[..data.len().min(room)]);
            if let Some(n) = r.audio_per_connection.last_mut() {
                *n += data.len();
            }
        });
        let drop_now = {
            let mut s = self.state.script.lock().expect("script");
            match s.drop_after_bytes {
                Some(n) if received >= n => {
                    s.drop_after_bytes = None;
                    true
                }
                _ => false,
            }
        };
        if drop_now {
            self.state.record.update(|r| r.dropped += 1);
            return false;
        }
        let ms = data.len() as u64 / self.bytes_per_ms.max(1);
        let silent = if self.mulaw {
            data.iter().all(|&b| b == 0xFF || b == 0x7F)
        } else {
            data.chunks_exact(2).all(|p| i16::from_le_bytes([p[0], p[1]]).unsigned_abs() < 64)
        };
        let start = self.rec.audio_ms;
        self.rec.audio_ms += ms;
        if !silent {
            self.rec.silence_run_ms = 0;
            let (_, speech, last_interim) = self.rec.current.get_or_insert((start, 0, 0));
            let first = *speech == 0;
            *speech += ms;
            let interim = *speech - *last_interim >= self.script.interim_every_ms;
            if interim {
                *last_interim = *speech;
            }
            if first
                && !self
                    .send(json!({"type": "SpeechStarted", "channel": [0, 1], "timestamp": start as f64 / 1000.0}))
                    .await
            {
                return false;
            }
            if interim && !self.send(self.results(false, false, false)).await {
                return false;
            }
        } else if self.rec.current.is_some() {
            self.rec.silence_run_ms += ms;
            if self.rec.silence_run_ms >= self.script.silence_ms {
                let results = self.results(true, true, false);
                self.end_utterance();
                let end = self.rec.audio_ms as f64 / 1000.0;
                if !self.send(results).await
                    || !self.send(json!({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": end})).await
                {
                    return false;
                }
            }
        }
        true
    }

    fn end_utterance(&mut self) {
        self.rec.current = None;
        self.rec.utterances += 1;
        self.rec.silence_run_ms = 0;
    }

    /// A `Results` message for the utterance in progress (empty when none).
    fn results(&self, is_final: bool, speech_final: bool, from_finalize: bool) -> serde_json::Value {
        let (transcript, start, duration) = match self.rec.current {
            Some((start, speech, _)) => (format!("utterance {}", self.rec.utterances + 1), start, speech),
            None => (String::new(), self.rec.audio_ms, 0),
        };
        let words: Vec<serde_json::Value> = transcript
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                let at = (start + i as u64 * duration / 2) as f64 / 1000.0;
                json!({"word": w, "start": at, "end": at + duration as f64 / 2000.0, "confidence": 0.99, "punctuated_word": w})
            })
            .collect();
        json!({
            "type": "Results", "channel_index": [0, 1], "start": start as f64 / 1000.0, "duration": duration as f64 / 1000.0,
            "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.98, "words": words}]},
            "metadata": {"request_id": "fake-request", "model_info": {"name": "fake", "version": "1", "arch": "fake"}, "model_uuid": "fake"}
        })
    }

    /// Record a text message and answer it. `false`: the connection is over.
    async fn text(&mut self, text: &str) -> bool {
        self.state.record.update(|r| {
            if r.texts.len() < MAX_RECORDED_ITEMS {
                r.texts.push(text.to_string())
            }
        });
        let kind =
            serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v["type"].as_str().map(String::from));
        match kind.as_deref() {
            Some("Finalize") => {
                let results = self.results(true, false, true);
                if self.rec.current.is_some() {
                    self.end_utterance();
                }
                self.send(results).await
            }
            Some("CloseStream") => {
                if self.rec.current.is_some() {
                    let results = self.results(true, true, false);
                    self.end_utterance();
                    if !self.send(results).await {
                        return false;
                    }
                }
                let metadata = json!({"type": "Metadata", "transaction_key": "deprecated", "request_id": "fake-request",
                    "sha256": "", "created": "2025-01-01T00:00:00.000Z", "duration": self.rec.audio_ms as f64 / 1000.0, "channels": 1});
                let _ = self.send(metadata).await;
                let _ = self.ws.write_frame(Frame::close(1000, b"")).await;
                false
            }
            _ => true,
        }
    }
}
