//! Speech on calls, end to end (issue #11): the real daemon, the real provider plugins
//! (`stt-deepgram`, `tts-elevenlabs`, `tts-openai`), the fault-test plugin steering a call on
//! a media route (G.711 mu-law, 8000 Hz) with `media.transcribe` / `say` / `clear`, and the
//! loopback fake vendors of `tests/fake-vendors` over TLS with a test CA.
//!
//! What the caller sends must reach the fake STT vendor byte for byte (the route's mu-law is
//! what Deepgram is asked for: no transcoding), its transcripts must reach the plugin in order,
//! TTS audio must reach the caller paced at 50 frames/s even when the vendor sends it all at
//! once, `clear` must stop it within a frame and cancel the vendor request, vendor failures
//! must reach the plugin as `stt_error` / `tts_error`, a host outside the allowlist is refused,
//! a provider swapped by hot reload leaves a running stream alone, and no API key is logged.

use gatewayd_e2e::speech_providers::{fakes, providers};
use gatewayd_e2e::{Client, Daemon, DaemonOptions, Incoming, PATIENCE, metric};
use gatewayd_fake_vendors::deepgram::{DeepgramFake, DeepgramScript};
use gatewayd_fake_vendors::tts::{TtsFake, TtsScript, TtsVendor};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Bytes of one 20 ms mu-law frame at 8000 Hz.
const FRAME: usize = 160;
/// Mu-law silence.
const SILENCE: u8 = 0xFF;

/// A daemon with a media route `/ws/call/` served by fault-test and three providers pointed
/// at the fakes: `deepgram`, `elevenlabs` (the `[speech]` defaults) and `openai`;
/// `deepgram_config` is added to the Deepgram provider's config table.
async fn daemon(dg: &DeepgramFake, eleven: &TtsFake, openai: &TtsFake, deepgram_config: &str) -> Daemon {
    let providers = providers(dg, eleven, openai, deepgram_config);
    let extra = format!(
        r#"
[[routes]]
listener = "main"
path = "/ws/call/"
kind = "websocket"
plugin = "fault-test"
auth = "none"
media = {{ codec = "pcmu", rate = 8000 }}

[[routes]]
listener = "main"
path = "/ws/call-l16/"
kind = "websocket"
plugin = "fault-test"
auth = "none"
media = {{ codec = "l16", rate = 8000 }}
{}"#,
        providers.toml
    );
    let d = Daemon::start(DaemonOptions { extra_toml: extra, env: providers.env.clone(), ..Default::default() })
        .await
        .expect("daemon");
    // The CA file must outlive the daemon's start only (it is read at start and on reload).
    std::mem::forget(providers.ca_dir);
    d
}

/// A call: connected to `/ws/call/` and answered.
struct Call {
    client: Client,
    /// Binary frames received from the daemon, with their arrival time.
    heard: Vec<(Instant, Vec<u8>)>,
    /// Speech events received while waiting for something else, in order.
    speech: std::collections::VecDeque<Value>,
}

impl Call {
    async fn answer(d: &Daemon) -> Call {
        Call::answer_on(d, "/ws/call/").await
    }

    async fn answer_on(d: &Daemon, path: &str) -> Call {
        let client = Client::connect(&d.ws_url(path)).await.expect("connect");
        let mut call = Call { client, heard: Vec::new(), speech: Default::default() };
        call.command("answer", "answered").await;
        call
    }

