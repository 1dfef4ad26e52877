//! Native tests against the real Flite build and the voice made by `scripts/speech/flite.sh`.

use super::*;
use gatewayd_plugin::speech::AudioEncoding;

const VOICE: &str = "cmu_us_slt.flitevox";

/// The voice directory: `FLITE_VOICE_DIR`, else `build/models/flite`. Fails loudly when the
/// voice is missing: these tests never skip.
fn voice_dir() -> String {
    let dir = std::env::var("FLITE_VOICE_DIR")
        .unwrap_or_else(|_| format!("{}/../../build/models/flite", env!("CARGO_MANIFEST_DIR")));
    assert!(
        Path::new(&dir).join(VOICE).is_file(),
        "{dir}/{VOICE} is missing: run scripts/speech/flite.sh (or set FLITE_VOICE_DIR)"
    );
    dir
}

fn config() -> Config {
    Config { data_dir: voice_dir(), ..Config::default() }
}

fn options(voice: &str) -> TtsOptions {
    TtsOptions { voice: voice.into(), model: None, language: None, speed: None, extra: Vec::new() }
}

fn session(options: TtsOptions) -> Flite {
    Flite::with_config(Ok(config()), options)
}

/// Everything `text` gives, pulled `chunk` samples at a time, and how many pulls that took.
fn speak(s: &mut Flite, text: &str, chunk: u32) -> (Vec<i16>, usize) {
    s.synthesize(text.into()).unwrap();
    let (mut all, mut pulls) = (Vec::new(), 0);
    while let Some(samples) = s.pull_audio(chunk).unwrap() {
        assert!(!samples.is_empty() && samples.len() <= chunk as usize, "{} samples", samples.len());
        all.extend(samples);
        pulls += 1;
    }
    (all, pulls)
}

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

#[test]
fn a_sentence_is_plausible_speech_at_16_khz() {
    let mut s = session(options(""));
    let TtsPlan::InProcess(plan) = s.plan().unwrap() else { panic!("not in-process") };
    assert_eq!(
        (plan.output.encoding, plan.output.sample_rate, plan.output.channels),
        (AudioEncoding::PcmS16le, 16000, 1)
    );
    let (audio, _) = speak(&mut s, "Hello, this is a test of the Flite voice.", 320);
    let secs = audio.len() as f64 / 16000.0;
    assert!((1.2..6.0).contains(&secs), "{secs} s for nine words");
    let peak = audio.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 4000 && rms(&audio) > 300.0, "too quiet: peak {peak}, rms {}", rms(&audio));
    // Speech, not a constant: the loud part is in the middle, silence at the edges is short.
    let loud = audio.chunks(160).filter(|c| rms(c) > 200.0).count();
    assert!(loud * 160 > audio.len() / 3, "{loud} loud 10 ms frames of {}", audio.len() / 160);
    assert_eq!(s.pull_audio(320).unwrap(), None, "done stays done");
}

#[test]
fn chunked_pulls_give_the_same_samples_as_one_pull() {
    let text = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.";
    let (whole, pulls) = speak(&mut session(options(VOICE)), text, u32::MAX);
    assert_eq!(pulls, 2, "one pull per sentence when nothing bounds it");
    let (chunked, pulls) = speak(&mut session(options(VOICE)), text, 160);
    assert!(pulls > 100, "{pulls} pulls");
    assert_eq!(chunked.len(), whole.len());
    assert!(chunked == whole, "the same samples, whatever the pull size");
}

