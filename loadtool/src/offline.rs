//! Offline speech load (`gatewayd-load offline-speech`): N concurrent calls transcribed by the
//! offline recogniser (PocketSphinx compiled into the `stt-pocketsphinx` Wasm component) and
//! spoken to by the offline synthesiser (Flite, `tts-flite`), through the real daemon; the
//! fault-test plugin steers each call on a G.711 mu-law 8000 Hz route, as a phone line. Every
//! figure is judged at the caller's socket.
//!
//! First one call asks Flite to say [`SENTENCE`]; the audio heard (mu-law) is every caller's
//! utterance. Then, per step of N calls, each call answers, starts transcribing (open
//! vocabulary, the full `en-us.lm.bin`) and says the utterance followed by
//! [`GAP_FRAMES`] of silence, over and over for `--seconds`, on a 20 ms cadence (phases spread).
//! Figures:
//! - `stt_final_latency`: the end of an utterance's speech (its last frame sent) -> the final
//!   transcript at the caller (the recogniser's endpointing silence included: it must hear
//!   silence to know the caller stopped);
//! - utterances with a final, of those sent; a stream whose real-time factor were above 1
//!   would fall behind: its finals would come later each time and the last ones not at all;
//! - `stt_final_latency_last`: the latency of each call's last utterance alone (it would grow
//!   with the run if decoding fell behind);
//! - daemon CPU (% of one core; divided by N x 100 it bounds the average real-time factor) and
//!   resident memory per call;
//! - TTS, after the STT steps: N calls each say [`SENTENCE`] at once: `tts_first_audio` (the
//!   `say` sent -> the first audio frame at the caller) and the daemon's CPU per second of audio
//!   produced (the synthesiser's real-time factor, at most).

use crate::report::{CpuMeter, Latencies, rss_kib};
use anyhow::{Context, bail};
use gatewayd_e2e::{Client, Incoming};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What every caller says.
pub const SENTENCE: &str = "I would like to check my account balance please";
/// Silence after each utterance, in 20 ms frames (1.5 s).
const GAP_FRAMES: usize = 75;
const FRAME_BYTES: usize = 160;
const FRAME: Duration = Duration::from_millis(20);
/// Mu-law silence.
const SILENCE: u8 = 0xFF;

#[derive(clap::Args, Clone)]
pub struct OfflineArgs {
    /// The daemon binary.
    #[arg(long)]
    gatewayd: PathBuf,
    /// Directory of the plugin components (`fault-test.wasm`, `stt-pocketsphinx.wasm`,
    /// `tts-flite.wasm`).
    #[arg(long)]
    plugins: PathBuf,
    /// Directory of the engines' data (`pocketsphinx/`, `flite/`), as `make setup` installs it.
    #[arg(long)]
    models: PathBuf,
    /// Call counts to try, in order.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,12,16")]
    steps: Vec<usize>,
    /// Seconds of speech per call and step.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// TOML appended to the daemon's config.
    #[arg(long, default_value = "")]
    extra_toml: String,
    /// Transcribe with these keyterms (comma-separated phrases; the recogniser makes them a
    /// grammar, as an IVR menu does) instead of the open vocabulary; the sentence is added.
    #[arg(long, value_delimiter = ',')]
    keyterms: Vec<String>,
}

