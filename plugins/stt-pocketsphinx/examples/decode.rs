//! The provider natively, as the host drives it: a 16 kHz s16le raw file in 200 ms batches
//! through `push_audio`, events printed, then the model load time and the real-time factor.
//!
//! ```text
//! cargo run --release -p gatewayd-stt-pocketsphinx --example decode -- DATA_DIR FILE.raw [REPEAT] [KEYTERM...]
//! ```
//!
//! `PS_CONFIG` may hold more of the plugin's configuration as JSON (`{"decoder":{"fwdflat":false}}`).

use std::time::Instant;

use gatewayd_plugin::speech::stt::{SttCommand, SttEvent, SttOptions};
use gatewayd_plugin::speech::{AudioFormat, SttProvider};
use gatewayd_stt_pocketsphinx::config::Config;
use gatewayd_stt_pocketsphinx::{FORMAT, PocketSphinx};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, file, rest @ ..] = &args[..] else {
        eprintln!("usage: decode DATA_DIR FILE.raw [REPEAT] [KEYTERM...]");
        std::process::exit(2);
    };
    let repeat: usize = rest.first().map_or(1, |r| r.parse().expect("REPEAT"));
    let keyterms: Vec<String> = rest.iter().skip(1).cloned().collect();
    let bytes = std::fs::read(file).expect("read FILE.raw");
    let samples: Vec<i16> = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut audio = Vec::new();
    for _ in 0..repeat {
        audio.extend_from_slice(&samples);
        audio.extend(std::iter::repeat_n(0i16, 8000));
    }
    let mut config: Config =
        serde_json::from_str(&std::env::var("PS_CONFIG").unwrap_or_else(|_| "{}".into())).expect("PS_CONFIG");
    config.data_dir = data_dir.clone();
    config.validate().expect("config");

    let loading = Instant::now();
    drop(PocketSphinx::with_config(Ok(config.clone()), SttOptions::default(), vec![FORMAT]));
    let load = loading.elapsed();

    let options = SttOptions { keyterms, ..SttOptions::default() };
    let mut ps = PocketSphinx::with_config(Ok(config), options, vec![AudioFormat::MULAW_8000, FORMAT]);
    let started = Instant::now();
    ps.plan().expect("plan");
    let mut events = Vec::new();
    for batch in audio.chunks(3200) {
        events.extend(ps.push_audio(batch.to_vec()).expect("push_audio"));
    }
    events.extend(ps.command(SttCommand::Close).events);
    let decode = started.elapsed();
    for event in &events {
        match event {
            SttEvent::Final(t) => println!(
                "final {:>6} ms +{:>5} ms conf {:.3} speech_final {} from_finalize {}: {:?} {:?}",
                t.start_ms,
                t.duration_ms,
                t.confidence,
                t.speech_final,
                t.from_finalize,
                t.text,
                t.words
                    .iter()
                    .map(|w| (w.text.as_str(), w.start_ms, w.end_ms, (w.confidence * 1000.0).round() / 1000.0))
                    .collect::<Vec<_>>()
            ),
            SttEvent::Interim(t) => println!("interim {:>4} ms +{:>5} ms: {:?}", t.start_ms, t.duration_ms, t.text),
            other => println!("{other:?}"),
        }
    }
    let audio_s = audio.len() as f64 / 16_000.0;
    println!(
        "model load {:.3} s; decoded {audio_s:.1} s of audio in {:.3} s: RTF {:.3}",
        load.as_secs_f64(),
        decode.as_secs_f64(),
        decode.as_secs_f64() / audio_s
    );
}
