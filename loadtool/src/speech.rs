//! Speech load (`gatewayd-load speech`): N concurrent calls, each transcribed by a fake
//! Deepgram and spoken to by a fake ElevenLabs, through the real daemon and the real provider
//! plugins (`stt-deepgram`, `tts-elevenlabs`); the fault-test plugin steers each call
//! (`answer`, `transcribe`, `say`). The fakes run in this process over TLS with a test CA, so
//! the tool, the fakes and the daemon share one clock: every latency is judged at the client
//! (the caller's socket, the vendor's socket), never by the daemon.
//!
//! Each call streams one 160-byte mu-law frame per 20 ms (8000 Hz, a phone's cadence, phases
//! spread over the 20 ms) carrying its call number and send time; the Deepgram provider is
//! configured with `chunk_ms = 20`, so each frame is one vendor message. Between 2 and 4 s in,
//! each call says one sentence; the fake answers with 1 s of mu-law in 50 ms chunks (real
//! time), each request on a new TLS connection, as the provider makes them.
//!
//! Figures, per step of N calls:
//! - `stt_frame_to_vendor`: caller frame sent -> the fake vendor read it (load tool, daemon,
//!   TLS and the fake included);
//! - `tts_vendor_to_caller`: the fake vendor's first byte -> the caller's first frame of that
//!   audio, minus the wait for the call's next 20 ms slot, which is `tts_slot_wait` (the call's
//!   slot grid is read off the arrival times of the utterance's own frames);
//! - frames the vendor got of those sent, speech events and marks the callers got, the
//!   daemon's own drop counters (`gatewayd_speech_dropped_*`);
//! - daemon CPU (% of one core) and resident memory, per call.

use crate::ivr::{Ws, detach};
use crate::report::{CpuMeter, Latencies, rss_kib};
use anyhow::{Context, bail};
use fastwebsockets::{Frame, OpCode, Payload, WebSocketRead, WebSocketWrite};
use gatewayd_fake_vendors::deepgram::{AudioHook, DeepgramFake, DeepgramScript};
use gatewayd_fake_vendors::tts::{TtsFake, TtsScript, TtsVendor};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const FRAME_BYTES: usize = 160;
const FRAME: Duration = Duration::from_millis(20);
/// Sender phases per 20 ms frame (one sender task each).
const PHASES: usize = 20;
/// The frame at which the first call says its sentence (2 s in); call `i` says it
/// `i % SAY_SPREAD` frames later, so the sentences start spread over 2 s, as in calls that
/// did not all begin at the same instant.
const SAY_AT: usize = 100;
/// Frames over which the calls' sentences start.
const SAY_SPREAD: usize = 100;
/// 50 ms chunks of the fake's answer (1 s).
const TTS_CHUNKS: usize = 20;

#[derive(clap::Args, Clone)]
pub struct SpeechArgs {
    /// The daemon binary.
    #[arg(long)]
    gatewayd: PathBuf,
    /// Directory of the plugin components (`fault-test.wasm`, `stt-deepgram.wasm`,
    /// `tts-elevenlabs.wasm`).
    #[arg(long)]
    plugins: PathBuf,
    /// Call counts to try, in order.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500")]
    steps: Vec<usize>,
    /// Seconds of audio per call (at least [`MIN_SECONDS`]).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The Deepgram provider's `chunk_ms`: call audio per vendor message (20 = every frame
    /// sent at once; more batches frames, and their wait for the batch counts as latency).
    #[arg(long, default_value_t = 20)]
    chunk_ms: u32,
    /// TOML appended to the daemon's config (sections it does not set, e.g. `[media]`).
    #[arg(long, default_value = "")]
    extra_toml: String,
}

/// Seconds `--seconds` must be at least: the last sentence starts 4 s in and lasts 1 s.
const MIN_SECONDS: u64 = 6;

/// The clock the frames' send times are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// What the fake Deepgram measured.
#[derive(Default)]
struct VendorSide {
    latencies: Mutex<Latencies>,
    frames: AtomicU64,
}

