//! ivr.md end to end: the real daemon with the `ivr` and `ivr-menu` plugins on their own
//! listener, driven by the harness WebSocket client. Audio is L16 8 kHz mono little-endian,
//! 320-byte frames, unless a route says otherwise. Timing checks carry tolerances: the machine
//! is shared (2 cores).

use gatewayd_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Bytes of one 20 ms frame of L16 at 8 kHz.
const FRAME: usize = 320;

/// Tests that measure timing run one at a time (each starts its own daemon; the machine has 2
/// cores), so they do not stall each other.
/// How late a timer may fire on a busy machine before the timeline test fails.
const LATE: Duration = Duration::from_secs(10);

static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// IVR config without the spec's timed DTMF and hangup, for tests about audio only.
const QUIET: &str = "dtmf_delay_ms = 600000";

struct Ivr {
    _daemon: Daemon,
    port: u16,
}

impl Ivr {
    /// Start a daemon with the IVR listener. `ivr` and `menu` are the plugins' config tables,
    /// `ivr_media` the body of `[plugins.ivr.media]`.
    async fn start(ivr: &str, menu: &str, ivr_media: &str) -> Ivr {
        let port = free_port();
        let prompts = workspace().join("plugins/ivr-menu/prompts");
        let extra = format!(
            r#"
[listeners.ivr]
address = "127.0.0.1:{port}"
max_message_bytes = 4096

{routes}
[plugins.ivr]
file = "{ivr_file}"
fault_report = "event"
[plugins.ivr.config]
{ivr}
[plugins.ivr.media]
{ivr_media}

[plugins.ivr-menu]
file = "{menu_file}"
fault_report = "event"
[plugins.ivr-menu.config]
{menu}
[plugins.ivr-menu.media.files]
greeting = "{p}/greeting.wav"
option1 = "{p}/option1.wav"
option2 = "{p}/option2.wav"
"#,
            routes = [("/", "ivr", "l16", 8000), ("/pcmu", "ivr", "pcmu", 8000), ("/wide", "ivr", "l16", 16000), ("/menu", "ivr-menu", "l16", 8000)]
                .iter()
                .map(|(path, plugin, codec, rate)| {
                    format!("[[routes]]\nlistener = \"ivr\"\npath = \"{path}\"\nkind = \"websocket\"\nplugin = \"{plugin}\"\nauth = \"none\"\nmedia = {{ codec = \"{codec}\", rate = {rate} }}\n")
                })
                .collect::<String>(),
            ivr_file = plugin_file("ivr").display(),
            menu_file = plugin_file("ivr-menu").display(),
            p = prompts.display(),
        );
        let daemon =
            Daemon::start(DaemonOptions { extra_toml: extra, ..Default::default() }).await.expect("daemon starts");
        Ivr { _daemon: daemon, port }
    }

    async fn connect(&self, path: &str) -> Client {
        Client::connect(&format!("ws://127.0.0.1:{}{path}", self.port)).await.expect("connects")
    }

    /// Connect and get past `incoming_call` / `answer`.
    async fn call(&self, path: &str) -> Client {
        let mut c = self.connect(path).await;
        c.send_json(&incoming_call("s1")).await.unwrap();
        assert_eq!(c.recv_json().await.unwrap(), json!({"event": "answer"}));
        c
    }
}

fn incoming_call(session: &str) -> Value {
    json!({"event": "incoming_call", "callerId": "+15551230000", "didNumber": "+18005550100", "sessionId": session})
}

/// Frame `n` of a test signal: distinct content per frame (a counter and a ramp).
fn test_frame(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((n * 31 + i * 7) % 251) as u8).collect()
}

