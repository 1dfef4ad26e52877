//! Load mode (`--calls N --secs S`): N concurrent simulated calls, each with its own signed
//! webhook and Media Stream, 50 media messages a second each way, measured at the client.
//!
//! Calls are set up [`SETUP_CONCURRENCY`] at a time (webhook, upgrade, `connected`, `start`);
//! then every call streams `S` seconds of silence, a tone, or (`--wav`) a recording followed by
//! `--hold-secs` of silence over and over, from a common start, the calls' phases spread over the 20 ms frame in [`PHASES`] groups, one sender task per group on an
//! absolute clock (like ivr.rs). Each call's messages are read by a task of its own, which
//! stamps the arrival of every `media` message; marks and clears go to the call's sender,
//! which echoes marks at its next tick (at most 20 ms later). After its last frame a call
//! stays open [`DRAIN`] (the echo of the last frames is on its way), then sends `stop` and
//! closes.
//!
//! Figures (`name: value unit` lines, or JSON with `--json`): setup failures by code; setup
//! latencies; frames sent, received (expected = sent when the route echoes), missing per call;
//! frames received per second over all calls; inbound jitter = |gap - 20 ms| between
//! consecutive frames of a call, gaps of 40 ms or more; the sender's own lateness; marks,
//! clears, streams the gateway closed early; status callback failures; daemon CPU and memory
//! with `--pid`.

use super::audio::{self, Arrivals, FRAME, FRAMES_PER_SEC, Lateness, Schedule};
use super::call::{self, CallConfig, CallError, Heard, WsWrite};
use super::phone::{FRAME_BYTES, Phone};
use super::wire::CallIds;
use super::{Log, TwilioArgs};
use crate::report::{CpuMeter, Latencies, rss_kib};
use fastwebsockets::Frame;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

/// Calls being set up at once.
const SETUP_CONCURRENCY: usize = 16;
/// Sender phases per 20 ms frame (one sender task each).
const PHASES: usize = 20;
/// How long after the last frame sent the gateway's frames still count (its echo lags).
const TAIL: Duration = Duration::from_secs(1);
/// How long a call stays open after its last frame before `stop`: the gateway's echo of the
/// last frames is still on its way (it paces them on its own 20 ms grid), and a hang-up while
/// audio is in flight is not a lost frame. Shorter than [`TAIL`].
const DRAIN: Duration = Duration::from_millis(500);
/// Distinct setup errors printed.
const MAX_ERRORS_SHOWN: usize = 5;

/// One call set up and streaming.
struct Slot {
    phone: Phone,
    wr: WsWrite,
    rx: mpsc::UnboundedReceiver<Heard>,
    reader: tokio::task::JoinHandle<Vec<Instant>>,
    /// The gateway closed the stream (code, reason) before `stop`.
    closed: Option<(u16, String)>,
    /// A write failed.
    broken: bool,
    lateness: Lateness,
    webhook: Duration,
    upgrade: Duration,
}

/// Ring, open the stream, send `connected` and `start`; the reader runs until `stop` fires.
async fn set_up(cfg: &CallConfig, stop: watch::Receiver<bool>, max_times: usize) -> Result<Slot, CallError> {
    let ids = CallIds::new(cfg.account_sid.as_deref());
    let answer = call::ring(cfg, &ids).await?;
    let at = Instant::now();
    let ws = call::open_stream(cfg, &answer.stream_url).await?;
    let upgrade = at.elapsed();
    let (rd, mut wr) = ws.split(|t| t.into_split());
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let reader = tokio::spawn(call::read_stream(rd, tx, false, max_times, stopped));
    let mut phone = Phone::new(ids, super::phone::MarkMode::Received, false);
    let io = |source| CallError::Io { what: "the Media Stream", source };
    call::send_text(&mut wr, phone.connected()).await.map_err(io)?;
    call::send_text(&mut wr, phone.start(&answer.parameters)).await.map_err(io)?;
    Ok(Slot {
        phone,
        wr,
        rx,
        reader,
        closed: None,
        broken: false,
        lateness: Lateness::default(),
        webhook: answer.took,
        upgrade,
    })
}

