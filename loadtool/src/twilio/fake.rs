//! Tests of the whole tool against a fake gateway in this process (until the real twilio
//! plugin exists): it checks both signatures with the daemon's own `auth_twilio::verify`,
//! answers TwiML, echoes the caller's audio on the Media Stream, sends a mark and a clear,
//! and serves a dashboard socket that acknowledges `agent_message`s.

use super::call::CallConfig;
use super::wire::{self, Endpoints};
use super::{Log, TwilioArgs};
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "fake-token";

/// What the fake gateway saw.
#[derive(Default, Debug)]
struct Seen {
    webhooks: Vec<Vec<(String, String)>>,
    status_callbacks: Vec<Vec<(String, String)>>,
    /// Every text message on every Media Stream, parsed.
    stream_messages: Vec<Value>,
    dashboard_messages: Vec<Value>,
    refused: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    port: u16,
    seen: Arc<Mutex<Seen>>,
    ended: tokio::sync::broadcast::Sender<String>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = Fake { port, seen: Arc::default(), ended: tokio::sync::broadcast::channel(16).0 };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            TokioIo::new(tcp),
                            hyper::service::service_fn(move |req| f.clone().serve(req)),
                        )
                        .with_upgrades()
                        .await;
                });
            }
        });
        fake
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    async fn serve(self, mut req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_string();
        let signature =
            req.headers().get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let reply = |status: u16, body: String| {
            Ok(Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap())
        };
        if path == "/api/ws/telephony/stream" {
            let query = req.uri().query().unwrap_or_default().to_string();
            let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return reply(400, String::new());
            };
            tokio::spawn(self.clone().dashboard(upgrade, query));
            return Ok(response.map(|_| Full::new(Bytes::new())));
        }
        if path == "/api/telephony/twilio/media-stream" {
            let url = format!("ws://127.0.0.1:{}{path}", self.port);
            if !gatewayd::auth_twilio::verify(TOKEN, &url, &[], &signature) {
                self.seen.lock().unwrap().refused.push(path);
                return reply(403, r#"{"error":"bad signature"}"#.into());
            }
            let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                return reply(400, String::new());
            };
            tokio::spawn(self.clone().media_stream(upgrade));
            return Ok(response.map(|_| Full::new(Bytes::new())));
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        if !gatewayd::auth_twilio::verify(TOKEN, &url, &form, &signature) {
            self.seen.lock().unwrap().refused.push(path);
            return reply(403, r#"{"error":"bad signature"}"#.into());
        }
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        match path.as_str() {
            wire::VOICE_PATH => {
                let (to, sid) = (get("To"), get("CallSid"));
                self.seen.lock().unwrap().webhooks.push(form);
                if to == "+10000000000" {
                    return reply(
                        200,
                        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject/></Response>"#.into(),
                    );
                }
                reply(
                    200,
                    format!(
                        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="ws://127.0.0.1:{}/api/telephony/twilio/media-stream"><Parameter name="call_id" value="call-{sid}"/></Stream></Connect></Response>"#,
                        self.port
                    ),
                )
            }
            wire::STATUS_PATH => {
                self.seen.lock().unwrap().status_callbacks.push(form);
                reply(204, String::new())
            }
            _ => reply(404, String::new()),
        }
    }

    /// Echo every media frame; after the 10th, send a mark; after the 20th, another mark and a
    /// clear; on `stop`, tell the dashboards the call ended and close.
    async fn media_stream(self, upgrade: fastwebsockets::upgrade::UpgradeFut) {
        let mut ws = upgrade.await.unwrap();
        ws.set_auto_close(true);
        let mut sid = String::new();
        let mut media = 0;
        loop {
            let Ok(frame) = ws.read_frame().await else { return };
            if frame.opcode == OpCode::Close {
                return;
            }
            if frame.opcode != OpCode::Text {
                continue;
            }
            let v: Value = serde_json::from_slice(&frame.payload).unwrap();
            self.seen.lock().unwrap().stream_messages.push(v.clone());
            let mut out = Vec::new();
            match v["event"].as_str().unwrap() {
                "start" => sid = v["streamSid"].as_str().unwrap().to_string(),
                "media" => {
                    media += 1;
                    out.push(json!({"event": "media", "streamSid": sid, "media": {"payload": v["media"]["payload"]}}));
                    if media == 10 {
                        out.push(json!({"event": "mark", "streamSid": sid, "mark": {"name": "m10"}}));
                    }
                    if media == 20 {
                        out.push(json!({"event": "mark", "streamSid": sid, "mark": {"name": "m20"}}));
                        out.push(json!({"event": "clear", "streamSid": sid}));
                    }
                }
                "stop" => {
                    let call = v["stop"]["callSid"].as_str().unwrap().to_string();
                    let _ = self.ended.send(format!("call-{call}"));
                    let _ = ws.write_frame(Frame::close(1000, b"")).await;
                    return;
                }
                _ => {}
            }
            for m in out {
                if ws.write_frame(Frame::text(Payload::Owned(m.to_string().into_bytes()))).await.is_err() {
                    return;
                }
            }
        }
    }

    /// `token=good` only (else close 4001); `init_telephony_stream` -> `telephony_connected`
    /// and a transcript; `agent_message` -> `agent_tts_audio`; the call's end -> `ended`.
    async fn dashboard(self, upgrade: fastwebsockets::upgrade::UpgradeFut, query: String) {
        let mut ws = upgrade.await.unwrap();
        let q: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        if get("token") != "good" {
            let _ = ws.write_frame(Frame::close(4001, b"unauthorized")).await;
            return;
        }
        let call_id = get("call_id");
        let mut ended = self.ended.subscribe();
        let send = |v: Value| Frame::text(Payload::Owned(v.to_string().into_bytes()));
        loop {
            let frame = tokio::select! {
                f = ws.read_frame() => match f { Ok(f) => f, Err(_) => return },
                e = ended.recv() => {
                    if e.ok().as_deref() == Some(call_id.as_str()) {
                        let _ = ws.write_frame(send(json!({"type": "call_status_update", "call_id": call_id, "status": "ended"}))).await;
                    }
                    continue;
                }
            };
            if frame.opcode == OpCode::Close {
                return;
            }
            let v: Value = serde_json::from_slice(&frame.payload).unwrap_or_default();
            self.seen.lock().unwrap().dashboard_messages.push(v.clone());
            let replies = match v["type"].as_str() {
                Some("init_telephony_stream") => vec![
                    json!({"type": "telephony_connected", "call_id": call_id, "status": "ready"}),
                    json!({"type": "customer_transcript", "call_id": call_id, "transcript": "hello", "is_final": true, "confidence": 0.5}),
                ],
                Some("agent_message") => vec![json!({
                    "type": "agent_tts_audio", "call_id": call_id, "message": v["message"],
                    "audio_data": base64::engine::general_purpose::STANDARD.encode([0xFFu8; 320]),
                })],
                _ => vec![],
            };
            for r in replies {
                let _ = ws.write_frame(send(r)).await;
            }
        }
    }
}

