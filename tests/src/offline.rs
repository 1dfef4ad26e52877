//! The offline recogniser two ways on the same phone-line audio (issue #12): the Wasm component
//! (`build/plugins/stt-pocketsphinx.wasm`) run by the daemon's own speech code
//! ([`gatewayd::speech::SttStream`], as a call's transcription runs), and the same engine
//! compiled natively (the `gatewayd-stt-pocketsphinx` crate as a library), fed exactly as the
//! host feeds the component: mu-law 8000 Hz frames converted to 16 kHz PCM by the host's
//! converter, 200 ms batches, the rest padded with silence to 100 ms at the end, then `close`.
//!
//! Both decode each stream with a decoder of its own, fresh from the model files: the host gives
//! every stream an instance of its own (its models loaded by a warm-up session), and
//! [`native_finals`] decodes on a thread of its own, as the plugin keeps one decoder per thread
//! (per instance). The same C sources then give the same hypotheses in both builds, on the open
//! vocabulary as with a grammar, and the tests assert it. A decoder is not reset between streams:
//! PocketSphinx carries state from one utterance to the next (the noise removal statistics the
//! en-us model turns on, and HMM state that makes the first frame score other senones), so a
//! decoder that had already decoded other audio would hear the same audio slightly differently
//! (on the open vocabulary, another hypothesis for 13 of the 20 sentences).

use gatewayd::media::codec::linear_to_ulaw;
use gatewayd::speech::convert::{FromCall, ToCall};
use gatewayd::speech::stt::SttOptions;
use gatewayd::speech::{
    AudioEncoding, AudioFormat, Limits, Provider, SpeechEngine, SttInput, SttStream, SttStreamEvent,
};
use gatewayd_plugin::speech::SttProvider as _;
use gatewayd_stt_pocketsphinx::PocketSphinx;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The PocketSphinx source distribution's `test/data` (recordings of people with their reference
/// texts), as `scripts/speech/pocketsphinx.sh` unpacks it: `POCKETSPHINX_SRC`, else
/// `$GATEWAYD_SPEECH_CACHE/pocketsphinx-5.1.1` (default cache `/var/cache/gatewayd-ci/speech`).
/// Panics, saying to run `make setup`, when it is missing.
pub fn test_data() -> std::path::PathBuf {
    let src = std::env::var_os("POCKETSPHINX_SRC").map(std::path::PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("GATEWAYD_SPEECH_CACHE").unwrap_or_else(|| "/var/cache/gatewayd-ci/speech".into());
        std::path::PathBuf::from(cache).join("pocketsphinx-5.1.1")
    });
    let data = src.join("test/data");
    assert!(data.join("goforward.raw").is_file(), "{} is missing: run `make setup`", data.display());
    data
}

/// Bytes of one 20 ms mu-law frame at 8000 Hz.
pub const FRAME: usize = 160;

fn pcm(rate: u32) -> AudioFormat {
    AudioFormat { encoding: AudioEncoding::PcmS16le, sample_rate: rate, channels: 1 }
}

/// `samples` (16-bit PCM at `rate`) as a phone line carries them: resampled to 8000 Hz by the
/// host's converter and encoded as G.711 mu-law.
pub fn phone_line(samples: &[i16], rate: u32) -> Vec<u8> {
    let mut convert = ToCall::new(&pcm(rate)).expect("a supported rate");
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut out = Vec::new();
    convert.push(&bytes, &mut out);
    convert.finish(&mut out);
    out.into_iter().map(linear_to_ulaw).collect()
}

/// The recogniser's limits as `config/gatewayd.toml` sets them.
fn limits() -> Limits {
    Limits::from_config(&gatewayd::config::PluginLimits {
        event_timeout_ms: 1000,
        memory_mb: 512,
        max_instances: 64,
        load_timeout_ms: 30_000,
    })
}

/// The Wasm provider, loaded once per test process with the default config and its model.
async fn wasm_provider() -> Arc<Provider> {
    static ENGINE: OnceLock<SpeechEngine> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| SpeechEngine::new().expect("speech engine"));
    let caps = gatewayd::config::Capabilities {
        data_dir: Some(crate::speech_providers::model_dir("pocketsphinx")),
        ..Default::default()
    };
    let tls = gatewayd::net::tls::client_config(false, None).expect("TLS config");
    let file = crate::plugin_file("stt-pocketsphinx");
    Arc::new(
        Provider::load(engine, "pocketsphinx", &file, "{}", &caps, limits(), tls).await.expect("load the provider"),
    )
}

