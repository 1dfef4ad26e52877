//! `TtsRequest` with the ElevenLabs and OpenAI providers against the fake vendors.

use super::*;
use crate::media::codec::ulaw_to_linear;
use crate::speech::tts::TtsOptions;
use crate::speech::{TtsOutput, TtsRequest};
use gatewayd_fake_vendors::tts::{TtsFake, TtsScript, TtsVendor};
use tokio::sync::mpsc;

async fn load(fake: &TtsFake, key: &str) -> Arc<Provider> {
    let config = serde_json::json!({ "base_url": fake.base_url() });
    match fake.vendor {
        TtsVendor::ElevenLabs => {
            provider(
                "tts-elevenlabs",
                "gatewayd_tts_elevenlabs.wasm",
                "gatewayd-tts-elevenlabs",
                config,
                fake.addr,
                key,
                &fake.ca_pem,
            )
            .await
        }
        TtsVendor::OpenAi => {
            provider(
                "tts-openai",
                "gatewayd_tts_openai.wasm",
                "gatewayd-tts-openai",
                config,
                fake.addr,
                key,
                &fake.ca_pem,
            )
            .await
        }
    }
}

fn options(voice: &str) -> TtsOptions {
    TtsOptions { voice: voice.into(), model: None, language: None, speed: None, extra: vec![] }
}

/// All audio, then the last output.
async fn collect(rx: &mut mpsc::Receiver<TtsOutput>) -> (Vec<i16>, TtsOutput) {
    let mut audio = Vec::new();
    loop {
        match next(rx, "the request's end").await {
            TtsOutput::Audio(samples) => audio.extend(samples),
            TtsOutput::Event(_) => {}
            last => return (audio, last),
        }
    }
}

#[tokio::test]
async fn elevenlabs_mulaw_reaches_the_output_decoded() {
    let fake = TtsFake::start(TtsVendor::ElevenLabs, TtsScript::default()).await;
    let provider = load(&fake, KEY).await;
    let (tx, mut rx) = mpsc::channel(64);
    let _request = TtsRequest::start(&provider, options("voice-1"), "Hello there.".into(), tx);
    let (audio, last) = collect(&mut rx).await;
    assert_eq!(last, TtsOutput::Done);
    let expected: Vec<i16> = TtsVendor::ElevenLabs.payload(10).into_iter().map(ulaw_to_linear).collect();
    assert!(audio == expected, "decoded audio differs: {} samples, expected {}", audio.len(), expected.len());
    let rec = fake.wait_until("the response's end", |r| r.completed == 1).await;
    let [request] = rec.requests.as_slice() else { panic!("{:?}", rec.requests.len()) };
    assert!(request.target.starts_with("/v1/text-to-speech/voice-1/stream?"), "{}", request.target);
    assert!(request.target.contains("output_format=ulaw_8000"), "{}", request.target);
    assert!(request.body.contains("Hello there."), "{}", request.body);
}

#[tokio::test]
async fn openai_pcm_24k_is_resampled_to_8k() {
    let fake = TtsFake::start(TtsVendor::OpenAi, TtsScript::default()).await;
    let provider = load(&fake, KEY).await;
    let (tx, mut rx) = mpsc::channel(64);
    let _request = TtsRequest::start(&provider, options("alloy"), "Hello there.".into(), tx);
    let (audio, last) = collect(&mut rx).await;
    assert_eq!(last, TtsOutput::Done);
    // 10 chunks of 50 ms at 24 kHz: 12000 samples in, 4000 out (within one 20 ms frame).
    assert!((3840..=4160).contains(&audio.len()), "{} samples", audio.len());
    let peak = audio[400..3600].iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!((7000..=9000).contains(&peak), "the 400 Hz tone's peak is {peak}");
    let rec = fake.recorded();
    assert!(rec.requests[0].body.contains(r#""response_format":"pcm""#), "{}", rec.requests[0].body);
}

#[tokio::test]
async fn dropping_the_request_closes_the_vendor_request() {
    let fake = TtsFake::start(TtsVendor::ElevenLabs, TtsScript { chunks: 400, ..Default::default() }).await;
    let provider = load(&fake, KEY).await;
    let (tx, mut rx) = mpsc::channel(64);
    let request = TtsRequest::start(&provider, options("voice-1"), "A long story.".into(), tx);
    assert!(matches!(next(&mut rx, "first audio").await, TtsOutput::Audio(_)));
    assert_eq!(fake.recorded().cancelled, 0);
    drop(request);
    let rec = fake.wait_until("the vendor seeing the request cancelled", |r| r.cancelled == 1).await;
    assert_eq!(rec.completed, 0);
    assert_eq!(provider.outbound().open_streams(), 0);
}

#[tokio::test]
async fn a_failure_before_audio_is_retried_once() {
    let fake = TtsFake::start(TtsVendor::ElevenLabs, TtsScript { fail_first: 1, ..Default::default() }).await;
    let provider = load(&fake, KEY).await;
    let (tx, mut rx) = mpsc::channel(64);
    let _request = TtsRequest::start(&provider, options("voice-1"), "Hello.".into(), tx);
    let (audio, last) = collect(&mut rx).await;
    assert_eq!(last, TtsOutput::Done);
    assert_eq!(audio.len(), 4000);
    assert_eq!(fake.recorded().requests.len(), 2);
}

#[tokio::test]
async fn a_break_after_audio_is_an_error_not_a_retry() {
    let fake =
        TtsFake::start(TtsVendor::ElevenLabs, TtsScript { break_after_chunks: Some(3), ..Default::default() }).await;
    let provider = load(&fake, KEY).await;
    let (tx, mut rx) = mpsc::channel(64);
    let _request = TtsRequest::start(&provider, options("voice-1"), "Hello.".into(), tx);
    let (audio, last) = collect(&mut rx).await;
    assert_eq!(audio.len(), 1200, "three chunks of 50 ms");
    let TtsOutput::Failed(failure) = last else { panic!("{last:?}") };
    assert_eq!(failure.code, "unavailable", "{failure}");
    assert_eq!(fake.recorded().requests.len(), 1);
}

#[tokio::test]
async fn a_refused_key_fails_at_once_and_the_key_never_shows() {
    let logs = Logs::capture();
    let fake = TtsFake::start(TtsVendor::OpenAi, TtsScript::default()).await;
    let secret = "sk-wrong-openai-key-93af";
    let provider = load(&fake, secret).await;
    let (tx, mut rx) = mpsc::channel(64);
    let _request = TtsRequest::start(&provider, options("alloy"), "Hello.".into(), tx);
    let (audio, last) = collect(&mut rx).await;
    assert!(audio.is_empty());
    let TtsOutput::Failed(failure) = last else { panic!("{last:?}") };
    assert_eq!(failure.code, "auth", "{failure}");
    // The vendor echoes the key it refused; the host redacts it.
    assert!(failure.message.contains("Incorrect API key provided"), "{failure}");
    assert!(!failure.message.contains(secret), "{failure}");
    assert_eq!(fake.recorded().requests.len(), 1);
    let logs = logs.text();
    assert!(logs.contains("Incorrect API key provided"), "the failure was not logged: {logs}");
    assert!(!logs.contains(secret), "the key was logged: {logs}");
}
