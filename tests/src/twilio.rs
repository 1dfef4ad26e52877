//! Playing Twilio against the daemon in tests (telephony.md): signed webhooks, the TwiML
//! answer, a Media Stream that sends `connected`, `start` and `media` and echoes `mark`s the way
//! Twilio does, and the config of the `twilio` plugin with its routes.
//!
//! The daemon's `[twilio] public_base_url` is [`PUBLIC_BASE`], not its loopback address: as
//! behind a proxy, Twilio (this client) signs the public URL and connects to the daemon.

use crate::{Client, Daemon, Incoming, PATIENCE, Refused, plugin_file};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::time::Duration;

/// The URL Twilio calls the daemon at (as configured in `[twilio]`).
pub const PUBLIC_BASE: &str = "https://voice.example.test";
/// The test account's auth token.
pub const AUTH_TOKEN: &str = "test-twilio-token-6d2a9f";
/// The webhook paths.
pub const VOICE_PATH: &str = "/api/telephony/twilio/voice";
pub const STATUS_PATH: &str = "/api/telephony/twilio/status";
/// Bytes of one 20 ms mu-law frame.
pub const FRAME: usize = 160;

/// `[twilio]`, the four telephony routes of the default config and `[plugins.twilio]` with
/// `welcome` as its welcome message and `extra_config` added to its config table.
pub fn toml(welcome: &str, extra_config: &str) -> String {
    format!(
        r#"
[twilio]
auth_token = "{AUTH_TOKEN}"
public_base_url = "{PUBLIC_BASE}"

[[routes]]
listener = "main"
path = "/api/telephony/twilio/media-stream"
kind = "websocket"
plugin = "twilio"
auth = "none"
twilio_signature = true
media = {{ codec = "pcmu", rate = 8000, framing = "twilio" }}

[[routes]]
listener = "main"
path = "/api/telephony/twilio/"
prefix = true
kind = "http"
plugin = "twilio"
auth = "none"
twilio_signature = true

[[routes]]
listener = "main"
path = "/api/ws/telephony/stream"
kind = "websocket"
plugin = "twilio"
auth = "required"
refused_token_close = 4001

[[routes]]
listener = "main"
path = "/api/telephony/"
prefix = true
kind = "http"
plugin = "twilio"
auth = "optional"

[plugins.twilio]
file = "{file}"
fault_report = "none"
[plugins.twilio.limits]
event_timeout_ms = 1000
memory_mb = 64
[plugins.twilio.capabilities]
store = "read-write"
[plugins.twilio.media]
keep_said_audio = true
[plugins.twilio.config]
welcome_message = "{welcome}"
{extra_config}
"#,
        file = plugin_file("twilio").display(),
    )
}

/// `X-Twilio-Signature` of a form POST to `path_and_query` (Twilio's algorithm, with the
/// daemon's own implementation; `tests/tests/telephony.rs` checks it against Twilio's library).
pub fn sign(path_and_query: &str, params: &[(String, String)]) -> String {
    gatewayd::auth_twilio::signature(AUTH_TOKEN, &format!("{PUBLIC_BASE}{path_and_query}"), params)
}