#[test]
fn the_first_audio_comes_before_the_rest_is_synthesised() {
    let mut s = session(options("cmu_us_slt"));
    let text = "First sentence here. Then a second one! A third? And a fourth. Finally, the fifth.";
    s.synthesize(text.into()).unwrap();
    assert_eq!((s.pieces_synthesised(), s.pieces_pending()), (0, 5), "synthesize only queues");
    let first = s.pull_audio(160).unwrap().unwrap();
    assert_eq!(first.len(), 160);
    assert_eq!((s.pieces_synthesised(), s.pieces_pending()), (1, 4), "one sentence, not five");
    let mut pulls = 1;
    while s.pull_audio(16000).unwrap().is_some() {
        pulls += 1;
    }
    assert_eq!((s.pieces_synthesised(), s.pieces_pending()), (5, 0));
    assert!(pulls >= 5, "{pulls}");
    // A new text replaces what is left of the old one.
    s.synthesize("One. Two. Three.".into()).unwrap();
    s.pull_audio(160).unwrap().unwrap();
    s.synthesize("Only this.".into()).unwrap();
    assert_eq!(s.pieces_pending(), 1);
}

#[test]
fn bad_voice_names_are_rejected() {
    for name in ["../cmu_us_slt.flitevox", "/data/cmu_us_slt.flitevox", "a/b", ".flitevox", "..", "x y", "é"] {
        let e = session(options(name)).plan().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{name}: {e:?}");
    }
    let e = session(options(&"a".repeat(MAX_VOICE_BYTES + 1))).plan().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    let e = session(options("cmu_us_nobody")).plan().unwrap_err();
    assert!(e.kind == ErrorKind::BadRequest && e.message.contains("unknown voice `cmu_us_nobody`"), "{e:?}");
    let mut s = session(options("cmu_us_nobody"));
    assert_eq!(s.synthesize("Hello.".into()).unwrap_err().kind, ErrorKind::BadRequest);
    // The configured default missing is the operator's error, not the caller's.
    let missing = Config { voice: "cmu_us_nobody".into(), ..config() };
    let e = Flite::with_config(Ok(missing), options("")).plan().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e:?}");
}