/// The daemon process and its addresses.
struct Daemon {
    child: std::process::Child,
    addr: String,
    _dir: gatewayd_e2e::tempdir::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_daemon(a: &OfflineArgs) -> anyhow::Result<Daemon> {
    let dir = gatewayd_e2e::tempdir::TempDir::new("gatewayd-bench-offline");
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
[plugins.fault-test]
file = "{fault_test}"
{providers}
{extra}
"#,
        state = dir.path().join("state").display(),
        fault_test = plugin("fault-test"),
        providers = gatewayd_e2e::speech_providers::offline_providers_toml_in(&a.plugins, &a.models, ""),
        extra = a.extra_toml,
    );
    let config_path = dir.path().join("gatewayd.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("gatewayd.log"))?;
    let child = std::process::Command::new(&a.gatewayd)
        .args(["run", "--config"])
        .arg(&config_path)
        .stderr(log)
        .spawn()
        .context("starting gatewayd")?;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
    let daemon = Daemon { child, addr: format!("127.0.0.1:{port}"), _dir: dir };
    for _ in 0..600 {
        if matches!(gatewayd_e2e::http_get(admin, "/readyz").await, Ok((200, _))) {
            return Ok(daemon);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gatewayd did not become ready (log: {})", daemon._dir.path().join("gatewayd.log").display())
}

/// A call on `/ws/call/`, answered.
async fn answer(addr: &str) -> anyhow::Result<Client> {
    let mut c = Client::connect(&format!("ws://{addr}/ws/call/")).await?;
    command(&mut c, "answer", "answered").await?;
    Ok(c)
}

/// Send `command`, expect `reply` as the next text.
async fn command(c: &mut Client, command: &str, reply: &str) -> anyhow::Result<()> {
    c.send_text(command).await?;
    let got = c.recv_text().await?;
    if got != reply {
        bail!("`{command}`: expected {reply}, got {got}");
    }
    Ok(())
}

/// `text` said by the TTS provider, as the caller heard it (mu-law), and the time from the
/// `say` to the first audio frame.
async fn hear(addr: &str, text: &str) -> anyhow::Result<(Vec<u8>, Duration)> {
    let mut c = answer(addr).await?;
    let sent = Instant::now();
    command(&mut c, &format!("say:said:{text}"), "saying").await?;
    let (mut audio, mut first) = (Vec::new(), None);
    loop {
        match c.recv_within(Duration::from_secs(60)).await? {
            Incoming::Binary(b) => {
                first.get_or_insert_with(|| sent.elapsed());
                audio.extend_from_slice(&b);
            }
            Incoming::Text(t) if t == "mark:said" => break,
            Incoming::Text(t) if t.starts_with("speech:") && t.contains("tts_error") => bail!("TTS failed: {t}"),
            Incoming::Text(_) => {}
            Incoming::Closed(code, reason) => bail!("call closed: {code} {reason}"),
        }
    }
    Ok((audio, first.context("no audio")?))
}

pub async fn run(a: OfflineArgs) -> anyhow::Result<()> {
    let daemon = start_daemon(&a).await?;
    let result = measure(&a, &daemon).await;
    if result.is_err() {
        let log = std::fs::read_to_string(daemon._dir.path().join("gatewayd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("the daemon's log, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    result
}

async fn measure(a: &OfflineArgs, daemon: &Daemon) -> anyhow::Result<()> {
    let pid = daemon.child.id();
    let (speech, _) = hear(&daemon.addr, SENTENCE).await.context("synthesising the caller's utterance")?;
    let utterance_frames = speech.len().div_ceil(FRAME_BYTES);
    println!(
        "utterance: {:.2} s of speech + {:.2} s of silence",
        utterance_frames as f64 * 0.02,
        GAP_FRAMES as f64 * 0.02
    );
    for &n in &a.steps {
        stt_step(a, n, daemon, pid, &speech).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some(&n) = a.steps.last() {
        tts_step(n, daemon, pid).await?;
    }
    Ok(())
}

/// What one call measured.
#[derive(Default)]
struct CallResult {
    latencies: Latencies,
    last: Option<Duration>,
    sent: usize,
    finals: usize,
    errors: Vec<String>,
}

async fn stt_step(a: &OfflineArgs, n: usize, daemon: &Daemon, pid: u32, speech: &[u8]) -> anyhow::Result<()> {
    let rss_before = rss_kib(pid)?;
    let transcribe = if a.keyterms.is_empty() {
        "transcribe".to_string()
    } else {
        let sentence = SENTENCE.to_lowercase();
        format!(
            "transcribe::{}",
            a.keyterms.iter().map(String::as_str).chain([sentence.as_str()]).collect::<Vec<_>>().join("|")
        )
    };
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = answer(&daemon.addr).await.with_context(|| format!("answering call {i}"))?;
        command(&mut c, &transcribe, "transcribing").await.with_context(|| format!("transcribing call {i}"))?;
        calls.push(c);
    }
    let cpu = CpuMeter::start(pid)?;
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let frames = a.seconds as usize * 50;
    let tasks: Vec<_> = calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let first = start + FRAME * i as u32 / n as u32;
            tokio::spawn(call(c, speech.to_vec(), first, frames))
        })
        .collect();
    tokio::time::sleep_until(start + FRAME * frames as u32 / 2).await;
    let rss = rss_kib(pid)?;
    let mut results = Vec::with_capacity(n);
    for (i, t) in tasks.into_iter().enumerate() {
        results.push(t.await?.with_context(|| format!("call {i}"))?);
    }
    let cpu = cpu.percent()?;
    let mut all = Latencies::default();
    let mut last = Latencies::default();
    for r in &results {
        all.merge(&r.latencies);
        if let Some(l) = r.last {
            last.record(l);
        }
    }
    let mode = if a.keyterms.is_empty() { "open vocabulary" } else { "grammar of the keyterms" };
    println!("--- offline STT step: {n} concurrent calls, {} s each, {mode} ---", a.seconds);
    println!("utterances_sent: {}", results.iter().map(|r| r.sent).sum::<usize>());
    println!("utterances_with_a_final: {}", results.iter().map(|r| r.finals).sum::<usize>());
    all.print("stt_final_latency");
    last.print("stt_final_latency_last");
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.errors).collect();
    println!("stt_errors: {}{}", errors.len(), errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default());
    println!("daemon_cpu: {cpu:.1} % of one core ({:.2} % per call)", cpu / n as f64);
    println!("daemon_rss: {rss} KiB ({:.0} KiB per call)", rss.saturating_sub(rss_before) as f64 / n as f64);
    Ok(())
}

/// One caller: say `speech` then [`GAP_FRAMES`] of silence, over and over for `frames`
/// frames from `first`; time each utterance's final transcript from the end of its speech.
async fn call(c: Client, speech: Vec<u8>, first: tokio::time::Instant, frames: usize) -> anyhow::Result<CallResult> {
    let ws = crate::ivr::detach(c)?;
    let (mut rd, mut wr) = ws.split(|s| s.into_split());
    let cycle = speech.len().div_ceil(FRAME_BYTES) + GAP_FRAMES;
    let utterances = frames / cycle;
    let (ends_tx, mut ends_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let sender = tokio::spawn(async move {
        use fastwebsockets::{Frame, Payload};
        for u in 0..utterances {
            for (k, chunk) in speech.chunks(FRAME_BYTES).chain(std::iter::repeat_n(&[][..], GAP_FRAMES)).enumerate() {
                tokio::time::sleep_until(first + FRAME * (u * cycle + k) as u32).await;
                let mut frame = chunk.to_vec();
                frame.resize(FRAME_BYTES, SILENCE);
                wr.write_frame(Frame::binary(Payload::Owned(frame))).await?;
                if k + 1 == speech.len().div_ceil(FRAME_BYTES) {
                    let _ = ends_tx.send(Instant::now());
                }
            }
        }
        wr.write_frame(Frame::text(Payload::Borrowed(b"stop-transcribing"))).await?;
        anyhow::Ok(wr)
    });
    let mut result = CallResult { sent: utterances, ..Default::default() };
    let mut ends = std::collections::VecDeque::new();
    let mut ignore = |_: fastwebsockets::Frame<'_>| async { Ok::<_, std::io::Error>(()) };
    loop {
        let f = tokio::time::timeout(Duration::from_secs(60), rd.read_frame(&mut ignore))
            .await
            .context("no message for 60 s")?
            .with_context(|| format!("reading, {} finals so far", result.finals))?;
        while let Ok(end) = ends_rx.try_recv() {
            ends.push_back(end);
        }
        if f.opcode != fastwebsockets::OpCode::Text {
            continue;
        }
        let text = std::str::from_utf8(&f.payload)?;
        let Some(json) = text.strip_prefix("speech:") else { continue };
        let event: serde_json::Value = serde_json::from_str(json)?;
        match event["event"].as_str() {
            Some("transcript")
                if event["is_final"] == true && event["text"].as_str().is_some_and(|t| !t.is_empty()) =>
            {
                // The final of the oldest utterance whose speech has ended.
                if let Some(end) = ends.pop_front() {
                    let latency = end.elapsed();
                    result.latencies.record(latency);
                    result.last = Some(latency);
                    result.finals += 1;
                }
            }
            Some("stt_error") => result.errors.push(event.to_string()),
            Some("stopped") => break,
            _ => {}
        }
    }
    let mut wr = sender.await??;
    wr.write_frame(fastwebsockets::Frame::close(1000, b"")).await.ok();
    Ok(result)
}

/// N calls say [`SENTENCE`] at once: time to first audio at the caller, and the daemon's CPU
/// per second of audio produced.
async fn tts_step(n: usize, daemon: &Daemon, pid: u32) -> anyhow::Result<()> {
    let cpu = CpuMeter::start(pid)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let addr = daemon.addr.clone();
            tokio::spawn(async move { hear(&addr, SENTENCE).await })
        })
        .collect();
    let mut first = Latencies::default();
    let mut audio_s = 0.0;
    for t in tasks {
        let (audio, to_first) = t.await??;
        first.record(to_first);
        audio_s += audio.len() as f64 / 8000.0;
    }
    let busy = cpu.percent()? / 100.0 * started.elapsed().as_secs_f64();
    println!("--- offline TTS: {n} calls say one sentence at once ---");
    first.print("tts_first_audio");
    println!("tts_audio: {audio_s:.1} s");
    println!("daemon_cpu_per_audio_second: {:.4} s (synthesis real-time factor at most this)", busy / audio_s);
    Ok(())
}
