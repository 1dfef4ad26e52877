//! The agent's side of a simulated call (`--dashboard-token`): the dashboard socket
//! `/api/ws/telephony/stream` for one call, `init_telephony_stream`, every event printed as
//! it arrives, and the `--say` texts sent as `agent_message`s once the Media Stream started.

use super::call::{CallConfig, CallError, bounded};
use super::wire::Endpoints;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long the dashboard waits, after the call ended, for the gateway's `ended` update.
const LINGER: Duration = Duration::from_secs(3);

/// What the agent says, and when.
#[derive(Clone, Debug)]
pub struct Says {
    pub texts: Vec<String>,
    /// The first `agent_message` this long after the stream's `start`.
    pub after: Duration,
    /// Each next one this much later.
    pub gap: Duration,
}

/// A `customer_transcript` event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transcript {
    pub transcript: String,
    pub is_final: bool,
    pub confidence: Option<f64>,
    pub detected_language: Option<String>,
}

/// An `agent_tts_audio` event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TtsAudio {
    pub message: String,
    /// Bytes of its base64 mu-law audio.
    pub audio_bytes: usize,
}

/// A `telephony_error` event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorEvent {
    pub error_code: String,
    pub message: String,
}

/// What the dashboard saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DashboardReport {
    pub transcripts: Vec<Transcript>,
    pub agent_tts_audio: Vec<TtsAudio>,
    /// `call_status_update` statuses, in order.
    pub status_updates: Vec<String>,
    pub errors: Vec<ErrorEvent>,
    /// `agent_message`s sent.
    pub agent_messages_sent: usize,
    /// `--say` texts not sent because the call ended first.
    pub agent_messages_not_sent: usize,
    /// Messages of other types (`pong`, `telephony_connected`, …).
    pub other_messages: u64,
    /// How the socket closed, when the gateway closed it.
    pub closed: Option<(u16, String)>,
}

impl DashboardReport {
    /// Record one message of the gateway; returns the line to print (audio abbreviated).
    pub fn record(&mut self, text: &str) -> String {
        let Ok(mut v) = serde_json::from_str::<Value>(text) else {
            self.other_messages += 1;
            return format!("(not JSON) {text}");
        };
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        match v["type"].as_str().unwrap_or_default() {
            "customer_transcript" => self.transcripts.push(Transcript {
                transcript: s(&v, "transcript"),
                is_final: v["is_final"].as_bool().unwrap_or(false),
                confidence: v["confidence"].as_f64(),
                detected_language: v["detected_language"].as_str().map(str::to_string),
            }),
            "agent_tts_audio" => {
                let audio = s(&v, "audio_data");
                let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &audio)
                    .map(|b| b.len())
                    .unwrap_or(0);
                self.agent_tts_audio.push(TtsAudio { message: s(&v, "message"), audio_bytes: bytes });
                v["audio_data"] = Value::String(format!("<{bytes} bytes of mu-law>"));
            }
            "call_status_update" => self.status_updates.push(s(&v, "status")),
            "telephony_error" => {
                self.errors.push(ErrorEvent { error_code: s(&v, "error_code"), message: s(&v, "message") })
            }
            _ => self.other_messages += 1,
        }
        v.to_string()
    }

    fn ended(&self) -> bool {
        self.status_updates.iter().any(|s| s == "ended")
    }
}

/// `agent_message` for `call_id`.
pub fn agent_message(call_id: &str, text: &str) -> String {
    json!({"type": "agent_message", "call_id": call_id, "message": text, "language": "auto", "timestamp": iso_now()})
        .to_string()
}

/// Now in ISO 8601 UTC with milliseconds (`2024-01-01T12:00:00.000Z`).
pub fn iso_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    iso(d.as_millis() as i64)
}

