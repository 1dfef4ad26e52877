//! IVR media load (`gatewayd-load ivr`): N concurrent calls on the `ivr.md` route in echo mode.
//!
//! Each call sends `incoming_call`, waits for `answer`, then streams one 320-byte L16 frame per
//! 20 ms on a deadline schedule (like a phone) for `--seconds`. The calls' phases are spread
//! over the 20 ms frame in 20 groups; one sender task per group writes the frame of each of its
//! calls, and each call reads its echoes on a task of its own (so the tool costs one timer
//! wake-up per group per frame, not one per call). Every frame carries its sequence number, so
//! each echo is matched to its scheduled send time.
//!
//! Figures, per step of N calls:
//! - frame delay and late frames, as the daemon measured them (read from its JSON log, the
//!   `media call ended` line of every call): how long after its 20 ms slot each outgoing frame
//!   was sent; late = more than 10 ms after its slot; skipped = slots missed by a stalled call;
//! - echo latency: scheduled send time -> echo arrival, client side;
//! - echo jitter: echo latency minus the smallest echo latency of the call's frames within
//!   half a second either side. That smallest one is the call's current offset between the
//!   caller's 20 ms clock and the call's 20 ms grid, plus the echo buffer's standing depth
//!   (0-20 ms by design, and one more frame after a jittery arrival); what is left is delay
//!   added by load;
//!   (the reference flips by a frame when a call's two clocks are within jitter of each other, so
//!   this is informational);
//! - lost echoes: frames that never came back (the daemon's echo buffer drops a frame when it
//!   overflows, or trims one after a backlog stood for 5 s; both are in `dropped_frames`);
//! - daemon CPU (% of one core) and resident memory, per call.
//!
//! A step passes when every call's frame delay p99 <= 20 ms and no frame was late or skipped
//! (lost echoes are reported, not part of the criterion); the report ends with the largest
//! passing N.

use crate::report::{CpuMeter, Latencies, rss_kib};
use anyhow::{Context, anyhow, bail};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketRead, WebSocketWrite};
use hyper_util::rt::TokioIo;
use std::time::Duration;

const FRAME_BYTES: usize = 320;
const FRAME: Duration = Duration::from_millis(20);

#[derive(clap::Args, Clone)]
pub struct IvrArgs {
    /// The IVR route (the daemon's `ivr` listener; its plugin must echo and not hang up
    /// before `--seconds` are over: set `hangup_after_ms` high).
    #[arg(long, default_value = "ws://127.0.0.1:4143/")]
    url: String,
    /// The daemon's process id (for CPU and memory).
    #[arg(long)]
    pid: u32,
    /// Call counts to try, in order (every step runs; the largest passing one is reported).
    #[arg(long, value_delimiter = ',', default_value = "250,500,750,1000,1250,1500")]
    steps: Vec<usize>,
    /// Seconds of audio per call.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The daemon's log file, written with `log_format = "json"` and level info (for its own
    /// frame-delay figures).
    #[arg(long)]
    daemon_log: std::path::PathBuf,
}

/// What the daemon reported about the calls of one step.
#[derive(Default, Debug)]
struct DaemonFigures {
    calls: u64,
    late: u64,
    skipped: u64,
    dropped: u64,
    /// The largest per-call p99 frame delay, ms (upper bound of a 1 ms bucket).
    worst_p99_ms: u64,
    max_delay_us: u64,
}

/// Read the `media call ended` lines the daemon logged after byte `offset` of its log.
fn daemon_figures(log: &std::path::Path, offset: &mut u64) -> anyhow::Result<DaemonFigures> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(log)?;
    f.seek(std::io::SeekFrom::Start(*offset))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    *offset += text.len() as u64;
    let mut d = DaemonFigures::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let fields = &v["fields"];
        if fields["message"] != "media call ended" {
            continue;
        }
        let n = |k: &str| fields[k].as_u64().unwrap_or(0);
        d.calls += 1;
        d.late += n("late_frames");
        d.skipped += n("skipped_slots");
        d.dropped += n("dropped_frames");
        d.worst_p99_ms = d.worst_p99_ms.max(n("p99_delay_ms"));
        d.max_delay_us = d.max_delay_us.max(n("max_delay_us"));
    }
    Ok(d)
}

/// Frames either side of a frame that give its reference latency (0.5 s).
const WINDOW: usize = 25;

/// What one call measured: the echo latency of each frame, in send order (None = lost).
struct CallResult {
    latencies: Vec<Option<Duration>>,
}