/// The tool's arguments as a user would type them.
fn args(fake: &Fake, extra: &[&str]) -> TwilioArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: TwilioArgs,
    }
    let base = fake.base();
    let mut argv = vec!["twilio", "--base", &base, "--auth-token", TOKEN, "--timeout-secs", "5"];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).a
}

fn config(a: &TwilioArgs) -> CallConfig {
    CallConfig {
        endpoints: Endpoints::new(&a.base, a.public_base_url.as_deref()).unwrap(),
        auth_token: a.auth_token.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
        account_sid: a.account_sid.clone(),
        timeout: Duration::from_secs_f64(a.timeout_secs),
    }
}

const QUIET: Log = Log { json: true };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_plays_the_wav_echoes_marks_honours_clear_and_reports() {
    let fake = Fake::start().await;
    let dir = gatewayd_e2e::tempdir::TempDir::new("loadtool-twilio-call");
    let (wav, out) = (dir.path().join("in.wav"), dir.path().join("out.wav"));
    // 0.5 s at 16 kHz: 25 frames once at 8 kHz.
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for n in 0..8000 {
        w.write_sample((6000.0 * (n as f64 * 0.1).sin()) as i16).unwrap();
    }
    w.finalize().unwrap();
    let a = args(
        &fake,
        &[
            "--wav",
            wav.to_str().unwrap(),
            "--hold-secs",
            "0.3",
            "--out",
            out.to_str().unwrap(),
            "--dashboard-token",
            "good",
            "--say",
            "Hello caller",
            "--say-after-ms",
            "100",
            "--dtmf",
            "12#",
            "--dtmf-after-ms",
            "200",
        ],
    );
    let s = super::single::run(&a, config(&a), QUIET).await.unwrap();
    assert!(s.ok, "{:?}", s.error);
    assert_eq!((s.wav_frames, s.hold_frames), (25, 15));
    assert_eq!(s.stream.frames_sent, 40);
    assert_eq!(s.stream.dtmf_sent, 3);
    assert_eq!(s.call_id.as_deref(), Some(format!("call-{}", s.call_sid).as_str()));
    assert_eq!(s.custom_parameters["call_id"], format!("call-{}", s.call_sid));
    // The fake echoed every frame; marks came back; the clear found nothing pending.
    assert_eq!(s.stream.frames_received, 40);
    assert_eq!((s.stream.marks_received, s.stream.marks_echoed, s.stream.clears_received), (2, 2, 1));
    assert_eq!(s.stream.marks_echoed_on_clear, 0);
    assert!(!s.closed_by_gateway);
    assert_eq!(s.stream_close.as_ref().map(|c| c.code), Some(1000));
    assert_eq!(s.status_callback, Some(204));
    assert_eq!(s.out_seconds, 0.8);
    let heard = hound::WavReader::open(&out).unwrap();
    assert_eq!((heard.spec().sample_rate, heard.len()), (8000, 6400));
    // The dashboard: the transcript, the TTS audio of the say, the end.
    let d = s.dashboard.as_ref().unwrap();
    assert_eq!(s.transcripts.len(), 1);
    assert_eq!(d.agent_tts_audio.len(), 1);
    assert_eq!((d.agent_tts_audio[0].message.as_str(), d.agent_tts_audio[0].audio_bytes), ("Hello caller", 320));
    assert_eq!(d.status_updates, vec!["ended"]);
    assert_eq!((d.agent_messages_sent, d.agent_messages_not_sent), (1, 0));

    // What the gateway got: Twilio's messages in Twilio's order.
    let msgs = fake.seen(|s| s.stream_messages.clone());
    let events: Vec<&str> = msgs.iter().map(|m| m["event"].as_str().unwrap()).collect();
    assert_eq!(events[..2], ["connected", "start"]);
    assert_eq!(*events.last().unwrap(), "stop");
    assert_eq!(events.iter().filter(|e| **e == "media").count(), 40);
    assert_eq!(events.iter().filter(|e| **e == "dtmf").count(), 3);
    let echoed: Vec<&str> =
        msgs.iter().filter(|m| m["event"] == "mark").map(|m| m["mark"]["name"].as_str().unwrap()).collect();
    assert_eq!(echoed, ["m10", "m20"]);
    assert_eq!(msgs[1]["start"]["customParameters"]["call_id"], format!("call-{}", s.call_sid));
    let seqs: Vec<u64> = msgs[1..].iter().map(|m| m["sequenceNumber"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "sequence numbers count up by one");
    let digits: String =
        msgs.iter().filter(|m| m["event"] == "dtmf").map(|m| m["dtmf"]["digit"].as_str().unwrap()).collect();
    assert_eq!(digits, "12#");
    let callbacks = fake.seen(|s| s.status_callbacks.clone());
    assert_eq!(callbacks.len(), 1);
    assert!(callbacks[0].contains(&("CallStatus".into(), "completed".into())));
    let said = fake.seen(|s| s.dashboard_messages.clone());
    assert_eq!(
        said.iter().map(|m| m["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["init_telephony_stream", "agent_message"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn played_marks_wait_for_the_play_out_and_a_clear_drops_what_is_unplayed() {
    let fake = Fake::start().await;
    let dir = gatewayd_e2e::tempdir::TempDir::new("loadtool-twilio-played");
    let out = dir.path().join("out.wav");
    let a = args(
        &fake,
        &["--hold-secs", "0.8", "--marks", "played", "--out", out.to_str().unwrap(), "--no-status-callback"],
    );
    let s = super::single::run(&a, config(&a), QUIET).await.unwrap();
    assert!(s.ok, "{:?}", s.error);
    assert_eq!(s.stream.frames_received, 40);
    assert_eq!((s.stream.marks_echoed, s.stream.clears_received), (2, 1));
    // What the clear dropped was not heard.
    // Heard = received - cleared - still unplayed at the end.
    let heard = s.stream.bytes_received - s.stream.bytes_cleared - s.unplayed_bytes_at_end as u64;
    assert_eq!((s.out_seconds * 8000.0).round() as u64, heard);
    assert!(heard < s.stream.bytes_received);
    assert_eq!(s.status_callback, None);
    assert!(fake.seen(|s| s.status_callbacks.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_end_the_call_with_a_stable_code() {
    let fake = Fake::start().await;
    let a = args(&fake, &["--to", "+10000000000", "--hold-secs", "0.1"]);
    let s = super::single::run(&a, config(&a), QUIET).await.unwrap();
    assert_eq!((s.ok, s.error_code), (false, Some("call_refused")));
    assert_eq!(s.error.as_deref(), Some("the gateway refused the call: <Reject/>"));

    let mut a = args(&fake, &["--hold-secs", "0.1"]);
    a.auth_token = "wrong".into();
    let s = super::single::run(&a, config(&a), QUIET).await.unwrap();
    assert_eq!(s.error_code, Some("webhook_status"));
    assert!(s.error.as_deref().unwrap().contains("answered 403"), "{:?}", s.error);

    let a = args(&fake, &["--hold-secs", "0.1", "--dashboard-token", "bad"]);
    let s = super::single::run(&a, config(&a), QUIET).await.unwrap();
    assert_eq!(s.error_code, Some("dashboard"));
    assert!(s.error.as_deref().unwrap().contains("4001"), "{:?}", s.error);

    // Nothing listens: a clear connection error, not a hang.
    let mut a = args(&fake, &["--hold-secs", "0.1"]);
    a.base = "http://127.0.0.1:9".into();
    let s = super::single::run(&a, config(&a), QUIET).await.unwrap();
    assert_eq!(s.error_code, Some("io"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_mode_streams_every_call_and_counts_the_echoes() {
    let fake = Fake::start().await;
    let a = args(&fake, &["--calls", "4", "--secs", "1", "--tone-hz", "400", "--json"]);
    let r = super::load::run(&a, config(&a), QUIET).await.unwrap();
    assert_eq!(r["calls_set_up"], 4);
    assert_eq!(r["setup_failures"], 0);
    assert_eq!(r["frames_sent"], 200);
    assert_eq!(r["frames_received"], 200, "{r}");
    assert_eq!(r["frames_missing"], 0);
    assert_eq!(r["marks_echoed"], 8);
    assert_eq!(r["clears_received"], 4);
    assert_eq!(r["streams_closed_early"], 0);
    assert_eq!(r["status_callback_failures"], 0);
    assert_eq!(r["frames_received_per_s"].as_array().unwrap().len(), 1);
    assert_eq!(r["inbound_jitter"]["count"], 4 * 49);
    assert_eq!(fake.seen(|s| s.status_callbacks.len()), 4);

    let mut a = args(&fake, &["--calls", "2", "--secs", "1"]);
    a.auth_token = "wrong".into();
    let r = super::load::run(&a, config(&a), QUIET).await.unwrap();
    assert_eq!(r["calls_set_up"], 0);
    assert_eq!(r["setup_errors"]["webhook_status"], 2);
}