/// The 16-bit samples of a prompt file, as L16 wire frames of 320 bytes (last one padded).
fn prompt_frames(name: &str) -> Vec<Vec<u8>> {
    let path = workspace().join(format!("plugins/ivr-menu/prompts/{name}.wav"));
    let mut r = hound::WavReader::open(&path).expect("prompt file");
    assert_eq!((r.spec().sample_rate, r.spec().channels), (8000, 1));
    let bytes: Vec<u8> = r.samples::<i16>().flat_map(|s| s.unwrap().to_le_bytes()).collect();
    bytes
        .chunks(FRAME)
        .map(|c| {
            let mut f = c.to_vec();
            f.resize(FRAME, 0);
            f
        })
        .collect()
}

/// Read until the next binary frame (skipping nothing: text is an error), within `within`.
async fn next_binary(c: &mut Client, within: Duration) -> Option<Vec<u8>> {
    match c.recv_within(within).await {
        Ok(Incoming::Binary(b)) => Some(b),
        Ok(other) => panic!("expected audio, got {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_timeline() {
    let _serial = TIMING.lock().await;
    let ivr = Ivr::start("", "", "").await;
    let mut c = ivr.connect("/").await;
    let t0 = Instant::now();
    c.send_json(&incoming_call("timeline")).await.unwrap();
    assert_eq!(c.recv_json().await.unwrap(), json!({"event": "answer"}));
    // The answer comes before the timed events (it is the first message); when it comes
    // depends on how busy the machine is, so only the order is asserted.
    let answered = t0.elapsed();
    let dtmf = c.recv_json().await.unwrap();
    let at = t0.elapsed();
    assert_eq!(dtmf, json!({"event": "dtmf", "digit": "1", "duration": 200}));
    // Timers never fire early; how late they may fire depends on the machine's load, so the
    // upper bounds are generous (LATE).
    assert!(at >= Duration::from_millis(1950) && at <= Duration::from_millis(2000) + answered + LATE, "dtmf at {at:?}");
    // The caller presses a digit meanwhile: accepted silently.
    c.send_json(&json!({"event": "dtmf", "digit": "1"})).await.unwrap();
    match c.recv_within(Duration::from_secs(10) + PATIENCE).await.unwrap() {
        Incoming::Text(t) => assert_eq!(serde_json::from_str::<Value>(&t).unwrap(), json!({"event": "hangup"})),
        other => panic!("expected hangup, got {other:?}"),
    }
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_millis(11_950) && at <= Duration::from_millis(12_000) + answered + LATE,
        "hangup at {at:?}"
    );
    assert_eq!(c.recv_close().await.unwrap().0, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_exactly_what_was_sent() {
    let ivr = Ivr::start(QUIET, "", "").await;
    for (path, len) in [("/", FRAME), ("/wide", 640)] {
        let mut c = ivr.call(path).await;
        let sent: Vec<Vec<u8>> = (0..100).map(|n| test_frame(n, len)).collect();
        let mut got = Vec::new();
        let start = tokio::time::Instant::now();
        for (n, f) in sent.iter().enumerate() {
            c.send_binary(f).await.unwrap();
            // Read what arrives until this frame's 20 ms slot is over.
            let slot_end = start + Duration::from_millis(20 * (n as u64 + 1));
            while let Some(left) = slot_end.checked_duration_since(tokio::time::Instant::now()) {
                match next_binary(&mut c, left).await {
                    Some(b) => got.push(b),
                    None => break,
                }
            }
        }
        while got.len() < sent.len() {
            got.push(next_binary(&mut c, PATIENCE).await.expect("every frame comes back"));
        }
        assert_eq!(got, sent, "{path}: echo is exact and in order");
        c.expect_silence(Duration::from_millis(200)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mulaw_route_echoes_160_byte_frames() {
    let ivr = Ivr::start(QUIET, "", "").await;
    let mut c = ivr.call("/pcmu").await;
    // Every mu-law code but 0x7F (negative zero, which decodes to the same sample as 0xFF).
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|n| (0..160).map(|i| ((n * 160 + i) % 255) as u8).map(|b| if b == 0x7F { 0xFF } else { b }).collect())
        .collect();
    for f in &frames {
        c.send_binary(f).await.unwrap();
    }
    for f in &frames {
        assert_eq!(&next_binary(&mut c, PATIENCE).await.expect("echo"), f);
    }
    // An empty message holds no sample.
    c.send_binary(&[]).await.unwrap();
    let e = c.recv_json().await.unwrap();
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_frame")), "{e}");
}

/// Issue #15 item 7: a client may send audio in any chunk size that holds whole samples; the
/// daemon re-frames it into 20 ms frames (320 bytes of L16 at 8 kHz), so 160-byte and 640-byte
/// chunks come back as the same bytes in 320-byte frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_chunk_sizes_are_reframed_into_20_ms_frames() {
    let ivr = Ivr::start(QUIET, "", "").await;
    for chunk in [160usize, 640, 482] {
        let mut c = ivr.call("/").await;
        // 30 frames of distinct samples, sent in chunks of `chunk` bytes.
        let audio: Vec<u8> = (0..30).flat_map(|n| test_frame(n, FRAME)).collect();
        for piece in audio.chunks(chunk) {
            c.send_binary(piece).await.unwrap();
        }
        let mut heard = Vec::new();
        while heard.len() < audio.len() {
            let frame = next_binary(&mut c, PATIENCE).await.expect("every frame comes back");
            assert_eq!(frame.len(), FRAME, "{chunk}-byte chunks: echoed as 20 ms frames");
            heard.extend(frame);
        }
        assert_eq!(heard, audio, "{chunk}-byte chunks: heard back exactly");
        c.expect_silence(Duration::from_millis(200)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_frames_are_paced_at_50_per_second() {
    let _serial = TIMING.lock().await;
    let ivr = Ivr::start(QUIET, "", "").await;
    let mut c = ivr.call("/").await;
    // A burst of 50 frames (one second of audio) sent at once must come back one per 20 ms.
    for n in 0..50 {
        c.send_binary(&test_frame(n, FRAME)).await.unwrap();
    }
    let mut arrivals = Vec::new();
    for _ in 0..50 {
        next_binary(&mut c, PATIENCE).await.expect("echo");
        arrivals.push(Instant::now());
    }
    let gaps: Vec<f64> = arrivals.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0).collect();
    let span = (arrivals[49] - arrivals[0]).as_secs_f64() * 1000.0;
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "pacing: span {span:.1} ms over 49 gaps, median gap {median:.2} ms, min {:.2}, max {:.2}",
        sorted[0], sorted[48]
    );
    // 49 gaps of 20 ms: 980 ms, never less (no burst). A stall of the shared machine makes the
    // pacer skip slots rather than catch up, which only lengthens the span.
    assert!((940.0..=2000.0).contains(&span), "span {span:.1} ms");
    assert!((18.0..=22.0).contains(&median), "median gap {median:.2} ms");
    let short = gaps.iter().filter(|g| **g < 10.0).count();
    assert!(short <= 3, "{short} gaps under 10 ms: {gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_stops_queued_audio_within_one_frame() {
    let _serial = TIMING.lock().await;
    let ivr = Ivr::start("", "no_input_ms = 60000", "").await;
    let greeting = prompt_frames("greeting");
    let option1 = prompt_frames("option1");
    let mut c = ivr.call("/menu").await;
    for f in greeting.iter().take(10) {
        assert_eq!(&next_binary(&mut c, PATIENCE).await.unwrap(), f);
    }
    c.send_json(&json!({"event": "dtmf", "digit": "1"})).await.unwrap();
    let mut greeting_after = 0;
    loop {
        let f = next_binary(&mut c, PATIENCE).await.expect("audio goes on");
        if f == option1[0] {
            break;
        }
        assert!(greeting.contains(&f), "only greeting frames before option1");
        greeting_after += 1;
    }
    // The frame on the wire when the digit was sent, plus at most the one already due.
    assert!(greeting_after <= 2, "{greeting_after} greeting frames after the digit");
    for f in &option1[1..] {
        assert_eq!(&next_binary(&mut c, PATIENCE).await.unwrap(), f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_arrive_only_after_their_audio_then_silence_reprompts_once_and_hangs_up() {
    let _serial = TIMING.lock().await;
    // The silence timer starts at the prompt's mark. If the mark were reported when the prompt
    // was queued, the 600 ms timer would cut the 1.2 s greeting short.
    let ivr = Ivr::start("", "no_input_ms = 600\nmax_reprompts = 1", "").await;
    let greeting = prompt_frames("greeting");
    let mut c = ivr.call("/menu").await;
    for round in 0..2 {
        for (i, f) in greeting.iter().enumerate() {
            let got = next_binary(&mut c, PATIENCE).await.expect("greeting");
            assert_eq!(&got, f, "round {round}, frame {i}");
        }
        let quiet = Instant::now();
        if round == 0 {
            let next = next_binary(&mut c, PATIENCE).await.expect("re-prompt");
            let gap = quiet.elapsed();
            assert!(gap >= Duration::from_millis(500), "re-prompt {gap:?} after the greeting ended");
            assert_eq!(next, greeting[0]);
            // The first frame of round 1 was read here.
            for (i, f) in greeting.iter().enumerate().skip(1) {
                assert_eq!(&next_binary(&mut c, PATIENCE).await.unwrap(), f, "re-prompt frame {i}");
            }
            let quiet = Instant::now();
            assert_eq!(c.recv_json().await.unwrap(), json!({"event": "hangup"}));
            assert!(quiet.elapsed() >= Duration::from_millis(500));
            assert_eq!(c.recv_close().await.unwrap().0, 1000);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_routes_digit_2_to_its_prompt_and_reprompts_on_a_wrong_digit() {
    let ivr = Ivr::start("", "no_input_ms = 60000", "").await;
    let greeting = prompt_frames("greeting");
    let option2 = prompt_frames("option2");
    let mut c = ivr.call("/menu").await;
    assert_eq!(next_binary(&mut c, PATIENCE).await.unwrap(), greeting[0]);
    c.send_json(&json!({"event": "dtmf", "digit": "2"})).await.unwrap();
    let mut f = next_binary(&mut c, PATIENCE).await.unwrap();
    while f != option2[0] {
        assert!(greeting.contains(&f), "greeting, then option 2");
        f = next_binary(&mut c, PATIENCE).await.unwrap();
    }
    for expected in &option2[1..] {
        assert_eq!(&next_binary(&mut c, PATIENCE).await.unwrap(), expected);
    }
    c.expect_silence(Duration::from_millis(300)).await.unwrap();
    // A digit with no menu entry plays the greeting again from its start.
    c.send_json(&json!({"event": "dtmf", "digit": "7"})).await.unwrap();
    for expected in &greeting {
        assert_eq!(&next_binary(&mut c, PATIENCE).await.unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_and_disturbs_nobody() {
    let ivr = Ivr::start(QUIET, "", "").await;
    // A bystander call keeps echoing throughout.
    let mut bystander = ivr.call("/").await;
    let mut c = ivr.connect("/").await;

    async fn expect_error(c: &mut Client, code: &str) {
        let e = c.recv_json().await.unwrap();
        assert_eq!(e["event"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    c.send_binary(&test_frame(0, FRAME)).await.unwrap();
    expect_error(&mut c, "audio_before_call").await;
    c.send_json(&json!({"event": "dtmf", "digit": "1"})).await.unwrap();
    expect_error(&mut c, "no_call").await;
    c.send_text("this is not json").await.unwrap();
    expect_error(&mut c, "invalid_json").await;
    c.send_json(&json!({"event": "transfer", "to": "x"})).await.unwrap();
    expect_error(&mut c, "unknown_event").await;
    c.send_json(&json!({"event": "incoming_call", "callerId": 5})).await.unwrap();
    expect_error(&mut c, "invalid_message").await;
    c.send_json(&incoming_call("bad")).await.unwrap();
    assert_eq!(c.recv_json().await.unwrap(), json!({"event": "answer"}));
    for digit in ["E", "11", "", "x", "a"] {
        c.send_json(&json!({"event": "dtmf", "digit": digit})).await.unwrap();
        expect_error(&mut c, "invalid_digit").await;
    }
    c.send_json(&incoming_call("again")).await.unwrap();
    expect_error(&mut c, "already_in_call").await;
    // Audio that is not whole 16-bit samples: refused and reported, at most once a second (the
    // rest are counted quietly); the call goes on: a good frame after them is echoed.
    let started = std::time::Instant::now();
    for len in [1, 321, 3999] {
        c.send_binary(&vec![1u8; len]).await.unwrap();
    }
    c.send_binary(&test_frame(7, FRAME)).await.unwrap();
    let mut reports = 0;
    let echoed = loop {
        match c.recv_within(PATIENCE).await.unwrap() {
            Incoming::Text(t) => {
                let e: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("error"), Some("bad_frame")), "{e}");
                reports += 1;
            }
            Incoming::Binary(b) => break b,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(echoed, test_frame(7, FRAME));
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!((1..=allowed).contains(&reports), "{reports} reports of 3 refused chunks");
    bystander.send_binary(&test_frame(1, FRAME)).await.unwrap();
    assert_eq!(next_binary(&mut bystander, PATIENCE).await.unwrap(), test_frame(1, FRAME));
    // Over the listener's message limit (4096 bytes): the connection is closed with 1009.
    c.send_binary(&vec![0u8; 5000]).await.unwrap();
    assert_eq!(c.recv_close().await.unwrap().0, 1009);
    bystander.send_binary(&test_frame(2, FRAME)).await.unwrap();
    assert_eq!(next_binary(&mut bystander, PATIENCE).await.unwrap(), test_frame(2, FRAME));
    bystander.send_json(&json!({"event": "hangup"})).await.unwrap();
    assert_eq!(bystander.recv_close().await.unwrap().0, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_recorded_to_a_wav_file_when_config_asks() {
    let dir = tempdir::TempDir::new("gatewayd-rec");
    let media = format!("recordings_dir = \"{}\"\nrecord_calls = true", dir.path().display());
    let ivr = Ivr::start(QUIET, "", &media).await;
    let mut c = ivr.call("/").await;
    let frames: Vec<Vec<u8>> = (0..10).map(|n| test_frame(n, FRAME)).collect();
    for f in &frames {
        c.send_binary(f).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in &frames {
        next_binary(&mut c, PATIENCE).await.expect("echo");
    }
    c.send_json(&json!({"event": "hangup"})).await.unwrap();
    assert_eq!(c.recv_close().await.unwrap().0, 1000);
    // One 20 ms block per slot: both directions hold the caller's frames in order (in as
    // received, out as echoed), with silent blocks where a slot had nothing.
    let audible = |ch: &[u8]| -> Vec<Vec<u8>> {
        ch.chunks(FRAME).filter(|b| b.iter().any(|&x| x != 0)).map(<[u8]>::to_vec).collect()
    };
    // The recording is finalised after the hangup: wait (generously) for the complete file.
    let waited = Instant::now();
    let (left, right) = loop {
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(files.len() <= 1, "{files:?}");
        let recorded = files.first().and_then(|f| hound::WavReader::open(f).ok()).map(|mut r| {
            assert_eq!((r.spec().channels, r.spec().sample_rate, r.spec().bits_per_sample), (2, 8000, 16));
            let samples: Vec<i16> = r.samples::<i16>().filter_map(Result::ok).collect();
            let left: Vec<u8> = samples.chunks(2).flat_map(|s| s[0].to_le_bytes()).collect();
            let right: Vec<u8> = samples.chunks(2).flat_map(|s| s[1].to_le_bytes()).collect();
            (left, right)
        });
        match recorded {
            Some((l, r)) if audible(&r).len() >= frames.len() || waited.elapsed() > PATIENCE => break (l, r),
            _ => {}
        }
        assert!(waited.elapsed() < PATIENCE, "no complete recording in {PATIENCE:?}: {files:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(audible(&left), frames, "caller audio recorded");
    assert_eq!(audible(&right), frames, "echo recorded");
}