/// The form Twilio posts for an incoming call.
pub fn call_params(call_sid: &str, from: &str, to: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// An HTTP answer as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// POST `params` as a form to the daemon at `path_and_query`, with `signature` as
/// `X-Twilio-Signature` when given.
pub async fn post_form(
    d: &Daemon,
    path_and_query: &str,
    params: &[(String, String)],
    signature: Option<&str>,
) -> Result<Answer> {
    let body: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let stream = tokio::net::TcpStream::connect(d.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path_and_query)
        .header("Host", d.addr.to_string())
        .header("Content-Type", "application/x-www-form-urlencoded");
    if let Some(s) = signature {
        req = req.header("X-Twilio-Signature", s);
    }
    let resp = sender.send_request(req.body(http_body_util::Full::new(Bytes::from(body)))?).await?;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    Ok(Answer { status, content_type, body })
}

/// A signed POST of `params` to `path`.
pub async fn post_signed(d: &Daemon, path: &str, params: &[(String, String)]) -> Result<Answer> {
    post_form(d, path, params, Some(&sign(path, params))).await
}

/// What the TwiML of an answered call says: the Media Stream's URL and its `call_id`.
#[derive(Debug, Clone)]
pub struct Twiml {
    pub stream_url: String,
    pub call_id: String,
}

/// Read `<Connect><Stream url=".."><Parameter name="call_id" value=".."/>` out of `twiml`.
pub fn parse_twiml(twiml: &str) -> Result<Twiml> {
    let attr = |tag_start: &str, name: &str| -> Option<String> {
        let tag = &twiml[twiml.find(tag_start)?..];
        let tag = &tag[..tag.find('>')?];
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let value = &tag[at..];
        Some(xml_unescape(&value[..value.find('"')?]))
    };
    let stream_url = attr("<Stream", "url").ok_or_else(|| anyhow!("no <Stream url> in {twiml}"))?;
    let call_id = match twiml.find("name=\"call_id\"") {
        Some(i) => attr(&twiml[..i][twiml[..i].rfind("<Parameter").unwrap_or(0)..], "value"),
        None => None,
    }
    .ok_or_else(|| anyhow!("no call_id <Parameter> in {twiml}"))?;
    Ok(Twiml { stream_url, call_id })
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&apos;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Post a signed incoming-call webhook and read its TwiML. Err: not 200 TwiML with a Stream.
pub async fn incoming_call(d: &Daemon, call_sid: &str, from: &str, to: &str) -> Result<Twiml> {
    let answer = post_signed(d, VOICE_PATH, &call_params(call_sid, from, to)).await?;
    if answer.status != 200 || !answer.content_type.starts_with("text/xml") {
        bail!("webhook answered {} {}: {}", answer.status, answer.content_type, answer.body);
    }
    parse_twiml(&answer.body)
}

/// A Twilio Media Stream to the daemon.
pub struct MediaStream {
    client: Client,
    pub stream_sid: String,
    /// Mu-law the daemon sent (the `media` payloads, in order).
    pub heard: Vec<u8>,
    /// Marks received and not yet echoed (hold them to test late echoes).
    pub pending_marks: Vec<String>,
    /// Echo each mark as soon as it is read (Twilio's behaviour once the audio played).
    pub echo_marks: bool,
    /// `clear` messages received.
    pub clears: usize,
    sequence: u64,
}

impl MediaStream {
    /// Open the stream of `twiml` (its public URL mapped to the daemon) signed with the
    /// auth token (or `signature` when given), then send `connected` and `start`.
    pub async fn open(d: &Daemon, twiml: &Twiml, call_sid: &str) -> Result<MediaStream> {
        let mut stream = MediaStream::connect(d, &twiml.stream_url, None)
            .await?
            .map_err(|r| anyhow!("Media Stream refused: {} {}", r.status, r.body))?;
        stream.start(call_sid, &twiml.call_id).await?;
        Ok(stream)
    }

    /// The WebSocket upgrade alone, with `signature` (none: the correct one).
    pub async fn connect(
        d: &Daemon,
        public_url: &str,
        signature: Option<&str>,
    ) -> Result<Result<MediaStream, Refused>> {
        let path = public_url
            .strip_prefix(&PUBLIC_BASE.replacen("https://", "wss://", 1))
            .ok_or_else(|| anyhow!("stream URL {public_url} is not under {PUBLIC_BASE}"))?;
        let good = gatewayd::auth_twilio::signature(AUTH_TOKEN, public_url, &[]);
        let signature = signature.unwrap_or(&good);
        let headers: Vec<(&str, &str)> =
            if signature.is_empty() { Vec::new() } else { vec![("X-Twilio-Signature", signature)] };
        Ok(Client::connect_with(&d.ws_url(path), &headers).await?.map(|client| MediaStream {
            client,
            stream_sid: format!("MZ{}", uuid::Uuid::new_v4().simple()),
            heard: Vec::new(),
            pending_marks: Vec::new(),
            echo_marks: true,
            clears: 0,
            sequence: 0,
        }))
    }

    /// Send `connected` and `start` for `call_sid` with the `call_id` parameter.
    pub async fn start(&mut self, call_sid: &str, call_id: &str) -> Result<()> {
        self.client.send_json(&json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})).await?;
        self.sequence += 1;
        let start = json!({
            "event": "start", "sequenceNumber": self.sequence.to_string(), "streamSid": self.stream_sid,
            "start": {
                "accountSid": "AC00000000000000000000000000000001", "streamSid": self.stream_sid,
                "callSid": call_sid, "tracks": ["inbound"], "customParameters": {"call_id": call_id},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            }
        });
        self.client.send_json(&start).await
    }

    /// Send a Media Streams message as it is.
    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        self.client.send_json(v).await
    }

    /// Send `frames` `media` messages of 20 ms, one per 20 ms: `byte` repeated, or (none)
    /// speech-like mu-law (never silence). Returns what was sent.
    pub async fn send_audio(&mut self, frames: usize, byte: Option<u8>) -> Result<Vec<u8>> {
        let audio: Vec<u8> = (0..frames)
            .flat_map(|n| {
                (0..FRAME).map(move |i| match byte {
                    Some(b) => b,
                    None => 0x10 + ((i + n * 7) % 64) as u8,
                })
            })
            .collect();
        self.send_mulaw(&audio).await?;
        Ok(audio)
    }

    /// Send `audio` (mu-law, 8000 Hz) as `media` messages of 20 ms, one per 20 ms, as Twilio
    /// streams a caller; a last partial frame is padded with silence.
    pub async fn send_mulaw(&mut self, audio: &[u8]) -> Result<()> {
        let mut next = tokio::time::Instant::now();
        for (n, chunk) in audio.chunks(FRAME).enumerate() {
            let mut frame = chunk.to_vec();
            frame.resize(FRAME, 0xFF);
            self.sequence += 1;
            let payload = base64::engine::general_purpose::STANDARD.encode(&frame);
            let media = json!({
                "event": "media", "sequenceNumber": self.sequence.to_string(), "streamSid": self.stream_sid,
                "media": {"track": "inbound", "chunk": n.to_string(), "timestamp": (n * 20).to_string(), "payload": payload}
            });
            self.client.send_json(&media).await?;
            next += Duration::from_millis(20);
            tokio::time::sleep_until(next).await;
        }
        Ok(())
    }

    /// Echo a mark back (`{"event":"mark",...}`), as Twilio does once the audio before it played.
    pub async fn echo_mark(&mut self, name: &str) -> Result<()> {
        self.sequence += 1;
        let mark = json!({"event": "mark", "sequenceNumber": self.sequence.to_string(),
                          "streamSid": self.stream_sid, "mark": {"name": name}});
        self.client.send_json(&mark).await
    }

    /// Read the next message the daemon sends: `media` is added to `heard`, `mark` is echoed
    /// (or kept in `pending_marks`), `clear` counted. Returns the message.
    pub async fn next(&mut self, within: Duration) -> Result<Value> {
        let message = match self.client.recv_within(within).await? {
            Incoming::Text(t) => serde_json::from_str::<Value>(&t).with_context(|| format!("not JSON: {t}"))?,
            Incoming::Binary(_) => bail!("Twilio never gets binary messages"),
            Incoming::Closed(code, reason) => bail!("closed: {code} {reason}"),
        };
        if message["streamSid"] != self.stream_sid.as_str() {
            bail!("a message for another stream: {message}");
        }
        self.account(&message).await?;
        Ok(message)
    }

    /// Read until a message with `event` arrives (within [`PATIENCE`]).
    pub async fn until(&mut self, event: &str) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next(left).await.with_context(|| format!("waiting for `{event}`"))?;
            if m["event"] == event {
                return Ok(m);
            }
        }
    }

    /// Read whatever arrives for `d` (media, marks, clears); Err if the stream closes.
    pub async fn drain(&mut self, d: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.client.recv_within(left).await {
                Ok(Incoming::Text(t)) => {
                    let message: Value = serde_json::from_str(&t)?;
                    self.account(&message).await?;
                }
                Ok(Incoming::Closed(code, reason)) => bail!("closed: {code} {reason}"),
                Ok(Incoming::Binary(_)) => bail!("Twilio never gets binary messages"),
                Err(_) => return Ok(()),
            }
        }
    }

    /// Keep what a message from the daemon carries: audio, marks (echoed or held), clears.
    async fn account(&mut self, message: &Value) -> Result<()> {
        match message["event"].as_str() {
            Some("media") => {
                let payload = message["media"]["payload"].as_str().unwrap_or_default();
                self.heard.extend(base64::engine::general_purpose::STANDARD.decode(payload)?);
            }
            Some("mark") => {
                let name = message["mark"]["name"].as_str().unwrap_or_default().to_string();
                if self.echo_marks { self.echo_mark(&name).await? } else { self.pending_marks.push(name) }
            }
            Some("clear") => self.clears += 1,
            _ => bail!("unexpected message from the daemon: {message}"),
        }
        Ok(())
    }

    /// Send `stop` (the call ended at Twilio).
    pub async fn stop(&mut self, call_sid: &str) -> Result<()> {
        self.sequence += 1;
        let stop = json!({"event": "stop", "sequenceNumber": self.sequence.to_string(), "streamSid": self.stream_sid,
                          "stop": {"accountSid": "AC00000000000000000000000000000001", "callSid": call_sid}});
        self.client.send_json(&stop).await
    }

    /// The next close of the stream (code, reason), skipping messages.
    pub async fn closed(&mut self) -> Result<(u16, String)> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.client.recv_within(left).await? {
                Incoming::Closed(code, reason) => return Ok((code, reason)),
                _ => continue,
            }
        }
    }
}