impl CallResult {
    /// Each received frame's (echo latency, frame delay).
    fn delays(&self) -> Vec<(Duration, Duration)> {
        let l = &self.latencies;
        (0..l.len())
            .filter_map(|k| {
                let own = l[k]?;
                let lo = k.saturating_sub(WINDOW);
                let hi = (k + WINDOW + 1).min(l.len());
                let reference = l[lo..hi].iter().flatten().min().copied().unwrap_or(own);
                Some((own, own - reference))
            })
            .collect()
    }

    fn lost(&self) -> u64 {
        self.latencies.iter().filter(|l| l.is_none()).count() as u64
    }
}

pub async fn run(a: IvrArgs) -> anyhow::Result<()> {
    let mut best = None;
    let mut offset = std::fs::metadata(&a.daemon_log)?.len();
    for &n in &a.steps {
        if step(&a, n, &mut offset).await? {
            best = Some(n);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    match best {
        Some(n) => println!("ivr_max_calls_passing: {n} calls"),
        None => println!("ivr_max_calls_passing: 0 calls (no step passed)"),
    }
    Ok(())
}

/// Run `n` concurrent calls; print the step's figures; true when it passes.
async fn step(a: &IvrArgs, n: usize, log_offset: &mut u64) -> anyhow::Result<bool> {
    let rss_before = rss_kib(a.pid)?;
    // Open and answer every call first, then start streaming together.
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        calls.push(answered_call(&a.url).await.context("opening a call")?);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let (daemon_cpu, tool_cpu) = (CpuMeter::start(a.pid)?, CpuMeter::start(std::process::id())?);
    let frames = (a.seconds * 50) as usize;
    // Spread the calls' phases over the 20 ms frame, like independent phones: call i sends at
    // phase i % PHASES. One sender task per phase writes the frame of each of its calls, so
    // the load tool wakes PHASES times per 20 ms, not once per call.
    let mut readers = Vec::with_capacity(n);
    let mut groups: Vec<Vec<WsWrite>> = (0..PHASES).map(|_| Vec::new()).collect();
    for (i, ws) in calls.into_iter().enumerate() {
        let first = start + FRAME * (i % PHASES) as u32 / PHASES as u32;
        let (rd, wr) = ws.split(|s| s.into_split());
        readers.push(tokio::spawn(receive(rd, first, frames)));
        groups[i % PHASES].push(wr);
    }
    let senders: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(phase, group)| tokio::spawn(send(group, start + FRAME * phase as u32 / PHASES as u32, frames)))
        .collect();
    let mut sampled_rss = 0;
    let mut results = Vec::with_capacity(n);
    tokio::time::sleep(Duration::from_secs(a.seconds / 2)).await;
    sampled_rss = sampled_rss.max(rss_kib(a.pid)?);
    let mut writers = Vec::with_capacity(n);
    for t in senders {
        writers.extend(t.await??);
    }
    for t in readers {
        results.push(CallResult { latencies: t.await? });
    }
    for mut w in writers {
        w.write_frame(Frame::close(1000, b"")).await.ok();
    }
    let (daemon_cpu, tool_cpu) = (daemon_cpu.percent()?, tool_cpu.percent()?);

    let (mut echo, mut jitter) = (Latencies::default(), Latencies::default());
    let (mut lost, mut sent) = (0u64, 0u64);
    for r in &results {
        lost += r.lost();
        sent += r.latencies.len() as u64;
        for (l, d) in r.delays() {
            echo.record(l);
            jitter.record(d);
        }
    }
    // The calls have closed; give the daemon a moment to log their end.
    let mut daemon = DaemonFigures::default();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let more = daemon_figures(&a.daemon_log, log_offset)?;
        daemon.calls += more.calls;
        daemon.late += more.late;
        daemon.skipped += more.skipped;
        daemon.dropped += more.dropped;
        daemon.worst_p99_ms = daemon.worst_p99_ms.max(more.worst_p99_ms);
        daemon.max_delay_us = daemon.max_delay_us.max(more.max_delay_us);
        if daemon.calls >= n as u64 {
            break;
        }
    }
    let pass = daemon.calls >= n as u64
        && daemon.worst_p99_ms <= FRAME.as_millis() as u64
        && daemon.late + daemon.skipped == 0;
    println!("--- ivr step: {n} concurrent calls, {} s of audio each ---", a.seconds);
    println!("frames_sent: {sent}");
    println!("echoes_lost: {lost}");
    println!("daemon_calls_reported: {}", daemon.calls);
    println!("daemon_frame_delay_p99_worst_call: {} ms", daemon.worst_p99_ms);
    println!("daemon_frame_delay_max: {:.1} ms", daemon.max_delay_us as f64 / 1000.0);
    println!("daemon_late_frames: {}", daemon.late);
    println!("daemon_skipped_slots: {}", daemon.skipped);
    println!("daemon_dropped_inbound_frames: {}", daemon.dropped);
    echo.print("echo_latency");
    jitter.print("echo_jitter");
    println!("daemon_cpu: {daemon_cpu:.1} % of one core ({:.3} % per call)", daemon_cpu / n as f64);
    println!("loadtool_cpu: {tool_cpu:.1} % of one core");
    println!(
        "daemon_rss: {} KiB ({:.1} KiB per call)",
        sampled_rss,
        sampled_rss.saturating_sub(rss_before) as f64 / n as f64
    );
    println!("step_passes: {pass}");
    Ok(pass)
}