#[test]
fn a_file_that_is_not_a_voice_is_refused_before_flite_reads_it() {
    let dir = std::env::temp_dir().join(format!("gatewayd-tts-flite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("broken.flitevox"), b"not a voice at all, just some bytes").unwrap();
    let config = Config { data_dir: dir.to_string_lossy().into_owned(), ..Config::default() };
    let e = Flite::with_config(Ok(config), options("broken")).plan().unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(e.kind == ErrorKind::Config && e.message.contains("not a Flite clustergen voice"), "{e:?}");
}

#[test]
fn voices_are_loaded_once_and_shared_by_sessions() {
    let a = session(options("")).voice().unwrap();
    let b = session(options(VOICE)).voice().unwrap();
    let c = session(options("cmu_us_slt")).voice().unwrap();
    assert!(a == b && b == c, "{a:?} {b:?} {c:?}");
}

#[test]
fn speed_stretches_durations() {
    let text = "Please hold while we connect your call.";
    let (normal, _) = speak(&mut session(options("")), text, 4000);
    let (fast, _) = speak(&mut session(TtsOptions { speed: Some(2.0), ..options("") }), text, 4000);
    let (slow, _) = speak(&mut session(TtsOptions { speed: Some(0.5), ..options("") }), text, 4000);
    let ratio = |a: &[i16]| a.len() as f64 / normal.len() as f64;
    assert!((0.4..0.75).contains(&ratio(&fast)), "speed 2: {}", ratio(&fast));
    assert!((1.5..2.5).contains(&ratio(&slow)), "speed 0.5: {}", ratio(&slow));
    for speed in [0.1, 5.0, f32::NAN, f32::INFINITY] {
        let e = session(TtsOptions { speed: Some(speed), ..options("") }).plan().unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "speed {speed}");
    }
}

#[test]
fn bad_input_is_a_bad_request_never_a_panic() {
    let mut s = session(options(""));
    assert_eq!(s.pull_audio(160).unwrap(), None, "nothing synthesised: nothing to pull");
    for text in ["", "   \n\t", "... !? --", &"a".repeat(MAX_TEXT_BYTES + 1)] {
        let e = s.synthesize(text.into()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{:?}", &text[..text.len().min(20)]);
    }
    assert_eq!(s.pull_audio(0).unwrap_err().kind, ErrorKind::BadRequest);
    // Odd but speakable text: control characters, NUL, non-ASCII, numbers, symbols.
    let (audio, _) = speak(&mut s, "Call\0 555-0100 at 3:30pm; café ☎ ok?\u{7}", 8000);
    assert!(audio.len() > 16000, "{}", audio.len());
    // The bound is inclusive; a long run-on text is cut into pieces of bounded length.
    s.synthesize("word ".repeat(MAX_TEXT_BYTES / 5)).unwrap();
    assert!(s.pieces_pending() >= MAX_TEXT_BYTES / (text::MAX_PIECE_WEIGHT + 1), "{}", s.pieces_pending());
    assert!(s.pull_audio(160).unwrap().is_some());
    let french = TtsOptions { language: Some("fr-FR".into()), ..options("") };
    assert_eq!(session(french).plan().unwrap_err().kind, ErrorKind::BadRequest);
    let english = TtsOptions { language: Some("en-GB".into()), ..options("") };
    assert!(session(english).plan().is_ok());
    let mut broken = Flite::with_config(Err("bad".into()), options(""));
    assert_eq!(broken.plan().unwrap_err().kind, ErrorKind::Config);
    assert_eq!(broken.synthesize("hi".into()).unwrap_err().kind, ErrorKind::Config);
}

#[test]
fn config_is_checked() {
    let parse = |json: &str| -> Result<Config, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    };
    assert_eq!(parse("{}").unwrap(), Config::default());
    assert_eq!(parse(r#"{"data_dir": "/data", "voice": "cmu_us_rms"}"#).unwrap().voice, "cmu_us_rms");
    assert!(parse(r#"{"voices": "x"}"#).unwrap_err().contains("unknown field"));
    assert!(parse(r#"{"voice": "../etc/passwd"}"#).is_err());
    assert!(parse(r#"{"data_dir": ""}"#).is_err());
    // What `init` checks on top: the default voice file is there and is a voice.
    assert_eq!(config().check_default_voice(), Ok(()));
    let e = Config { voice: "cmu_us_nobody".into(), ..config() }.check_default_voice().unwrap_err();
    assert!(e.contains("cmu_us_nobody.flitevox not found"), "{e}");
    let e = Config { data_dir: "/nonexistent".into(), ..Config::default() }.check_default_voice().unwrap_err();
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn random_text_never_aborts_flite() {
    // Tokens Flite's text rules treat specially, and characters it does not know.
    const PARTS: &[&str] = &[
        "1",
        "42",
        "3.14",
        "1,000",
        "-7",
        "1/2",
        "2024-01-31",
        "12:30",
        "$5",
        "50%",
        "#3",
        "&",
        "@",
        "+",
        "=",
        "Mr.",
        "St.",
        "XIV",
        "I.B.M.",
        "e.g.",
        "http://x.org/a?b=c",
        "a@b.com",
        "C++",
        "--",
        "...",
        "'",
        "\"",
        "(",
        ")",
        "[x]",
        "é",
        "中文",
        "🙂",
        "\u{a0}",
        "ﬁ",
        "ß",
        "x",
        "the",
        "quick",
        "A",
        "Z",
        ".",
        "?",
        "!",
        ",",
        ";",
        ":",
        "\u{301}",
        "0x1F",
        "1e9",
        "½",
        "°C",
        "™",
        "§",
        "\\",
        "`",
        "~",
        "^",
        "|",
        "{",
        "}",
        "<",
        ">",
    ];
    let mut s = session(options(""));
    let mut seed = 0x2545_f491_u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // 60 cases here (2 s); 2000 were run once without a failure.
    for _ in 0..60 {
        let len = 1 + next(12);
        let text: Vec<&str> = (0..len).map(|_| PARTS[next(PARTS.len())]).collect();
        let text = text.join(if next(2) == 0 { " " } else { "" });
        match s.synthesize(text.clone()) {
            Ok(()) => while s.pull_audio(16000).unwrap().is_some() {},
            Err(e) => assert_eq!(e.kind, ErrorKind::BadRequest, "{text:?}: {e:?}"),
        }
    }
}