    /// The next text message, speech events included; binary frames meanwhile are kept in
    /// `heard`.
    async fn any_text(&mut self) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.recv_within(left).await.expect("a message") {
                Incoming::Text(t) => return t,
                Incoming::Binary(b) => self.heard.push((Instant::now(), b)),
                Incoming::Closed(code, reason) => panic!("call closed: {code} {reason}"),
            }
        }
    }

    /// The next text message that is not a speech event (those are kept for [`Call::speech`]).
    async fn text(&mut self) -> String {
        loop {
            let text = self.any_text().await;
            match text.strip_prefix("speech:") {
                Some(json) => self.speech.push_back(serde_json::from_str(json).expect("speech JSON")),
                None => return text,
            }
        }
    }

    /// Send `command` and expect `reply` (other texts meanwhile are a failure).
    async fn command(&mut self, command: &str, reply: &str) {
        self.client.send_text(command).await.expect("send");
        let got = self.text().await;
        assert_eq!(got, reply, "reply to `{command}`");
    }

    /// The next speech event (other texts are a failure).
    async fn speech(&mut self) -> Value {
        if let Some(e) = self.speech.pop_front() {
            return e;
        }
        let text = self.any_text().await;
        let json = text.strip_prefix("speech:").unwrap_or_else(|| panic!("expected a speech event, got {text}"));
        serde_json::from_str(json).expect("speech JSON")
    }

    /// Speech events until (and with) the first whose `event` is `last`.
    async fn speech_until(&mut self, last: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let e = self.speech().await;
            let done = e["event"] == last;
            events.push(e);
            if done {
                return events;
            }
        }
    }

    /// Send `frames` frames of `byte` (or of speech when `None`), one per 20 ms.
    async fn send_frames(&mut self, frames: usize, byte: Option<u8>, sent: &mut Vec<u8>) {
        let mut next = tokio::time::Instant::now();
        for n in 0..frames {
            let frame: Vec<u8> = match byte {
                Some(b) => vec![b; FRAME],
                // Non-silent mu-law, never 0xFF or 0x7F, varying per frame.
                None => (0..FRAME).map(|i| 0x10 + ((i + n * 7) % 64) as u8).collect(),
            };
            self.client.send_binary(&frame).await.expect("send audio");
            sent.extend_from_slice(&frame);
            next += Duration::from_millis(20);
            tokio::time::sleep_until(next).await;
        }
    }

    /// All audio heard so far, concatenated.
    fn heard_bytes(&self) -> Vec<u8> {
        self.heard.iter().flat_map(|(_, b)| b.iter().copied()).collect()
    }
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The finals' texts (non-empty) of `events`, in order, after checking every transcript is
/// well formed.
fn finals(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "transcript" && e["is_final"] == true)
        .map(|e| e["text"].as_str().unwrap().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn assert_no_key_logged(d: &Daemon) {
    gatewayd_e2e::speech_providers::assert_no_key_logged(&d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_audio_reaches_the_stt_vendor_and_transcripts_come_back_in_order() {
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), TtsScript::default()).await;
    let d = daemon(&dg, &eleven, &openai, "").await;
    let mut call = Call::answer(&d).await;
    call.command("transcribe", "transcribing").await;
    let mut sent = Vec::new();
    for _ in 0..2 {
        call.send_frames(25, None, &mut sent).await; // 500 ms of speech
        call.send_frames(25, Some(SILENCE), &mut sent).await; // 500 ms of silence ends it
    }
    call.command("stop-transcribing", "stop:true").await;
    let events = call.speech_until("stopped").await;

    // The vendor got the caller's audio, untouched (mu-law 8000 Hz asked for), then CloseStream.
    let record =
        dg.wait_until("CloseStream after the audio", |r| r.texts.iter().any(|t| t.contains("CloseStream"))).await;
    assert_eq!(record.accepted, 1, "one connection");
    assert_eq!(record.audio.len(), sent.len(), "every caller byte reached the vendor");
    assert!(record.audio == sent, "the vendor received exactly the caller's audio");
    let target = &record.targets[0];
    assert!(target.contains("encoding=mulaw") && target.contains("sample_rate=8000"), "{target}");
    assert!(target.contains("interim_results=true"), "{target}");

    // Transcripts in order: speech started, interims then the final of utterance 1, its end,
    // the same for utterance 2, and `stopped` last.
    assert_eq!(finals(&events), ["utterance 1", "utterance 2"], "{events:?}");
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let first_final = events.iter().position(|e| e["is_final"] == true).unwrap();
    assert_eq!(kinds[0], "speech_started", "{kinds:?}");
    assert!(
        events[..first_final].iter().any(|e| e["event"] == "transcript" && e["is_final"] == false),
        "an interim came first: {events:?}"
    );
    assert!(events[first_final]["speech_final"] == true, "{events:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "utterance_end").count(), 2, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"stopped"));
    for e in events.iter().filter(|e| e["event"] == "transcript" && e["is_final"] == false) {
        assert!(e["text"].as_str().unwrap().starts_with("utterance "), "{e}");
    }

    // Transcription can start again after it stopped; the health metrics saw one stream.
    call.command("stop-transcribing", "stop:false").await;
    assert_eq!(metric(&d, "gatewayd_speech_streams_total{provider=\"deepgram\",kind=\"stt\"}").await, 1.0);
    gatewayd_e2e::wait_for(|| async { metric(&d, "gatewayd_speech_streams_open{provider=\"deepgram\"}").await == 0.0 })
        .await;
    assert_eq!(metric(&d, "gatewayd_speech_dropped_audio_bytes_total").await, 0.0);
    assert_no_key_logged(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_audio_is_paced_at_50_frames_a_second_and_its_mark_follows() {
    // The vendor sends the whole utterance at once: the daemon, not the vendor, paces it.
    let tts = TtsScript { chunks: 20, cadence: Duration::ZERO, ..Default::default() };
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), tts).await;
    let d = daemon(&dg, &eleven, &openai, "").await;
    let mut call = Call::answer(&d).await;
    call.command("say:said:Hello, how can I help?", "saying").await;
    assert_eq!(call.text().await, "mark:said");

    // What ElevenLabs sent (mu-law 8000 Hz, a phone call's own format) is what the caller
    // heard, byte for byte, after the frames that came before it.
    let payload = TtsVendor::ElevenLabs.payload(20);
    let heard = call.heard_bytes();
    let start = find(&heard, &payload).expect("the vendor's audio reached the caller unchanged");
    // Paced: the 50 frames of the payload (1 s of audio) were spread over about a second,
    // not sent in a burst. Lenient bounds: a busy machine delays frames, never speeds them up.
    let first = start / FRAME;
    let last = (start + payload.len() - 1) / FRAME;
    let span = call.heard[last].0 - call.heard[first].0;
    assert_eq!(last - first + 1, 50, "1 s of audio in 20 ms frames");
    assert!(span >= Duration::from_millis(700), "50 frames arrived within {span:?}: not paced");

    let record = eleven.recorded();
    assert_eq!(record.requests.len(), 1);
    let request = &record.requests[0];
    assert!(
        request.target.starts_with("/v1/text-to-speech/test-voice/stream?output_format=ulaw_8000"),
        "{}",
        request.target
    );
    assert!(request.body.contains("Hello, how can I help?"), "{}", request.body);
    assert_eq!(record.completed, 1);

    // Two sentences queued at once play one after the other, never mixed, with no gap: the
    // caller hears the vendor's audio twice in a row, byte for byte (the second was fetched
    // while the first played). Both requests reuse the kept-alive connection: no new TCP and
    // TLS handshake.
    let before = call.heard.len();
    call.command("say:one:And another thing.", "saying").await;
    call.command("say:two:And one more.", "saying").await;
    assert_eq!(call.text().await, "mark:one");
    assert_eq!(call.text().await, "mark:two");
    let heard: Vec<u8> = call.heard[before..].iter().flat_map(|(_, f)| f.iter().copied()).collect();
    let twice = [payload.clone(), payload.clone()].concat();
    assert!(find(&heard, &twice).is_some(), "the two utterances were heard back to back, unmixed");
    let record = eleven.recorded();
    assert_eq!(record.requests.len(), 3);
    assert!(record.requests.iter().all(|r| r.peer == record.requests[0].peer), "one connection for all three");
    assert_eq!(record.completed, 3);

    // The same through OpenAI (PCM 24000 Hz, resampled to the call's 8000 Hz): audio arrives
    // and the mark follows.
    let before = call.heard.len();
    call.command("say-with:openai:said-openai:Goodbye.", "saying").await;
    assert_eq!(call.text().await, "mark:said-openai");
    let loud = call.heard[before..].iter().filter(|(_, f)| f.iter().any(|&b| b != SILENCE && b != 0x7F)).count();
    assert!(loud >= 45, "about 1 s of OpenAI audio reached the caller, got {loud} frames");
    assert!(openai.recorded().requests[0].body.contains("\"voice\":\"alloy\""), "the default voice");
    assert_eq!(metric(&d, "gatewayd_speech_streams_total{provider=\"elevenlabs\",kind=\"tts\"}").await, 3.0);
    assert_no_key_logged(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_stops_tts_within_a_frame_and_cancels_the_vendor_request() {
    let tts = TtsScript { chunks: 400, ..Default::default() }; // 20 s at real time
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), tts).await;
    let d = daemon(&dg, &eleven, &openai, "").await;
    let mut call = Call::answer(&d).await;
    let payload = TtsVendor::ElevenLabs.payload(400);
    call.command("say:long:a long answer", "saying").await;
    call.command("say:next:queued behind it", "saying").await;
    // Wait until the caller hears the utterance.
    let probe = &payload[..FRAME * 5];
    while find(&call.heard_bytes(), probe).is_none() {
        match call.client.recv_within(PATIENCE).await.expect("audio") {
            Incoming::Binary(b) => call.heard.push((Instant::now(), b)),
            other => panic!("unexpected {other:?}"),
        }
    }
    call.command("clear", "cleared").await;
    let at_clear = call.heard.len();
    // Frames already on their way may still arrive; after them, only silence (or nothing).
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        match call.client.recv_within(Duration::from_millis(100)).await {
            Ok(Incoming::Binary(b)) => call.heard.push((Instant::now(), b)),
            Ok(other) => panic!("after clear: unexpected {other:?} (no mark of a cleared utterance)"),
            Err(_) => {}
        }
    }
    let loud_after: Vec<usize> =
        (at_clear..call.heard.len()).filter(|&i| call.heard[i].1.iter().any(|&b| b != SILENCE && b != 0x7F)).collect();
    assert!(loud_after.len() <= 1, "audio went on after clear: {} loud frames", loud_after.len());
    eleven.wait_until("the request cancelled at the vendor", |r| r.cancelled == 1).await;
    assert_eq!(eleven.recorded().requests.len(), 1, "the queued utterance was dropped too");
    // The call goes on: a new utterance plays and is marked, on a new connection (the
    // cancelled request's was closed, never reused).
    call.command("say:after:back again", "saying").await;
    assert_eq!(call.text().await, "mark:after");
    let record = eleven.recorded();
    assert_ne!(record.requests[1].peer, record.requests[0].peer, "a cancelled request's connection is not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_failures_reach_the_plugin_and_the_call_goes_on() {
    // Wrong keys everywhere: 401 at the upgrade / request is fatal at once.
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), TtsScript::default()).await;
    let dg_bad = DeepgramFake::start(DeepgramScript { key: "another-key".into(), ..Default::default() }).await;
    let eleven_bad =
        TtsFake::start(TtsVendor::ElevenLabs, TtsScript { key: "another-key".into(), ..Default::default() }).await;
    let d = daemon(&dg_bad, &eleven_bad, &openai, "").await;
    let mut call = Call::answer(&d).await;
    call.command("transcribe", "transcribing").await;
    let e = call.speech().await;
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("stt_error"), Some("auth")), "{e}");
    assert_eq!(dg_bad.recorded().refused, 1, "refused once, not retried");
    call.command("say:m:hello", "saying").await;
    let e = call.speech().await;
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("tts_error"), Some("auth")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("Invalid API key"), "the vendor's message: {e}");
    assert_eq!(call.text().await, "mark:m", "the mark still follows");
    // Unknown providers and bad requests are refused at once, the call still answers.
    let reply = {
        call.client.send_text("transcribe:nobody").await.unwrap();
        call.text().await
    };
    assert!(reply.starts_with("media-error:") && reply.contains("nobody"), "{reply}");
    let reply = {
        call.client.send_text("say-with:deepgram:m:hi").await.unwrap();
        call.text().await
    };
    assert!(reply.contains("not a text-to-speech provider"), "{reply}");
    assert!(metric(&d, "gatewayd_speech_errors_total{provider=\"deepgram\",code=\"auth\"}").await >= 1.0);
    assert_no_key_logged(&d);
    drop((dg, eleven));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_outside_the_allowlist_is_refused_before_connecting() {
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), TtsScript::default()).await;
    // The provider is told to connect to port 1 of loopback, which its allowlist lacks.
    let d = daemon(&dg, &eleven, &openai, "").await;
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    let moved = config.replace(&format!("base_url = \"{}\"", dg.base_url()), "base_url = \"wss://127.0.0.1:1\"");
    std::fs::write(&d.config_path, moved).unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &d.pid().to_string()]).status();
    gatewayd_e2e::wait_for(|| async {
        metric(&d, "gatewayd_plugin_reloads_total{plugin=\"deepgram\",result=\"ok\"}").await >= 1.0
    })
    .await;
    let mut call = Call::answer(&d).await;
    call.command("transcribe", "transcribing").await;
    let e = call.speech().await;
    assert_eq!(e["event"], "stt_error", "{e}");
    assert_eq!(e["code"], "config", "{e}");
    assert!(e["message"].as_str().unwrap().contains("not in the plugin's `connect` allowlist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stt_stream_reconnects_and_replays_the_audio_buffered_meanwhile() {
    let script = DeepgramScript { drop_after_bytes: Some(FRAME * 30), ..Default::default() };
    let (dg, eleven, openai) = fakes(script, TtsScript::default()).await;
    let d = daemon(&dg, &eleven, &openai, "").await;
    let mut call = Call::answer(&d).await;
    call.command("transcribe", "transcribing").await;
    let mut sent = Vec::new();
    call.send_frames(25, None, &mut sent).await;
    call.send_frames(25, Some(SILENCE), &mut sent).await;
    call.send_frames(25, None, &mut sent).await;
    call.send_frames(25, Some(SILENCE), &mut sent).await;
    call.command("stop-transcribing", "stop:true").await;
    let events = call.speech_until("stopped").await;
    let record = dg.wait_until("CloseStream", |r| r.texts.iter().any(|t| t.contains("CloseStream"))).await;
    assert_eq!(record.accepted, 2, "dropped once, reconnected once");
    // Nothing lost: what the first connection got before the drop and what the second got
    // (replayed buffer first) together are the caller's audio. The first connection may have
    // had bytes in flight when it dropped; those are lost with it.
    let first = record.audio_per_connection[0];
    assert!(first >= FRAME * 30, "{first}");
    let tail = &record.audio[first..];
    assert!(sent.ends_with(tail), "the second connection got the rest, in order");
    assert!(tail.len() + FRAME * 25 >= sent.len() - first, "only what was in flight at the drop is lost");
    assert!(!finals(&events).is_empty(), "transcripts still came: {events:?}");
    assert!(metric(&d, "gatewayd_speech_reconnects_total{provider=\"deepgram\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_that_accepts_then_closes_at_once_is_given_up_after_three_times() {
    let script = DeepgramScript { quick_closes: 10, ..Default::default() };
    let (dg, eleven, openai) = fakes(script, TtsScript::default()).await;
    let d = daemon(&dg, &eleven, &openai, "").await;
    let mut call = Call::answer(&d).await;
    call.command("transcribe", "transcribing").await;
    let e = call.speech().await;
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("stt_error"), Some("gave_up")), "{e}");
    assert_eq!(dg.recorded().accepted, 3);
    // The call itself is fine.
    call.command("say:ok:still here", "saying").await;
    assert_eq!(call.text().await, "mark:ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_swapped_by_hot_reload_leaves_a_running_stream_alone() {
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), TtsScript::default()).await;
    let d = daemon(&dg, &eleven, &openai, "model = \"nova-2\"").await;
    let mut call = Call::answer(&d).await;
    call.command("transcribe", "transcribing").await;
    let mut sent = Vec::new();
    call.send_frames(25, None, &mut sent).await;
    // A new version of the provider (its config changed) while the caller speaks.
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(&d.config_path, config.replace("model = \"nova-2\"", "model = \"nova-3\"")).unwrap();
    let _ = std::process::Command::new("kill").args(["-HUP", &d.pid().to_string()]).status();
    gatewayd_e2e::wait_for(|| async {
        metric(&d, "gatewayd_plugin_reloads_total{plugin=\"deepgram\",result=\"ok\"}").await >= 1.0
    })
    .await;
    call.send_frames(25, Some(SILENCE), &mut sent).await;
    call.command("stop-transcribing", "stop:true").await;
    let events = call.speech_until("stopped").await;
    assert_eq!(finals(&events), ["utterance 1"], "{events:?}");
    let record = dg.wait_until("CloseStream", |r| r.texts.iter().any(|t| t.contains("CloseStream"))).await;
    assert_eq!(record.accepted, 1, "the stream went on on its connection");
    assert!(record.audio == sent, "and lost nothing");
    assert!(record.targets[0].contains("model=nova-2"), "{}", record.targets[0]);
    // The next stream uses the new version.
    call.command("transcribe", "transcribing").await;
    dg.wait_until("a second connection", |r| r.accepted == 2).await;
    assert!(dg.recorded().targets[1].contains("model=nova-3"), "{}", dg.recorded().targets[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l16_call_reaches_the_stt_vendor_as_mu_law() {
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), TtsScript::default()).await;
    let d = daemon(&dg, &eleven, &openai, "").await;
    let mut call = Call::answer_on(&d, "/ws/call-l16/").await;
    call.command("transcribe", "transcribing").await;
    // 1 s of a 440 Hz tone as 16-bit little-endian PCM at 8000 Hz, then 0.5 s of silence.
    let samples: Vec<i16> =
        (0..12_000).map(|i| if i < 8000 { ((i as f64 * 0.3456).sin() * 8000.0) as i16 } else { 0 }).collect();
    let mut next = tokio::time::Instant::now();
    for frame in samples.chunks(160) {
        let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        call.client.send_binary(&bytes).await.unwrap();
        next += Duration::from_millis(20);
        tokio::time::sleep_until(next).await;
    }
    call.command("stop-transcribing", "stop:true").await;
    let events = call.speech_until("stopped").await;
    let record = dg.wait_until("CloseStream", |r| r.texts.iter().any(|t| t.contains("CloseStream"))).await;
    // The declared transcoding: each sample encoded to G.711 mu-law, 8000 Hz (no resampling).
    let expected: Vec<u8> = samples.iter().map(|&s| g711_ulaw(s)).collect();
    assert_eq!(record.audio.len(), expected.len(), "every caller sample reached the vendor");
    assert!(record.audio == expected, "the vendor received the caller's audio as mu-law");
    assert!(record.targets[0].contains("encoding=mulaw"), "{}", record.targets[0]);
    assert_eq!(finals(&events), ["utterance 1"], "{events:?}");
}

/// G.711 mu-law encoding of a 16-bit sample (ITU-T G.711, the classic Sun reference
/// algorithm: bias 0x84, clip 32635), written here apart from the daemon's codec.
fn g711_ulaw(sample: i16) -> u8 {
    let mut x = sample as i32;
    let sign = if x < 0 { 0x80 } else { 0 };
    if x < 0 {
        x = -x;
    }
    x = x.min(32635) + 0x84;
    let exponent = (0..8).rev().find(|e| x & (0x4000 >> (7 - e)) != 0).unwrap_or(0);
    let mantissa = (x >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}