pub async fn run(a: &TwilioArgs, cfg: CallConfig, log: Log) -> anyhow::Result<Value> {
    let n = a.calls;
    let secs = a.secs.unwrap_or(10);
    let frames = secs * FRAMES_PER_SEC;
    // The callers' audio, looped: `--wav` then `--hold-secs` of silence, else the tone.
    let tone = Arc::new(match &a.wav {
        Some(wav) => {
            let mut frames = audio::wav_to_frames(wav)?;
            let hold = (a.hold_secs.max(0.0) * FRAMES_PER_SEC as f64).round() as usize;
            frames.extend(std::iter::repeat_n([audio::MULAW_SILENCE; FRAME_BYTES], hold));
            frames
        }
        None => audio::tone_second(a.tone_hz),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every frame of the call and of the tail, twice over (a gateway sending too much shows).
    let max_times = ((secs + 5) * FRAMES_PER_SEC * 2) as usize;
    let rss_before = a.pid.map(rss_kib).transpose()?;

    log.line(&format!("setting up {n} calls ({SETUP_CONCURRENCY} at a time)"));
    let setup_at = Instant::now();
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut setups = Vec::with_capacity(n);
    for _ in 0..n {
        let (cfg, gate, stop) = (cfg.clone(), gate.clone(), stop_rx.clone());
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore open");
            set_up(&cfg, stop, max_times).await
        }));
    }
    let mut slots = Vec::with_capacity(n);
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut shown: Vec<String> = Vec::new();
    let (mut webhook, mut upgrade) = (Latencies::default(), Latencies::default());
    for t in setups {
        match t.await? {
            Ok(slot) => {
                webhook.record(slot.webhook);
                upgrade.record(slot.upgrade);
                slots.push(slot);
            }
            Err(e) => {
                *errors.entry(e.code()).or_default() += 1;
                let text = e.to_string();
                if shown.len() < MAX_ERRORS_SHOWN && !shown.contains(&text) {
                    log.line(&format!("setup failed: {text}"));
                    shown.push(text);
                }
            }
        }
    }
    let setup_secs = setup_at.elapsed().as_secs_f64();
    let set_up_calls = slots.len();
    log.line(&format!("{set_up_calls} of {n} calls set up in {setup_secs:.1} s; streaming {secs} s"));

    let start = Instant::now() + Duration::from_millis(500);
    let cpu = match a.pid {
        Some(pid) => Some(CpuMeter::start(pid)?),
        None => None,
    };
    let tool_cpu = CpuMeter::start(std::process::id())?;
    let mut groups: Vec<Vec<Slot>> = (0..PHASES).map(|_| Vec::new()).collect();
    for (i, slot) in slots.into_iter().enumerate() {
        groups[i % PHASES].push(slot);
    }
    let senders: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(phase, group)| {
            let first = start + FRAME * phase as u32 / PHASES as u32;
            tokio::spawn(send(group, Schedule { first }, frames, tone.clone()))
        })
        .collect();
    let mut rss = None;
    if let Some(pid) = a.pid {
        tokio::time::sleep_until(start + FRAME * (frames / 2) as u32).await;
        rss = Some(rss_kib(pid)?);
    }
    let end = start + FRAME * frames as u32;
    // CPU over the streaming itself (the last phase's last frame), not the drain after it.
    tokio::time::sleep_until(end + FRAME).await;
    let cpu = cpu.map(|c| c.percent()).transpose()?;
    let tool_cpu = tool_cpu.percent()?;
    let mut slots = Vec::with_capacity(set_up_calls);
    for t in senders {
        slots.extend(t.await?);
    }
    // The gateway closes after `stop`; readers still open after the tail are stopped.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep_until(Instant::now().max(end) + TAIL + Duration::from_secs(1)).await;
        let _ = stop_tx.send(true);
    });

    let mut all = Arrivals::default();
    let (mut sent, mut received, mut missing, mut before_start) = (0u64, 0u64, 0u64, 0u64);
    let (mut min_recv, mut max_recv) = (u64::MAX, 0u64);
    let (mut marks, mut clears, mut closed_early, mut lateness) = (0u64, 0u64, 0u64, Lateness::default());
    let mut close_codes: BTreeMap<u16, u64> = BTreeMap::new();
    let mut ids = Vec::with_capacity(set_up_calls);
    for mut slot in slots {
        let times = (&mut slot.reader).await.unwrap_or_default();
        let arrivals = Arrivals::of(&times, start, end + TAIL);
        let got = times.iter().filter(|&&t| t >= start).count() as u64;
        before_start += times.len() as u64 - got;
        let s = &slot.phone.stats;
        sent += s.frames_sent;
        received += got;
        missing += s.frames_sent.saturating_sub(got);
        min_recv = min_recv.min(got);
        max_recv = max_recv.max(got);
        marks += s.marks_echoed;
        clears += s.clears_received;
        if let Some((code, _)) = &slot.closed {
            closed_early += 1;
            *close_codes.entry(*code).or_default() += 1;
        }
        lateness.merge(&slot.lateness);
        all.merge(&arrivals);
        ids.push(slot.phone.ids().clone());
    }
    stopper.abort();

    let mut callback_failures = 0u64;
    if !a.no_status_callback {
        let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
        let duration = secs + 1;
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|ids| {
                let (cfg, gate) = (cfg.clone(), gate.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("semaphore open");
                    call::status_callback(&cfg, &ids, duration).await
                })
            })
            .collect();
        for t in tasks {
            if let Err(e) = t.await? {
                callback_failures += 1;
                if callback_failures == 1 {
                    log.line(&format!("status callback failed: {e}"));
                }
            }
        }
    }

    let per_second: Vec<u64> = all.per_second.iter().take(secs as usize).copied().collect();
    let report = json!({
        "mode": "load",
        "calls": n,
        "secs": secs,
        "tone_hz": a.tone_hz,
        "wav": a.wav.as_ref().map(|w| w.display().to_string()),
        "calls_set_up": set_up_calls,
        "setup_failures": n - set_up_calls,
        "setup_errors": errors,
        "setup_secs": (setup_secs * 1000.0).round() / 1000.0,
        "setup_webhook": webhook.to_json(),
        "setup_upgrade": upgrade.to_json(),
        "frames_sent": sent,
        "frames_expected_per_call": frames,
        "send_lateness": lateness,
        "frames_received": received,
        "frames_received_before_start": before_start,
        "frames_received_per_call_min": if set_up_calls == 0 { 0 } else { min_recv },
        "frames_received_per_call_max": max_recv,
        "frames_missing": missing,
        "frames_received_per_s": per_second,
        "frames_expected_per_s": set_up_calls as u64 * FRAMES_PER_SEC,
        "inbound_jitter": all.jitter.to_json(),
        "gaps_over_40ms": all.long_gaps,
        "max_gap_ms": all.max_gap.as_secs_f64() * 1000.0,
        "marks_echoed": marks,
        "clears_received": clears,
        "streams_closed_early": closed_early,
        "close_codes": close_codes,
        "status_callback_failures": callback_failures,
        "daemon_cpu_percent": cpu,
        "daemon_rss_kib": rss,
        "daemon_rss_kib_per_call": match (rss, rss_before) {
            (Some(r), Some(b)) if set_up_calls > 0 => Some(r.saturating_sub(b) as f64 / set_up_calls as f64),
            _ => None,
        },
        "loadtool_cpu_percent": tool_cpu,
    });
    if !a.json {
        print_lines(&report, &all);
    }
    Ok(report)
}

