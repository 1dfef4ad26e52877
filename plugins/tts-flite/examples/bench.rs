//! Native figures for the Flite provider: voice load time, time to first audio and real-time
//! factor of a prompt, pulled 100 ms at a time as the host does.
//!
//! `cargo run --release -p gatewayd-tts-flite --example bench [-- VOICE_DIR [TEXT [OUT.raw]]]`
//! (defaults: `build/models/flite`, a two-sentence prompt; OUT.raw gets the s16le samples).

use std::time::Instant;

use gatewayd_plugin::speech::TtsProvider;
use gatewayd_plugin::speech::tts::TtsOptions;
use gatewayd_tts_flite::{Config, Flite};

const PROMPT: &str = "Thank you for calling. Please say the name of the person you would like to reach.";

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| format!("{}/../../build/models/flite", env!("CARGO_MANIFEST_DIR")));
    let text = args.next().unwrap_or_else(|| PROMPT.into());
    let out = args.next();
    let options = || TtsOptions { voice: String::new(), model: None, language: None, speed: None, extra: Vec::new() };
    let config = Config { data_dir: dir, ..Config::default() };

    let start = Instant::now();
    let mut session = Flite::with_config(Ok(config.clone()), options());
    let rate = session.voice().expect("voice (run scripts/speech/flite.sh)").sample_rate;
    println!("voice load: {:.1} ms (once per instance)", start.elapsed().as_secs_f64() * 1e3);

    for round in ["cold", "warm"] {
        let mut session = Flite::with_config(Ok(config.clone()), options());
        let start = Instant::now();
        session.synthesize(text.clone()).expect("synthesize");
        let mut samples = session.pull_audio(rate / 10).expect("pull").expect("audio");
        let first = start.elapsed();
        while let Some(more) = session.pull_audio(rate / 10).expect("pull") {
            samples.extend(more);
        }
        let total = start.elapsed();
        let audio = samples.len() as f64 / f64::from(rate);
        println!(
            "{round}: {} pieces, {audio:.2} s of audio at {rate} Hz; first audio after {:.1} ms; \
             synthesis {:.1} ms in all, real-time factor {:.4}",
            session.pieces_synthesised(),
            first.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            total.as_secs_f64() / audio,
        );
        if let Some(path) = &out {
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            std::fs::write(path, bytes).expect("write samples");
        }
    }
}
