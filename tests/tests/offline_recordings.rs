//! Real human recordings over a phone line (issue #12): the recordings that ship in the
//! PocketSphinx 5.1.1 source distribution (`test/data`: `goforward.raw` and the LibriVox
//! excerpts of *Sense and Sensibility* with their reference texts), converted to G.711 mu-law
//! at 8000 Hz as a phone line carries them, then recognised by the Wasm component through the
//! daemon's speech code and by the same engine compiled natively (`gatewayd_e2e::offline`).
//! The word error rate of each build against the reference texts is printed, and the two
//! builds' hypotheses must be identical: the same C sources decode the same audio alike in Wasm
//! and natively when each stream has a decoder of its own, as the host gives it (the module doc
//! of `gatewayd_e2e::offline`).

use gatewayd_e2e::{offline, wer};
use std::path::PathBuf;

/// The recordings: name, 16 kHz samples, reference text.
fn recordings() -> Vec<(String, Vec<i16>, String)> {
    let data = offline::test_data();
    let raw = std::fs::read(data.join("goforward.raw")).expect("goforward.raw");
    let mut all = vec![(
        "goforward".to_string(),
        raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect(),
        "go forward ten meters".to_string(),
    )];
    let mut wavs: Vec<PathBuf> = std::fs::read_dir(data.join("librivox"))
        .expect("librivox")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    wavs.sort();
    for wav in wavs {
        let mut reader = hound::WavReader::open(&wav).expect("a WAV file");
        assert_eq!((reader.spec().sample_rate, reader.spec().channels), (16_000, 1), "{}", wav.display());
        let samples = reader.samples::<i16>().map(|s| s.expect("a sample")).collect();
        let text = std::fs::read_to_string(wav.with_extension("txt")).expect("its reference text");
        let name = wav.file_stem().expect("a name").to_string_lossy().into_owned();
        all.push((name, samples, text.trim().to_string()));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_recordings_over_a_phone_line_wasm_against_native() {
    let recordings = recordings();
    assert!(recordings.len() >= 2, "the recordings are there");
    println!("{:<44} {:>5} {:>6} {:>6}  Wasm hypothesis", "recording", "words", "Wasm", "native");
    let (mut wasm_errors, mut native_errors, mut words, mut identical) = (0, 0, 0, 0);
    for (name, samples, reference) in &recordings {
        let mut line = offline::phone_line(samples, 16_000);
        // The endpointer needs silence after the last word.
        line.extend(std::iter::repeat_n(0xFF, 60 * offline::FRAME));
        let native = offline::native_finals(&line, &[]).join(" ");
        let wasm = offline::wasm_finals(&line, &[]).await.join(" ");
        let n = wer::words(reference).len();
        println!(
            "{name:<44} {n:>5} {:>6.2} {:>6.2}  {wasm}",
            wer::rate(reference, &wasm),
            wer::rate(reference, &native)
        );
        if wasm == native {
            identical += 1;
        } else {
            println!("  native: {native}");
        }
        wasm_errors += wer::errors(reference, &wasm);
        native_errors += wer::errors(reference, &native);
        words += n;
    }
    let (wasm_wer, native_wer) = (wasm_errors as f64 / words as f64, native_errors as f64 / words as f64);
    println!(
        "phone line, open vocabulary, {words} words: WER Wasm {wasm_wer:.3}, native {native_wer:.3}; \
         identical hypotheses on {identical} of {} recordings",
        recordings.len()
    );
    assert_eq!(identical, recordings.len(), "the Wasm and native hypotheses differ (lines `native:` above)");
}