/// The report as `name: value unit` lines (docs/benchmarks.md style).
fn print_lines(r: &Value, all: &Arrivals) {
    println!("--- twilio load: {} concurrent calls, {} s of audio each ---", r["calls"], r["secs"]);
    for k in ["calls_set_up", "setup_failures"] {
        println!("{k}: {}", r[k]);
    }
    if let Some(errors) = r["setup_errors"].as_object() {
        for (code, count) in errors {
            println!("setup_failures_{code}: {count}");
        }
    }
    println!("setup_time: {} s", r["setup_secs"]);
    for (k, v) in [("setup_webhook", &r["setup_webhook"]), ("setup_upgrade", &r["setup_upgrade"])] {
        println!("{k}_p50: {} us", v["p50_us"]);
        println!("{k}_p99: {} us", v["p99_us"]);
    }
    for k in [
        "frames_sent",
        "frames_expected_per_call",
        "frames_received",
        "frames_received_before_start",
        "frames_received_per_call_min",
        "frames_received_per_call_max",
        "frames_missing",
        "frames_expected_per_s",
    ] {
        println!("{k}: {}", r[k]);
    }
    println!("frames_received_per_s: {}", r["frames_received_per_s"]);
    all.jitter.print("inbound_jitter");
    println!("gaps_over_40ms: {}", r["gaps_over_40ms"]);
    println!("max_gap: {:.1} ms", r["max_gap_ms"].as_f64().unwrap_or(0.0));
    println!("send_late_max: {:.1} ms", r["send_lateness"]["max_us"].as_f64().unwrap_or(0.0) / 1000.0);
    println!("send_late_over_20ms: {}", r["send_lateness"]["over_one_frame"]);
    for k in ["marks_echoed", "clears_received", "streams_closed_early", "status_callback_failures"] {
        println!("{k}: {}", r[k]);
    }
    if let Some(codes) = r["close_codes"].as_object() {
        for (code, count) in codes {
            println!("streams_closed_early_{code}: {count}");
        }
    }
    if let Some(cpu) = r["daemon_cpu_percent"].as_f64() {
        println!("daemon_cpu: {cpu:.1} % of one core");
    }
    if let (Some(rss), Some(per)) = (r["daemon_rss_kib"].as_u64(), r["daemon_rss_kib_per_call"].as_f64()) {
        println!("daemon_rss: {rss} KiB ({per:.1} KiB per call)");
    }
    println!("loadtool_cpu: {:.1} % of one core", r["loadtool_cpu_percent"].as_f64().unwrap_or(0.0));
}