/// The finals of `mulaw` (8000 Hz) as the Wasm component recognises it through the host's
/// stream, with `keyterms` (none: the open vocabulary).
pub async fn wasm_finals(mulaw: &[u8], keyterms: &[String]) -> Vec<String> {
    let provider = wasm_provider().await;
    let (input_tx, input_rx) = tokio::sync::mpsc::channel(16);
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel(1024);
    let options = SttOptions {
        language: None,
        model: None,
        interim_results: false,
        endpointing_ms: None,
        utterance_end_ms: None,
        keyterms: keyterms.to_vec(),
        extra: Vec::new(),
    };
    let _stream = SttStream::start(&provider, options, input_rx, events_tx);
    let frames: Vec<Vec<u8>> = mulaw.chunks(FRAME).map(<[u8]>::to_vec).collect();
    let feeder = tokio::spawn(async move {
        for frame in frames {
            input_tx.send(SttInput::Audio(frame.into())).await.expect("the stream takes audio");
        }
        input_tx.send(SttInput::Close).await.expect("the stream takes close");
    });
    let mut finals = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), events_rx.recv())
            .await
            .expect("a recognition event within 120 s")
            .expect("the stream ended with Ended or Failed");
        match event {
            SttStreamEvent::Event(gatewayd::speech::stt::SttEvent::Final(t)) if !t.text.is_empty() => {
                finals.push(t.text)
            }
            SttStreamEvent::Failed(f) => panic!("the Wasm recogniser failed: {f}"),
            SttStreamEvent::Ended => break,
            _ => {}
        }
    }
    feeder.await.expect("feeder");
    finals
}

/// The finals of `mulaw` (8000 Hz) as the same engine compiled natively recognises it, fed as
/// the host feeds the component, with `keyterms` (none: the open vocabulary). Decodes on a
/// thread of its own, whose decoder is loaded afresh (see the module doc); a panic there is
/// this function's.
pub fn native_finals(mulaw: &[u8], keyterms: &[String]) -> Vec<String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| native_finals_on_this_thread(mulaw, keyterms))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`native_finals`] with this thread's decoder (loaded by the first call on the thread).
fn native_finals_on_this_thread(mulaw: &[u8], keyterms: &[String]) -> Vec<String> {
    use gatewayd_plugin::speech::stt::{SttCommand, SttEvent, SttOptions};
    let config = gatewayd_stt_pocketsphinx::config::Config {
        data_dir: crate::speech_providers::model_dir("pocketsphinx").display().to_string(),
        ..Default::default()
    };
    // As the host's warm instance: a session made and planned once, then dropped.
    let mut warm =
        PocketSphinx::with_config(Ok(config.clone()), SttOptions::default(), vec![gatewayd_stt_pocketsphinx::FORMAT]);
    warm.plan().expect("plan");
    drop(warm);
    assert_eq!(gatewayd_stt_pocketsphinx::engine::loads(), 1, "the native decoder is fresh, as a new instance's");
    let options = SttOptions { keyterms: keyterms.to_vec(), ..SttOptions::default() };
    let mut ps = PocketSphinx::with_config(Ok(config), options, vec![gatewayd_stt_pocketsphinx::FORMAT]);
    ps.plan().expect("plan");
    let mut convert = FromCall::new(&pcm(16_000)).expect("16 kHz");
    let (mut samples, mut bytes, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for frame in mulaw.chunks(FRAME) {
        bytes.clear();
        convert.push(frame, &mut bytes);
        samples.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
        while samples.len() >= 3200 {
            let rest = samples.split_off(3200);
            events.extend(ps.push_audio(std::mem::replace(&mut samples, rest)).expect("push_audio"));
        }
    }
    if !samples.is_empty() {
        samples.resize(samples.len().max(1600), 0);
        events.extend(ps.push_audio(samples).expect("push_audio"));
    }
    events.extend(ps.command(SttCommand::Close).events);
    events
        .into_iter()
        .filter_map(|e| match e {
            SttEvent::Final(t) if !t.text.is_empty() => Some(t.text),
            _ => None,
        })
        .collect()
}
