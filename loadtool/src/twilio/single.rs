//! One simulated call, for a person or a test: ring, stream the caller's audio in real time,
//! answer marks and clears, record what the caller heard, hang up, report.

use super::audio::{self, FRAME, Lateness, MULAW_SILENCE, Schedule};
use super::call::{self, CallConfig, CallError, Heard, WsWrite};
use super::dashboard::{Dashboard, DashboardReport, Says, Transcript};
use super::phone::{FRAME_BYTES, MarkMode, Phone, PhoneStats};
use super::wire::{CallIds, FromGateway};
use super::{Log, TwilioArgs};
use fastwebsockets::Frame;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The JSON summary of one call (`--json`), printed on success and failure alike.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub ok: bool,
    /// [`CallError::code`] when not ok.
    pub error_code: Option<&'static str>,
    pub error: Option<String>,
    pub call_id: Option<String>,
    pub call_sid: String,
    pub stream_sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    pub stream_url: Option<String>,
    /// The TwiML's `<Parameter>`s (sent back as `start.customParameters`).
    pub custom_parameters: serde_json::Map<String, serde_json::Value>,
    pub webhook_ms: Option<f64>,
    pub mark_mode: Option<MarkMode>,
    /// Frames of `--wav` audio and of `--hold-secs` silence the tool meant to send.
    pub wav_frames: u64,
    pub hold_frames: u64,
    /// Counters of the stream: frames sent and received, marks, clears, junk.
    #[serde(flatten)]
    pub stream: PhoneStats,
    /// Marks received and still unplayed when the call ended (`--marks played`).
    pub marks_pending_at_end: usize,
    /// Audio bytes received and still unplayed when the call ended (`--marks played`).
    pub unplayed_bytes_at_end: usize,
    /// The sender's lateness against the 20 ms grid.
    pub send_lateness: Lateness,
    /// The gateway's messages that were not Twilio's (first few).
    pub complaints: Vec<String>,
    /// How the gateway closed the stream (after our `stop`, or before it).
    pub stream_close: Option<CloseInfo>,
    /// The gateway closed the stream before the tool sent `stop`.
    pub closed_by_gateway: bool,
    /// The status callback's HTTP status (none: `--no-status-callback` or not reached).
    pub status_callback: Option<u16>,
    /// Seconds from the webhook to the end of the stream (the status callback's `CallDuration`).
    pub duration_secs: f64,
    /// `--out` and how many seconds of audio it holds.
    pub out_file: Option<PathBuf>,
    pub out_seconds: f64,
    /// `customer_transcript`s the dashboard got (with `--dashboard-token`).
    pub transcripts: Vec<Transcript>,
    pub dashboard: Option<DashboardReport>,
}

#[derive(Debug, Serialize)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

/// Run the call; the summary says how it went (`ok` false with the error).
pub async fn run(a: &TwilioArgs, cfg: CallConfig, log: Log) -> anyhow::Result<Summary> {
    let ids = CallIds::new(cfg.account_sid.as_deref());
    // The audio first: a bad --wav fails before the phone rings.
    let wav = match &a.wav {
        Some(p) => audio::wav_to_frames(p)?,
        None => Vec::new(),
    };
    let hold_frames = (a.hold_secs.max(0.0) * audio::FRAMES_PER_SEC as f64).round() as u64;
    let mut s = Summary {
        call_sid: ids.call_sid.clone(),
        stream_sid: ids.stream_sid.clone(),
        account_sid: ids.account_sid.clone(),
        from: cfg.from.clone(),
        to: cfg.to.clone(),
        wav_frames: wav.len() as u64,
        hold_frames,
        mark_mode: Some(a.marks),
        ..Summary::default()
    };
    if let Err(e) = play(a, &cfg, ids, wav, hold_frames, &mut s, log).await {
        s.error_code = Some(e.code());
        s.error = Some(e.to_string());
    } else {
        s.ok = true;
    }
    Ok(s)
}