/// An agent's dashboard socket (`/api/ws/telephony/stream`), initialised.
pub struct Dashboard {
    pub client: Client,
}

impl Dashboard {
    /// Connect with `token` to `call_id` ("" = the organisation's feed) and send
    /// `init_telephony_stream`; Ok once `telephony_connected` came.
    pub async fn open(d: &Daemon, token: &str, call_id: &str) -> Result<Dashboard> {
        let url = d.ws_url(&format!(
            "/api/ws/telephony/stream?token={token}&call_id={call_id}&language=en&model=nova-2&client_type=telephony"
        ));
        let mut client = Client::connect(&url).await?;
        client
            .send_json(&json!({"type": "init_telephony_stream", "call_id": call_id, "language": "en",
                               "model": "nova-2", "client_type": "telephony"}))
            .await?;
        let connected = client.recv_json().await?;
        if connected["type"] != "telephony_connected" || connected["status"] != "ready" {
            bail!("expected telephony_connected, got {connected}");
        }
        Ok(Dashboard { client })
    }

    /// The next message whose `type` is `kind` (others are skipped and returned with it).
    pub async fn until(&mut self, kind: &str) -> Result<(Value, Vec<Value>)> {
        let mut skipped = Vec::new();
        loop {
            let m = self.client.recv_json().await.with_context(|| format!("waiting for `{kind}`"))?;
            if m["type"] == kind {
                return Ok((m, skipped));
            }
            skipped.push(m);
        }
    }

    /// The next `call_status_update` with `status`.
    pub async fn status(&mut self, status: &str) -> Result<Value> {
        loop {
            let (m, _) = self.until("call_status_update").await?;
            if m["status"] == status {
                return Ok(m);
            }
        }
    }
}