/// `ms` since the Unix epoch in ISO 8601 UTC (civil-from-days, H. Hinnant).
fn iso(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

type Io = TokioIo<Upgraded>;

/// What the dashboard's reader passes on.
enum Got {
    Text(String),
    PongDue(Vec<u8>),
    Closed(u16, String),
}

/// A connected dashboard: its task runs until [`Dashboard::finish`].
pub struct Dashboard {
    started: Option<oneshot::Sender<Instant>>,
    end: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<DashboardReport>,
}

impl Dashboard {
    /// Connect for `call_id`, send `init_telephony_stream` and wait for `telephony_connected`
    /// (events before it are printed and kept). Err: the upgrade or the token refused (close
    /// 4001), a `telephony_error`, or no answer within the timeout.
    pub async fn connect(
        cfg: &CallConfig,
        endpoints: &Endpoints,
        token: &str,
        call_id: &str,
        says: Says,
        print: impl Fn(&str) + Send + 'static,
    ) -> Result<Dashboard, CallError> {
        let url = endpoints.dashboard_url(token, call_id);
        let client = match bounded(cfg, "the dashboard upgrade", gatewayd_e2e::Client::connect_with(&url, &[])).await? {
            Ok(c) => c,
            Err(r) => return Err(CallError::Dashboard(format!("upgrade refused: {} {}", r.status, r.body))),
        };
        let (rd, mut wr) = client.into_websocket().split(tokio::io::split);
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(read(rd, tx));
        let init = json!({"type": "init_telephony_stream", "call_id": call_id, "language": "auto", "model": "nova-2", "client_type": "telephony"});
        send(&mut wr, init.to_string())
            .await
            .map_err(|source| CallError::Io { what: "the dashboard socket", source })?;
        let mut report = DashboardReport::default();
        let deadline = Instant::now() + cfg.timeout;
        loop {
            let got = tokio::time::timeout_at(deadline, rx.recv()).await.map_err(|_| CallError::Timeout {
                what: "the dashboard's telephony_connected",
                secs: cfg.timeout.as_secs_f64(),
            })?;
            match got {
                Some(Got::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    print(&format!("dashboard: {}", report.record(&text)));
                    match v["type"].as_str() {
                        Some("telephony_connected") => break,
                        Some("telephony_error") => {
                            return Err(CallError::Dashboard(format!(
                                "{}: {}",
                                v["error_code"].as_str().unwrap_or("?"),
                                v["message"].as_str().unwrap_or("")
                            )));
                        }
                        _ => {}
                    }
                }
                Some(Got::PongDue(p)) => {
                    let _ = pong(&mut wr, p).await;
                }
                Some(Got::Closed(code, reason)) => {
                    let why = if code == 4001 { " (the token was refused)" } else { "" };
                    return Err(CallError::Dashboard(format!("closed {code} {reason}{why}")));
                }
                None => return Err(CallError::Dashboard("the connection broke".into())),
            }
        }
        let (started_tx, started_rx) = oneshot::channel();
        let (end_tx, end_rx) = oneshot::channel();
        let task = tokio::spawn(run(wr, rx, report, call_id.to_string(), says, started_rx, end_rx, print));
        Ok(Dashboard { started: Some(started_tx), end: Some(end_tx), task })
    }

    /// The Media Stream started at `at` (the `--say` clock starts).
    pub fn stream_started(&mut self, at: Instant) {
        if let Some(s) = self.started.take() {
            let _ = s.send(at);
        }
    }

    /// The call ended: wait (a few seconds at most) for the gateway's `ended` update, close,
    /// and return what the dashboard saw.
    pub async fn finish(mut self) -> DashboardReport {
        if let Some(e) = self.end.take() {
            let _ = e.send(());
        }
        match tokio::time::timeout(LINGER + Duration::from_secs(2), &mut self.task).await {
            Ok(Ok(report)) => report,
            _ => {
                self.task.abort();
                DashboardReport::default()
            }
        }
    }
}

/// The dashboard after `telephony_connected`: print and keep events, send the says on time,
/// and after the call's end wait for `ended` (or [`LINGER`]).
#[allow(clippy::too_many_arguments)]
async fn run(
    mut wr: WebSocketWrite<tokio::io::WriteHalf<Io>>,
    mut rx: mpsc::UnboundedReceiver<Got>,
    mut report: DashboardReport,
    call_id: String,
    says: Says,
    mut started_rx: oneshot::Receiver<Instant>,
    mut end_rx: oneshot::Receiver<()>,
    print: impl Fn(&str),
) -> DashboardReport {
    let mut started: Option<Instant> = None;
    let mut sent = 0;
    let mut linger_until: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(365 * 86_400);
    loop {
        let next_say = match started {
            Some(s) if sent < says.texts.len() && linger_until.is_none() => s + says.after + says.gap * sent as u32,
            _ => far,
        };
        tokio::select! {
            biased;
            got = rx.recv() => match got {
                Some(Got::Text(text)) => {
                    print(&format!("dashboard: {}", report.record(&text)));
                    if linger_until.is_some() && report.ended() {
                        break;
                    }
                }
                Some(Got::PongDue(p)) => {
                    let _ = pong(&mut wr, p).await;
                }
                Some(Got::Closed(code, reason)) => {
                    print(&format!("dashboard: closed {code} {reason}"));
                    report.closed = Some((code, reason));
                    break;
                }
                None => break,
            },
            at = &mut started_rx, if started.is_none() => started = Some(at.unwrap_or_else(|_| Instant::now())),
            _ = &mut end_rx, if linger_until.is_none() => {
                if report.ended() {
                    break;
                }
                linger_until = Some(Instant::now() + LINGER);
            }
            _ = tokio::time::sleep_until(next_say) => {
                let text = &says.texts[sent];
                print(&format!("dashboard: sending agent_message {text:?}"));
                if send(&mut wr, agent_message(&call_id, text)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            _ = tokio::time::sleep_until(linger_until.unwrap_or(far)) => break,
        }
    }
    report.agent_messages_sent = sent;
    report.agent_messages_not_sent = says.texts.len() - sent;
    let _ = wr.write_frame(Frame::close(1000, b"")).await;
    report
}

/// Read the dashboard socket's frames into `tx` until it closes.
async fn read(mut rd: WebSocketRead<tokio::io::ReadHalf<Io>>, tx: mpsc::UnboundedSender<Got>) {
    let pongs = tx.clone();
    let mut obligated = move |f: Frame<'_>| {
        if f.opcode == OpCode::Pong {
            let _ = pongs.send(Got::PongDue(f.payload.to_vec()));
        }
        async { Ok::<_, std::io::Error>(()) }
    };
    loop {
        let got = match rd.read_frame(&mut obligated).await {
            Ok(f) if f.opcode == OpCode::Text => Got::Text(String::from_utf8_lossy(&f.payload).into_owned()),
            Ok(f) if f.opcode == OpCode::Close => {
                let p = &f.payload;
                let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                Got::Closed(code, String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned())
            }
            Ok(_) => continue,
            Err(e) => Got::Closed(1006, e.to_string()),
        };
        let last = matches!(got, Got::Closed(..));
        if tx.send(got).is_err() || last {
            break;
        }
    }
}

async fn send(wr: &mut WebSocketWrite<tokio::io::WriteHalf<Io>>, text: String) -> anyhow::Result<()> {
    wr.write_frame(Frame::text(Payload::Owned(text.into_bytes()))).await?;
    Ok(())
}

async fn pong(wr: &mut WebSocketWrite<tokio::io::WriteHalf<Io>>, payload: Vec<u8>) -> anyhow::Result<()> {
    wr.write_frame(Frame::pong(Payload::Owned(payload))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_timestamps_are_utc_with_milliseconds() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_704_110_400_123), "2024-01-01T12:00:00.123Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert!(iso_now().ends_with('Z'));
    }

    #[test]
    fn dashboard_events_are_kept_and_printed_with_audio_abbreviated() {
        let mut r = DashboardReport::default();
        r.record(r#"{"type":"call_status_update","call_id":"c","status":"answered"}"#);
        r.record(r#"{"type":"customer_transcript","call_id":"c","transcript":"hello","is_final":true,"confidence":0.9,"detected_language":"en"}"#);
        r.record(r#"{"type":"customer_transcript","call_id":"c","transcript":"hel","is_final":false}"#);
        let line = r.record(r#"{"type":"agent_tts_audio","call_id":"c","audio_data":"/////w==","message":"hi"}"#);
        assert!(line.contains("<4 bytes of mu-law>") && !line.contains("/////w=="), "{line}");
        r.record(r#"{"type":"telephony_error","error_code":"TTS_ERROR","message":"call not live"}"#);
        r.record(r#"{"type":"pong"}"#);
        r.record("junk");
        assert_eq!(r.status_updates, vec!["answered"]);
        assert_eq!(
            r.transcripts,
            vec![
                Transcript {
                    transcript: "hello".into(),
                    is_final: true,
                    confidence: Some(0.9),
                    detected_language: Some("en".into())
                },
                Transcript { transcript: "hel".into(), is_final: false, confidence: None, detected_language: None },
            ]
        );
        assert_eq!(r.agent_tts_audio, vec![TtsAudio { message: "hi".into(), audio_bytes: 4 }]);
        assert_eq!(r.errors, vec![ErrorEvent { error_code: "TTS_ERROR".into(), message: "call not live".into() }]);
        assert_eq!(r.other_messages, 2);
        assert!(!r.ended());
        r.record(r#"{"type":"call_status_update","status":"ended"}"#);
        assert!(r.ended());
    }

    #[test]
    fn agent_messages_have_the_spec_shape() {
        let v: Value = serde_json::from_str(&agent_message("c1", "Hello \"there\"")).unwrap();
        assert_eq!(v["type"], "agent_message");
        assert_eq!(v["call_id"], "c1");
        assert_eq!(v["message"], "Hello \"there\"");
        assert_eq!(v["language"], "auto");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