impl VendorSide {
    fn hook(self: &Arc<Self>) -> AudioHook {
        let this = self.clone();
        AudioHook(Arc::new(move |data: &[u8]| {
            let now = Instant::now();
            let mut lat = this.latencies.lock().expect("latencies");
            // A message of several frames (`--chunk-ms` over 20): each frame's own latency.
            for frame in data.chunks_exact(FRAME_BYTES) {
                let nanos = u64::from_le_bytes(frame[4..12].try_into().expect("8 bytes"));
                lat.record(now.saturating_duration_since(epoch() + Duration::from_nanos(nanos)));
                this.frames.fetch_add(1, Ordering::Relaxed);
            }
        }))
    }

    fn take(&self) -> (Latencies, u64) {
        (std::mem::take(&mut *self.latencies.lock().expect("latencies")), self.frames.swap(0, Ordering::Relaxed))
    }
}

/// The daemon process and its addresses.
struct Daemon {
    child: std::process::Child,
    addr: String,
    admin: std::net::SocketAddr,
    _dir: gatewayd_e2e::tempdir::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_daemon(a: &SpeechArgs, dg: &DeepgramFake, tts: &TtsFake) -> anyhow::Result<Daemon> {
    let dir = gatewayd_e2e::tempdir::TempDir::new("gatewayd-bench-speech");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, format!("{}\n{}", dg.ca_pem, tts.ca_pem))?;
    let [port, admin_port] = gatewayd_e2e::free_ports();
    let plugin = |name: &str| a.plugins.join(format!("{name}.wasm")).display().to_string();
    let config = format!(
        r#"
[daemon]
state_dir = "{state}"
log_level = "warn"
[storage]
url = "sqlite://gatewayd.db"
[[auth.keys]]
algorithm = "HS256"
secret = "gatewayd-bench-secret-0123456789"
[admin]
address = "127.0.0.1:{admin_port}"
[listeners.main]
address = "127.0.0.1:{port}"
[[routes]]
listener = "main"
path = "/ws/call/"
kind = "websocket"
plugin = "fault-test"
auth = "none"
media = {{ codec = "pcmu", rate = 8000 }}
[network]
extra_ca_file = "{ca}"
[speech]
stt = "deepgram"
tts = "elevenlabs"
[plugins.fault-test]
file = "{fault_test}"
[plugins.deepgram]
file = "{stt}"
[plugins.deepgram.capabilities]
connect = ["{dg_addr}"]
secret_env = {{ api_key = "BENCH_DEEPGRAM_KEY" }}
max_streams = 10000
[plugins.deepgram.config]
base_url = "{dg_url}"
chunk_ms = {chunk_ms}
[plugins.elevenlabs]
file = "{tts_file}"
[plugins.elevenlabs.capabilities]
connect = ["{tts_addr}"]
secret_env = {{ api_key = "BENCH_ELEVEN_KEY" }}
max_streams = 10000
[plugins.elevenlabs.config]
base_url = "{tts_url}"
default_voice = "bench-voice"
{extra}
"#,
        state = dir.path().join("state").display(),
        ca = ca.display(),
        fault_test = plugin("fault-test"),
        stt = plugin("stt-deepgram"),
        dg_addr = dg.addr,
        dg_url = dg.base_url(),
        tts_file = plugin("tts-elevenlabs"),
        tts_addr = tts.addr,
        tts_url = tts.base_url(),
        chunk_ms = a.chunk_ms,
        extra = a.extra_toml,
    );
    let config_path = dir.path().join("gatewayd.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("gatewayd.log"))?;
    let child = std::process::Command::new(&a.gatewayd)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("BENCH_DEEPGRAM_KEY", gatewayd_fake_vendors::TEST_KEY)
        .env("BENCH_ELEVEN_KEY", gatewayd_fake_vendors::TEST_KEY)
        .stderr(log)
        .spawn()
        .context("starting gatewayd")?;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
    let daemon = Daemon { child, addr: format!("127.0.0.1:{port}"), admin, _dir: dir };
    for _ in 0..300 {
        if matches!(gatewayd_e2e::http_get(admin, "/readyz").await, Ok((200, _))) {
            return Ok(daemon);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gatewayd did not become ready (log: {})", daemon._dir.path().join("gatewayd.log").display())
}

pub async fn run(a: SpeechArgs) -> anyhow::Result<()> {
    if a.seconds < MIN_SECONDS {
        bail!("--seconds must be at least {MIN_SECONDS}");
    }
    epoch();
    let vendor = Arc::new(VendorSide::default());
    let dg = DeepgramFake::start(DeepgramScript { on_audio: Some(vendor.hook()), ..Default::default() }).await;
    let tts = TtsFake::start(TtsVendor::ElevenLabs, TtsScript { chunks: TTS_CHUNKS, ..Default::default() }).await;
    let daemon = start_daemon(&a, &dg, &tts).await?;
    let pid = daemon.child.id();
    for &n in &a.steps {
        step(&a, n, &daemon, pid, &vendor, &tts).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

type WsWrite = WebSocketWrite<tokio::net::tcp::OwnedWriteHalf>;
type WsRead = WebSocketRead<tokio::net::tcp::OwnedReadHalf>;

/// What one call's caller saw.
#[derive(Default)]
struct Heard {
    /// Arrival of each audio frame.
    frames: Vec<Instant>,
    speech_events: u64,
    marks: u64,
}

/// Connect, answer, start transcribing.
async fn open_call(addr: &str) -> anyhow::Result<Ws> {
    let mut c = gatewayd_e2e::Client::connect(&format!("ws://{addr}/ws/call/")).await?;
    for (command, reply) in [("answer", "answered"), ("transcribe", "transcribing")] {
        c.send_text(command).await?;
        let got = c.recv_text().await?;
        if got != reply {
            bail!("`{command}`: expected {reply}, got {got}");
        }
    }
    detach(c)
}

async fn step(
    a: &SpeechArgs,
    n: usize,
    daemon: &Daemon,
    pid: u32,
    vendor: &VendorSide,
    tts: &TtsFake,
) -> anyhow::Result<()> {
    let rss_before = rss_kib(pid)?;
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        calls.push(open_call(&daemon.addr).await.context("opening a call")?);
    }
    let requests_before = tts.recorded().requests.len();
    let _ = vendor.take();
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let frames = (a.seconds * 50) as usize;
    let (cpu, tool_cpu) = (CpuMeter::start(pid)?, CpuMeter::start(std::process::id())?);
    let mut readers = Vec::with_capacity(n);
    let mut groups: Vec<Vec<(u32, WsWrite)>> = (0..PHASES).map(|_| Vec::new()).collect();
    let until = start + FRAME * frames as u32 + Duration::from_secs(2);
    for (i, ws) in calls.into_iter().enumerate() {
        let (rd, wr) = ws.split(|s| s.into_split());
        readers.push(tokio::spawn(receive(rd, until)));
        groups[i % PHASES].push((i as u32, wr));
    }
    let senders: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(phase, group)| tokio::spawn(send(group, start + FRAME * phase as u32 / PHASES as u32, frames)))
        .collect();
    tokio::time::sleep_until(start + FRAME * frames as u32 / 2).await;
    let rss = rss_kib(pid)?;
    let mut writers = Vec::with_capacity(n);
    for t in senders {
        writers.extend(t.await??);
    }
    let (cpu, tool_cpu) = (cpu.percent()?, tool_cpu.percent()?);
    let mut heard = Vec::with_capacity(n);
    for t in readers {
        heard.push(t.await?);
    }
    for (_, mut w) in writers {
        w.write_frame(Frame::close(1000, b"")).await.ok();
    }
    let (stt, vendor_frames) = vendor.take();

    // TTS: vendor first byte -> first frame heard, per call.
    let requests = tts.recorded().requests;
    let (mut added, mut slot_wait) = (Latencies::default(), Latencies::default());
    let mut spoken = 0;
    for (i, h) in heard.iter().enumerate() {
        let tag = format!("\"call {i}\"");
        let Some(request) = requests[requests_before..].iter().find(|r| r.body.contains(&tag)) else { continue };
        let Some(&first) = h.frames.first() else { continue };
        spoken += 1;
        // The call's slot grid as the caller sees it: the earliest arrival among the
        // utterance's frames, counted back to the first one.
        let grid = h.frames.iter().enumerate().map(|(k, t)| *t - FRAME * k as u32).min().expect("a frame");
        let slot = if grid >= request.at {
            grid - FRAME * ((grid - request.at).as_nanos() / FRAME.as_nanos()) as u32
        } else {
            grid + FRAME * (request.at - grid).as_nanos().div_ceil(FRAME.as_nanos()) as u32
        };
        added.record(first.saturating_duration_since(slot));
        slot_wait.record(slot.saturating_duration_since(request.at));
    }
    let (_, metrics) = gatewayd_e2e::http_get(daemon.admin, "/metrics").await?;
    let series = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    println!("--- speech step: {n} concurrent calls, {} s of audio each ---", a.seconds);
    println!("frames_sent: {}", n * frames);
    println!("frames_at_vendor: {vendor_frames}");
    stt.print("stt_frame_to_vendor");
    println!("tts_utterances_heard: {spoken} of {n}");
    added.print("tts_vendor_to_caller");
    slot_wait.print("tts_slot_wait");
    println!("speech_events_at_callers: {}", heard.iter().map(|h| h.speech_events).sum::<u64>());
    println!("marks_at_callers: {}", heard.iter().map(|h| h.marks).sum::<u64>());
    println!("daemon_dropped_audio_bytes_total: {}", series("gatewayd_speech_dropped_audio_bytes_total"));
    println!("daemon_dropped_speech_events_total: {}", series("gatewayd_speech_dropped_events_total"));
    println!("daemon_speech_errors_total: {}", series("gatewayd_speech_errors_total"));
    println!("daemon_cpu: {cpu:.1} % of one core ({:.3} % per call)", cpu / n as f64);
    println!("loadtool_and_fakes_cpu: {tool_cpu:.1} % of one core");
    println!("daemon_rss: {rss} KiB ({:.1} KiB per call)", rss.saturating_sub(rss_before) as f64 / n as f64);
    Ok(())
}

/// Send one frame per 20 ms from `first` on to every call of one phase group, `frames` each,
/// on a deadline schedule; each frame carries the call number and its send time. At frame
/// [`SAY_AT`] + its spread each call says its sentence first.
async fn send(
    mut group: Vec<(u32, WsWrite)>,
    first: tokio::time::Instant,
    frames: usize,
) -> anyhow::Result<Vec<(u32, WsWrite)>> {
    let mut frame = vec![0x55u8; FRAME_BYTES];
    for seq in 0..frames {
        tokio::time::sleep_until(first + FRAME * seq as u32).await;
        for (call, wr) in &mut group {
            if seq == SAY_AT + *call as usize % SAY_SPREAD {
                let say = format!("say:m:call {call}");
                wr.write_frame(Frame::text(Payload::Owned(say.into_bytes()))).await?;
            }
            frame[..4].copy_from_slice(&call.to_le_bytes());
            let sent = epoch().elapsed().as_nanos() as u64;
            frame[4..12].copy_from_slice(&sent.to_le_bytes());
            wr.write_frame(Frame::binary(Payload::Borrowed(&frame))).await?;
        }
    }
    Ok(group)
}

/// Read what one call's caller gets until `until`: audio frames (timed), speech events, marks.
async fn receive(mut rd: WsRead, until: tokio::time::Instant) -> Heard {
    let mut heard = Heard::default();
    let mut ignore = |_: Frame<'_>| async { Ok::<_, std::io::Error>(()) };
    let deadline = tokio::time::sleep_until(until);
    tokio::pin!(deadline);
    loop {
        let f = tokio::select! {
            biased;
            f = rd.read_frame(&mut ignore) => match f {
                Ok(f) => f,
                Err(_) => break,
            },
            _ = &mut deadline => break,
        };
        match f.opcode {
            OpCode::Binary if heard.frames.len() < 10_000 => heard.frames.push(Instant::now()),
            OpCode::Text if f.payload.starts_with(b"speech:") => heard.speech_events += 1,
            OpCode::Text if f.payload.starts_with(b"mark:") => heard.marks += 1,
            OpCode::Close => break,
            _ => {}
        }
    }
    heard
}