/// Stream `frames` frames to every call of one phase group on `schedule`; before each frame,
/// answer what each call's reader passed on (mark echoes, pongs). Then, after [`DRAIN`],
/// `stop` and close.
async fn send(mut group: Vec<Slot>, schedule: Schedule, frames: u64, tone: Arc<Vec<[u8; FRAME_BYTES]>>) -> Vec<Slot> {
    for k in 0..frames {
        let due = schedule.due(k);
        tokio::time::sleep_until(due).await;
        let frame = &tone[(k % tone.len() as u64) as usize];
        for slot in group.iter_mut().filter(|s| s.closed.is_none() && !s.broken) {
            if tick(slot, frame).await.is_err() {
                slot.broken = true;
            }
            slot.lateness.record(due, Instant::now());
        }
    }
    tokio::time::sleep_until(schedule.due(frames) + DRAIN).await;
    for slot in group.iter_mut().filter(|s| s.closed.is_none() && !s.broken) {
        let stop = slot.phone.stop();
        let _ = call::send_text(&mut slot.wr, stop).await;
        let _ = slot.wr.write_frame(Frame::close(1000, b"")).await;
    }
    group
}

/// One frame of one call: drain its reader's messages, then send the media.
async fn tick(slot: &mut Slot, frame: &[u8; FRAME_BYTES]) -> anyhow::Result<()> {
    while let Ok(h) = slot.rx.try_recv() {
        match h {
            Heard::Message(m) => {
                for echo in slot.phone.on_message(m) {
                    call::send_text(&mut slot.wr, echo).await?;
                }
            }
            Heard::Ping(p) => call::send_pong(&mut slot.wr, p).await?,
            Heard::Closed { code, reason } => {
                slot.closed = Some((code, reason));
                let _ = slot.wr.write_frame(Frame::close(1000, b"")).await;
                return Ok(());
            }
            Heard::Broken(e) => {
                slot.closed = Some((1006, e));
                return Ok(());
            }
        }
    }
    for echo in slot.phone.play_frame() {
        call::send_text(&mut slot.wr, echo).await?;
    }
    let media = slot.phone.media(frame);
    call::send_text(&mut slot.wr, media).await
}
