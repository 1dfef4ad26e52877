//! `SttStream` with the Deepgram provider against the fake Deepgram.

use super::*;
use crate::speech::stt::{SttEvent, SttOptions};
use crate::speech::{SttInput, SttStream, SttStreamEvent};
use bytes::Bytes;
use gatewayd_fake_vendors::deepgram::{DeepgramFake, DeepgramScript};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

const FRAME: usize = 160;

/// `n` frames of "speech" (non-silent mu-law, distinct bytes) starting at `seed`.
fn speech(n: usize, seed: u8) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            Bytes::from((0..FRAME).map(|j| 0x10 + ((seed as usize + i * 7 + j) % 0x60) as u8).collect::<Vec<u8>>())
        })
        .collect()
}

/// `n` frames of mu-law silence.
fn silence(n: usize) -> Vec<Bytes> {
    vec![Bytes::from_static(&[0xFF; FRAME]); n]
}

fn options() -> SttOptions {
    SttOptions {
        language: None,
        model: None,
        interim_results: true,
        endpointing_ms: Some(300),
        utterance_end_ms: Some(1000),
        keyterms: vec![],
        extra: vec![],
    }
}

async fn deepgram(fake: &DeepgramFake, key: &str, config: serde_json::Value) -> Arc<Provider> {
    let mut c = serde_json::json!({ "base_url": fake.base_url() });
    c.as_object_mut().unwrap().extend(config.as_object().unwrap().clone());
    provider("stt-deepgram", "gatewayd_stt_deepgram.wasm", "gatewayd-stt-deepgram", c, fake.addr, key, &fake.ca_pem)
        .await
}

struct Running {
    stream: SttStream,
    input: mpsc::Sender<SttInput>,
    events: mpsc::Receiver<SttStreamEvent>,
}

fn start(provider: &Arc<Provider>) -> Running {
    let (input, input_rx) = mpsc::channel(256);
    let (events_tx, events) = mpsc::channel(256);
    let stream = SttStream::start(provider, options(), input_rx, events_tx);
    Running { stream, input, events }
}

impl Running {
    async fn send(&self, frames: &[Bytes]) {
        for f in frames {
            self.input.send(SttInput::Audio(f.clone())).await.unwrap();
        }
    }

    /// Events up to and including the last one (`Ended` or `Failed`).
    async fn until_end(&mut self) -> Vec<SttStreamEvent> {
        let mut all = Vec::new();
        loop {
            let e = next(&mut self.events, "the stream's end").await;
            let last = matches!(e, SttStreamEvent::Ended | SttStreamEvent::Failed(_));
            all.push(e);
            if last {
                return all;
            }
        }
    }

    /// The next event that is not a recognition event.
    async fn next_non_event(&mut self, what: &str) -> SttStreamEvent {
        loop {
            match next(&mut self.events, what).await {
                SttStreamEvent::Event(_) => {}
                other => return other,
            }
        }
    }