async fn play(
    a: &TwilioArgs,
    cfg: &CallConfig,
    ids: CallIds,
    wav: Vec<[u8; FRAME_BYTES]>,
    hold_frames: u64,
    s: &mut Summary,
    log: Log,
) -> Result<(), CallError> {
    let rang = Instant::now();
    log.line(&format!("ringing: {} -> {} ({})", cfg.from, cfg.to, ids.call_sid));
    let answer = call::ring(cfg, &ids).await?;
    s.webhook_ms = Some(answer.took.as_secs_f64() * 1000.0);
    s.call_id = answer.call_id.clone();
    s.stream_url = Some(answer.stream_url.clone());
    s.custom_parameters =
        answer.parameters.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    log.line(&format!(
        "answered in {:.1} ms: stream {} call_id {}",
        answer.took.as_secs_f64() * 1000.0,
        answer.stream_url,
        answer.call_id.as_deref().unwrap_or("(none)")
    ));

    let mut dashboard = match &a.dashboard_token {
        Some(token) => {
            let call_id = answer.call_id.as_deref().ok_or_else(|| {
                CallError::Dashboard("the TwiML has no call_id <Parameter> to open the dashboard with".into())
            })?;
            let says = Says {
                texts: a.say.clone(),
                after: Duration::from_millis(a.say_after_ms),
                gap: Duration::from_millis(a.say_gap_ms),
            };
            let d = Dashboard::connect(cfg, &cfg.endpoints, token, call_id, says, move |l| log.line(l)).await?;
            log.line("dashboard: connected");
            Some(d)
        }
        None => None,
    };

    let result = stream(a, cfg, &ids, &answer.parameters, wav, hold_frames, s, dashboard.as_mut(), log).await;
    let duration = rang.elapsed();
    s.duration_secs = duration.as_secs_f64();
    if !a.no_status_callback && !matches!(result, Err(CallError::StreamClosed { .. })) {
        match call::status_callback(cfg, &ids, duration.as_secs_f64().round() as u64).await {
            Ok(status) => {
                log.line(&format!("status callback (completed, {} s): {status}", duration.as_secs()));
                s.status_callback = Some(status);
            }
            Err(e) if result.is_ok() => {
                finish(s, dashboard).await;
                return Err(e);
            }
            Err(e) => log.line(&format!("status callback: {e}")),
        }
    }
    finish(s, dashboard).await;
    result
}

/// After the call: the dashboard's report.
async fn finish(s: &mut Summary, dashboard: Option<Dashboard>) {
    if let Some(d) = dashboard {
        let report = d.finish().await;
        s.transcripts = report.transcripts.clone();
        s.dashboard = Some(report);
    }
}