/// Sender phases per 20 ms frame (one sender task each).
const PHASES: usize = 20;

pub(crate) type Ws = WebSocket<tokio::net::TcpStream>;
type WsWrite = WebSocketWrite<tokio::net::tcp::OwnedWriteHalf>;
type WsRead = WebSocketRead<tokio::net::tcp::OwnedReadHalf>;

/// Connect, send `incoming_call`, wait for `answer`; the WebSocket is then taken off hyper's
/// upgrade wrapper onto its TCP stream, so it splits into lock-free halves.
async fn answered_call(url: &str) -> anyhow::Result<Ws> {
    let mut c = gatewayd_e2e::Client::connect(url).await?;
    let call = serde_json::json!({"event": "incoming_call", "callerId": "+15550000000", "didNumber": "+18005550100", "sessionId": uuid::Uuid::new_v4().to_string()});
    c.send_json(&call).await?;
    let answer = c.recv_json().await?;
    if answer["event"] != "answer" {
        bail!("expected answer, got {answer}");
    }
    detach(c)
}

/// Take a client's WebSocket off hyper's upgrade wrapper onto its TCP stream, so it splits
/// into lock-free halves. Err: bytes were read past the last message, or not TCP.
pub(crate) fn detach(c: gatewayd_e2e::Client) -> anyhow::Result<Ws> {
    let upgraded = c.into_websocket().into_inner().into_inner();
    let parts = upgraded
        .downcast::<TokioIo<tokio::net::TcpStream>>()
        .map_err(|_| anyhow!("the upgraded connection is not a TCP stream"))?;
    if !parts.read_buf.is_empty() {
        bail!("unexpected bytes after the last message");
    }
    Ok(WebSocket::after_handshake(parts.io.into_inner(), Role::Client))
}

/// Send one frame per 20 ms from `first` on to every call of one phase group, `frames` frames
/// each, on a deadline schedule; every frame carries its sequence number. Returns the writers.
async fn send(mut group: Vec<WsWrite>, first: tokio::time::Instant, frames: usize) -> anyhow::Result<Vec<WsWrite>> {
    let mut frame = vec![0u8; FRAME_BYTES];
    for seq in 0..frames {
        tokio::time::sleep_until(first + FRAME * seq as u32).await;
        frame[..4].copy_from_slice(&(seq as u32).to_le_bytes());
        for wr in &mut group {
            wr.write_frame(Frame::binary(Payload::Borrowed(&frame))).await?;
        }
    }
    Ok(group)
}

/// Read the echoes of one call whose frame `seq` was due at `first + seq * 20 ms`: each one's
/// latency from that scheduled send time (a sender running late shows up as latency).
async fn receive(mut rd: WsRead, first: tokio::time::Instant, frames: usize) -> Vec<Option<Duration>> {
    let mut latencies = vec![None; frames];
    let mut received = 0;
    let mut ignore = |_: Frame<'_>| async { Ok::<_, std::io::Error>(()) };
    // One timer for the whole call (not one per read).
    let deadline = tokio::time::sleep_until(first + FRAME * frames as u32 + Duration::from_secs(2));
    tokio::pin!(deadline);
    while received < frames {
        let f = tokio::select! {
            biased;
            f = rd.read_frame(&mut ignore) => match f {
                Ok(f) => f,
                Err(_) => break,
            },
            _ = &mut deadline => break,
        };
        if f.opcode != OpCode::Binary || f.payload.len() < 4 {
            continue;
        }
        let seq = u32::from_le_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]) as usize;
        if seq < frames && latencies[seq].is_none() {
            latencies[seq] = Some((first + FRAME * seq as u32).elapsed());
            received += 1;
        }
    }
    latencies
}