    async fn expect_connected(&mut self, attempt: u32) {
        match next(&mut self.events, "connected").await {
            SttStreamEvent::Connected { attempt: a } => assert_eq!(a, attempt),
            other => panic!("expected Connected {{ attempt: {attempt} }}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn audio_reaches_the_vendor_byte_exact_and_transcripts_arrive_in_order() {
    let fake = DeepgramFake::start(DeepgramScript::default()).await;
    let provider = deepgram(&fake, KEY, serde_json::json!({})).await;
    let mut s = start(&provider);
    s.expect_connected(1).await;
    let frames: Vec<Bytes> = [speech(30, 1), silence(20), speech(30, 2), silence(20)].concat();
    s.send(&frames).await;
    s.input.send(SttInput::Close).await.unwrap();
    let events = s.until_end().await;
    assert_eq!(events.last(), Some(&SttStreamEvent::Ended), "{events:?}");

    let sent: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let rec = fake.recorded();
    assert_eq!(rec.audio.len(), sent.len());
    assert!(rec.audio == sent, "the vendor's audio differs from the call's");
    assert!(rec.targets[0].contains("encoding=mulaw&sample_rate=8000"), "{}", rec.targets[0]);
    assert_eq!(rec.texts.last().map(String::as_str), Some(r#"{"type":"CloseStream"}"#));

    // Per utterance: speech started, interims, then one final with speech_final, then the
    // utterance end; utterance 1 entirely before utterance 2.
    let mut seen = Vec::new();
    for e in &events {
        match e {
            SttStreamEvent::Event(SttEvent::SpeechStarted(_)) => seen.push("started".to_string()),
            SttStreamEvent::Event(SttEvent::Interim(t)) => seen.push(format!("interim {}", t.text)),
            SttStreamEvent::Event(SttEvent::Final(t)) => {
                assert!(t.speech_final && !t.from_finalize, "{t:?}");
                seen.push(format!("final {}", t.text))
            }
            SttStreamEvent::Event(SttEvent::UtteranceEnd(_)) => seen.push("end".into()),
            _ => {}
        }
    }
    seen.dedup();
    assert_eq!(
        seen,
        [
            "started",
            "interim utterance 1",
            "final utterance 1",
            "end",
            "started",
            "interim utterance 2",
            "final utterance 2",
            "end"
        ],
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, SttStreamEvent::Event(SttEvent::Metadata(_)))), "{events:?}");
    assert_eq!(s.stream.stats().audio_sent_bytes.load(Ordering::Relaxed), sent.len() as u64);
}

#[tokio::test]
async fn keepalive_is_sent_while_no_audio_flows() {
    let fake = DeepgramFake::start(DeepgramScript::default()).await;
    let provider = deepgram(&fake, KEY, serde_json::json!({ "keepalive_ms": 1000 })).await;
    let mut s = start(&provider);
    s.expect_connected(1).await;
    let rec = fake.wait_until("a KeepAlive", |r| r.texts.iter().any(|t| t == r#"{"type":"KeepAlive"}"#)).await;
    assert!(rec.audio.is_empty());
    assert!(s.stream.stats().keepalives.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn a_dropped_connection_reconnects_and_replays_the_audio_buffered_meanwhile() {
    let fake = DeepgramFake::start(DeepgramScript { drop_after_bytes: Some(3200), ..Default::default() }).await;
    let provider = deepgram(&fake, KEY, serde_json::json!({})).await;
    let mut s = start(&provider);
    s.expect_connected(1).await;
    // The next upgrade waits until released, so audio sent before then is buffered.
    fake.hold(true);
    let a = speech(20, 3);
    s.send(&a).await;
    match s.next_non_event("reconnecting").await {
        SttStreamEvent::Reconnecting { error, .. } => assert_eq!(error.code, "unavailable", "{error}"),
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    let b = [speech(10, 4), silence(20)].concat();
    s.send(&b).await;
    fake.hold(false);
    assert_eq!(s.next_non_event("connected again").await, SttStreamEvent::Connected { attempt: 2 });
    s.input.send(SttInput::Close).await.unwrap();
    let events = s.until_end().await;
    assert_eq!(events.last(), Some(&SttStreamEvent::Ended), "{events:?}");

    let sent: Vec<u8> = a.iter().chain(&b).flat_map(|f| f.iter().copied()).collect();
    let rec = fake.recorded();
    assert_eq!(rec.audio_per_connection, [3200, 4800]);
    assert!(rec.audio == sent, "the vendor did not receive every byte once, in order");
    let stats = s.stream.stats();
    assert_eq!(stats.replayed_bytes.load(Ordering::Relaxed), 4800);
    assert_eq!(stats.reconnects.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dropped_audio_bytes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_refused_key_is_one_fatal_error_with_the_vendors_message_and_no_retry() {
    let logs = Logs::capture();
    let fake = DeepgramFake::start(DeepgramScript::default()).await;
    let secret = "wrong-deepgram-key-5d1c";
    let provider = deepgram(&fake, secret, serde_json::json!({})).await;
    let mut s = start(&provider);
    let events = s.until_end().await;
    let [SttStreamEvent::Failed(failure)] = events.as_slice() else { panic!("{events:?}") };
    assert_eq!(failure.code, "auth", "{failure}");
    assert!(failure.message.contains("Invalid credentials"), "{failure}");
    let rec = fake.recorded();
    assert_eq!((rec.refused, rec.accepted, rec.targets.len()), (1, 0, 1));
    assert!(!failure.message.contains(secret));
    let logs = logs.text();
    assert!(logs.contains("Invalid credentials"), "the failure was not logged: {logs}");
    assert!(!logs.contains(secret), "the key was logged: {logs}");
}

#[tokio::test]
async fn three_accept_then_close_in_a_row_give_up() {
    let fake = DeepgramFake::start(DeepgramScript { quick_closes: 5, ..Default::default() }).await;
    let provider = deepgram(&fake, KEY, serde_json::json!({})).await;
    let mut s = start(&provider);
    let events = s.until_end().await;
    let connected = events.iter().filter(|e| matches!(e, SttStreamEvent::Connected { .. })).count();
    let reconnecting = events.iter().filter(|e| matches!(e, SttStreamEvent::Reconnecting { .. })).count();
    assert_eq!((connected, reconnecting), (3, 2), "{events:?}");
    let Some(SttStreamEvent::Failed(failure)) = events.last() else { panic!("{events:?}") };
    assert_eq!(failure.code, "gave_up", "{failure}");
    assert!(failure.message.contains("NET-0000"), "{failure}");
    assert_eq!(fake.recorded().accepted, 3);
}
