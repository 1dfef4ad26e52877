//! Replays every corpus file of `fuzz/corpus/<target>/` through its target body: the inputs the
//! fuzzer kept (including every crash once found) must run cleanly under a plain `cargo test`.

use gatewayd_fuzz_targets::TARGETS;
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

#[test]
fn every_target_has_a_corpus_and_every_input_runs_cleanly() {
    let mut total = 0;
    for (name, body) in TARGETS {
        let dir = corpus_dir(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if !path.is_file() {
                continue;
            }
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            n += 1;
        }
        assert!(n > 0, "{name}: {} holds no corpus file", dir.display());
        total += n;
    }
    println!("replayed {total} corpus files of {} targets", TARGETS.len());
}

#[test]
fn every_target_has_a_cargo_fuzz_entry() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let file = dir.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(file.is_file(), "{} is missing", file.display());
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
    }
}