/// The Media Stream: open, `connected`, `start`, paced audio, `stop`, close.
#[allow(clippy::too_many_arguments)]
async fn stream(
    a: &TwilioArgs,
    cfg: &CallConfig,
    ids: &CallIds,
    parameters: &[(String, String)],
    wav: Vec<[u8; FRAME_BYTES]>,
    hold_frames: u64,
    s: &mut Summary,
    dashboard: Option<&mut Dashboard>,
    log: Log,
) -> Result<(), CallError> {
    let ws = call::open_stream(cfg, &s.stream_url.clone().unwrap_or_default()).await?;
    let (rd, mut wr) = ws.split(|t| t.into_split());
    let mut phone = Phone::new(ids.clone(), a.marks, a.out.is_some());
    let total = wav.len() as u64 + hold_frames;
    let silence = [MULAW_SILENCE; FRAME_BYTES];
    let schedule = Schedule { first: Instant::now() + FRAME };
    let until = schedule.due(total) + cfg.timeout + Duration::from_secs(5);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(call::read_stream(rd, tx, true, 0, tokio::time::sleep_until(until)));
    let io = |source| CallError::Io { what: "the Media Stream", source };
    call::send_text(&mut wr, phone.connected()).await.map_err(io)?;
    call::send_text(&mut wr, phone.start(parameters)).await.map_err(io)?;
    let started = Instant::now();
    if let Some(d) = dashboard {
        d.stream_started(started);
    }
    log.line(&format!(
        "streaming: {:.2} s of --wav audio then {:.2} s of silence ({} frames)",
        wav.len() as f64 / 50.0,
        hold_frames as f64 / 50.0,
        total
    ));
    let dtmf_at = Schedule::frame_at(Duration::from_millis(a.dtmf_after_ms));
    let mut digits = a.dtmf.chars();
    let mut lateness = Lateness::default();
    let mut closed: Option<CloseInfo> = None;
    let mut first_audio_logged = false;
    'call: for k in 0..total {
        let due = schedule.due(k);
        loop {
            tokio::select! {
                biased;
                h = rx.recv() => {
                    if let Some(c) = handle(h, &mut phone, &mut wr, &mut first_audio_logged, started, log).await? {
                        closed = Some(c);
                        break 'call;
                    }
                }
                _ = tokio::time::sleep_until(due) => break,
            }
        }
        for echo in phone.play_frame() {
            call::send_text(&mut wr, echo).await.map_err(io)?;
        }
        // One digit per frame from --dtmf-after-ms on.
        if k >= dtmf_at
            && let Some(d) = digits.next()
        {
            log.line(&format!("dtmf: {d}"));
            call::send_text(&mut wr, phone.dtmf(d)).await.map_err(io)?;
        }
        let frame = wav.get(k as usize).unwrap_or(&silence);
        call::send_text(&mut wr, phone.media(frame)).await.map_err(io)?;
        lateness.record(due, Instant::now());
    }
    s.closed_by_gateway = closed.is_some();
    if closed.is_none() {
        let _ = call::send_text(&mut wr, phone.stop()).await;
        let _ = wr.write_frame(Frame::close(1000, b"")).await;
        log.line("stop sent; waiting for the gateway to close");
        // Drain until the gateway closes (bounded); nothing is echoed after `stop`.
        let deadline = Instant::now() + cfg.timeout;
        while closed.is_none() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    log.line("the gateway did not close the stream after stop (timeout)");
                    break;
                }
                Ok(None) => break,
                Ok(Some(Heard::Message(m))) => {
                    phone.on_message(m);
                }
                Ok(Some(Heard::Ping(_))) => {}
                Ok(Some(Heard::Closed { code, reason })) => closed = Some(CloseInfo { code, reason }),
                Ok(Some(Heard::Broken(e))) => closed = Some(CloseInfo { code: 1006, reason: e }),
            }
        }
    } else {
        let _ = wr.write_frame(Frame::close(1000, b"")).await;
    }
    reader.abort();
    s.marks_pending_at_end = phone.pending_marks();
    s.unplayed_bytes_at_end = phone.buffered_bytes();
    s.send_lateness = lateness;
    s.complaints = std::mem::take(&mut phone.complaints);
    if let Some(out) = &a.out {
        let heard = phone.take_heard();
        audio::write_wav(out, &heard).map_err(|source| CallError::Io { what: "--out", source })?;
        s.out_seconds = heard.len() as f64 / audio::RATE as f64;
        s.out_file = Some(out.clone());
        log.line(&format!("heard {:.2} s, written to {}", s.out_seconds, out.display()));
    }
    s.stream = phone.stats.clone();
    let early = s.closed_by_gateway;
    if let Some(c) = &closed {
        log.line(&format!("stream closed: {} {}", c.code, c.reason));
    }
    s.stream_close = closed;
    match &s.stream_close {
        Some(c) if early && !matches!(c.code, 1000 | 1001) => {
            Err(CallError::StreamClosed { code: c.code, reason: c.reason.clone() })
        }
        _ => Ok(()),
    }
}

/// One thing the reader passed on. Some(close) when the stream ended.
async fn handle(
    h: Option<Heard>,
    phone: &mut Phone,
    wr: &mut WsWrite,
    first_audio_logged: &mut bool,
    started: Instant,
    log: Log,
) -> Result<Option<CloseInfo>, CallError> {
    let io = |source| CallError::Io { what: "the Media Stream", source };
    match h {
        None => Ok(Some(CloseInfo { code: 1006, reason: "no close within the call's time".into() })),
        Some(Heard::Closed { code, reason }) => Ok(Some(CloseInfo { code, reason })),
        Some(Heard::Broken(e)) => Ok(Some(CloseInfo { code: 1006, reason: e })),
        Some(Heard::Ping(p)) => {
            call::send_pong(wr, p).await.map_err(io)?;
            Ok(None)
        }
        Some(Heard::Message(m)) => {
            match &m {
                FromGateway::Media { .. } if !*first_audio_logged => {
                    *first_audio_logged = true;
                    log.line(&format!(
                        "first audio from the gateway {:.0} ms after start",
                        started.elapsed().as_secs_f64() * 1000.0
                    ));
                }
                FromGateway::Mark { name, .. } => log.line(&format!("mark {name:?} received")),
                FromGateway::Clear { .. } => log.line(&format!(
                    "clear: dropping {} ms of unplayed audio, echoing {} pending mark(s)",
                    phone.buffered_bytes() / 8,
                    phone.pending_marks()
                )),
                FromGateway::Other(e) => log.line(&format!("unexpected event from the gateway: {e}")),
                FromGateway::Invalid(t) => log.line(&format!("invalid message from the gateway: {t}")),
                FromGateway::Media { .. } => {}
            }
            for echo in phone.on_message(m) {
                call::send_text(wr, echo).await.map_err(io)?;
            }
            Ok(None)
        }
    }
}
