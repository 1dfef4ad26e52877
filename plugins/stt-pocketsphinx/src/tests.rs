//! Native tests against the real model and recordings of the PocketSphinx source distribution
//! (`scripts/speech/pocketsphinx.sh`; the tree build.rs compiled, or `POCKETSPHINX_SRC`).
//! Each test runs on its own thread, so each is its own "instance" with its own decoder.

use std::path::PathBuf;

use gatewayd_plugin::speech::stt::{SttCommand, SttEvent, SttOptions, SttPlan, Transcript};
use gatewayd_plugin::speech::{AudioFormat, ErrorKind, SttProvider};

use super::*;

/// The unpacked sdist; fails loudly when it is not there.
fn sdist() -> PathBuf {
    let dir = std::env::var_os("POCKETSPHINX_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("GATEWAYD_POCKETSPHINX_SRC")));
    assert!(
        dir.join("model/en-us/en-us.lm.bin").is_file() && dir.join("test/data/goforward.raw").is_file(),
        "the PocketSphinx 5.1.1 source distribution is not at {} (model/en-us, test/data): \
         run scripts/speech/pocketsphinx.sh or set POCKETSPHINX_SRC",
        dir.display()
    );
    dir
}

/// The sdist's model directory has the layout of `data_dir` (en-us/, en-us.lm.bin,
/// cmudict-en-us.dict).
fn model_config() -> Config {
    Config { data_dir: sdist().join("model/en-us").display().to_string(), ..Config::default() }
}

/// A 16 kHz s16le recording of the sdist's test data.
fn recording(name: &str) -> Vec<i16> {
    let bytes = std::fs::read(sdist().join("test/data").join(name)).expect("read recording");
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}

fn offered() -> Vec<AudioFormat> {
    vec![AudioFormat::MULAW_8000, AudioFormat::pcm_mono(8000), FORMAT]
}

fn session(options: SttOptions) -> PocketSphinx {
    PocketSphinx::with_config(Ok(model_config()), options, offered())
}

/// `samples` then 1 s of silence, in 200 ms batches (as the host sends them); every event.
fn feed(ps: &mut PocketSphinx, samples: &[i16]) -> Vec<SttEvent> {
    let mut audio = samples.to_vec();
    audio.extend(std::iter::repeat_n(0i16, 16_000));
    let mut events = Vec::new();
    for batch in audio.chunks(3200) {
        events.extend(ps.push_audio(batch.to_vec()).expect("push_audio"));
    }
    events
}

fn finals(events: &[SttEvent]) -> Vec<&Transcript> {
    events.iter().filter_map(|e| if let SttEvent::Final(t) = e { Some(t) } else { None }).collect()
}

#[test]
fn goforward_decodes_through_push_audio_in_200ms_batches() {
    let mut ps = session(SttOptions::default());
    let plan = ps.plan().unwrap();
    assert_eq!(plan, SttPlan::InProcess(InProcessStt { format: AudioFormat::pcm_mono(16000), batch_ms: 200 }));
    let events = feed(&mut ps, &recording("goforward.raw"));

    let SttEvent::SpeechStarted(started) = events[0] else { panic!("{events:?}") };
    // Speech is at 0.5 s to 2.3 s in the recording; the endpointer's window reaches back.
    assert!((150..=600).contains(&started), "speech started at {started} ms");
    assert!(events.iter().any(|e| matches!(e, SttEvent::Interim(t) if !t.text.is_empty())), "{events:?}");
    let [final_] = finals(&events)[..] else { panic!("{events:?}") };
    assert_eq!(final_.text, "go forward ten meters");
    assert!(final_.speech_final && !final_.from_finalize);
    assert!((0.0..=1.0).contains(&final_.confidence), "{}", final_.confidence);
    assert_eq!(final_.start_ms, started);
    assert!((2000..=3000).contains(&(final_.start_ms + final_.duration_ms)), "{final_:?}");
    let words: Vec<&str> = final_.words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(words, ["go", "forward", "ten", "meters"]);
    for pair in final_.words.windows(2) {
        assert!(pair[0].start_ms < pair[0].end_ms && pair[0].end_ms <= pair[1].start_ms, "{:?}", final_.words);
    }
    assert!(final_.words.iter().all(|w| (0.0..=1.0).contains(&w.confidence) && w.start_ms >= started));
    let SttEvent::UtteranceEnd(end) = events.last().unwrap() else { panic!("{events:?}") };
    assert_eq!(*end, final_.words.last().unwrap().end_ms);
    // Events come in stream order: started, interims, final, utterance end.
    let final_at = events.iter().position(|e| matches!(e, SttEvent::Final(_))).unwrap();
    assert_eq!(final_at, events.len() - 2);
}

#[test]
fn the_model_is_loaded_once_per_instance_and_reused_by_later_sessions() {
    let before = engine::loads();
    // The host's warm-up: construct and drop a session before a call arrives.
    drop(session(SttOptions::default()));
    assert_eq!(engine::loads(), before + 1);
    for _ in 0..2 {
        let mut ps = session(SttOptions::default());
        ps.plan().unwrap();
        let events = feed(&mut ps, &recording("goforward.raw"));
        assert_eq!(finals(&events)[0].text, "go forward ten meters");
    }
    assert_eq!(engine::loads(), before + 1);
}

#[test]
fn keyterms_restrict_recognition_to_their_alternatives() {
    let keyterms = vec!["sales".into(), "support".into(), "go forward ten meters".into(), "Go backward!".into()];
    let mut ps = session(SttOptions { keyterms, ..SttOptions::default() });
    ps.plan().unwrap();
    let events = feed(&mut ps, &recording("goforward.raw"));
    assert_eq!(finals(&events)[0].text, "go forward ten meters");
}

#[test]
fn a_jsgf_grammar_in_extra_is_used_and_a_later_session_is_back_on_the_lm() {
    let jsgf = std::fs::read_to_string(sdist().join("test/data/goforward.gram")).unwrap();
    let mut ps = session(SttOptions { extra: vec![("grammar".into(), jsgf)], ..SttOptions::default() });
    ps.plan().unwrap();
    assert_eq!(finals(&feed(&mut ps, &recording("goforward.raw")))[0].text, "go forward ten meters");
    drop(ps);

    // A menu grammar that cannot say what was said: the decoder forces one of its sentences
    // (or nothing), never the LM's words.
    let menu = SttOptions { keyterms: vec!["sales".into(), "support".into()], ..SttOptions::default() };
    let mut ps = session(menu);
    ps.plan().unwrap();
    let text = finals(&feed(&mut ps, &recording("goforward.raw")))[0].text.clone();
    assert!(["", "sales", "support"].contains(&text.as_str()), "{text}");
    drop(ps);

    let mut ps = session(SttOptions::default());
    ps.plan().unwrap();
    assert_eq!(finals(&feed(&mut ps, &recording("goforward.raw")))[0].text, "go forward ten meters");
}

#[test]
fn sessions_in_one_instance_keep_their_own_searches() {
    let jsgf = std::fs::read_to_string(sdist().join("test/data/goforward.gram")).unwrap();
    let mut menu = session(SttOptions { keyterms: vec!["sales".into(), "support".into()], ..SttOptions::default() });
    let mut goforward = session(SttOptions { extra: vec![("grammar".into(), jsgf)], ..SttOptions::default() });
    let mut open = session(SttOptions::default());
    menu.plan().unwrap();
    goforward.plan().unwrap();
    open.plan().unwrap();
    let audio = recording("goforward.raw");
    for _ in 0..2 {
        let text = finals(&feed(&mut menu, &audio))[0].text.clone();
        assert!(["", "sales", "support"].contains(&text.as_str()), "{text}");
        assert_eq!(finals(&feed(&mut goforward, &audio))[0].text, "go forward ten meters");
        assert_eq!(finals(&feed(&mut open, &audio))[0].text, "go forward ten meters");
    }
}

#[test]
fn without_an_lm_only_grammars_are_decoded() {
    let config = Config { lm: String::new(), ..model_config() };
    let menu = SttOptions { keyterms: vec!["go forward ten meters".into(), "stop".into()], ..SttOptions::default() };
    let mut ps = PocketSphinx::with_config(Ok(config.clone()), menu, offered());
    ps.plan().unwrap();
    assert_eq!(finals(&feed(&mut ps, &recording("goforward.raw")))[0].text, "go forward ten meters");
    let e = PocketSphinx::with_config(Ok(config), SttOptions::default(), offered()).plan().unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("keyterms or a grammar"), "{}", e.message);
}

#[test]
fn a_long_utterance_is_cut_into_finals_of_one_utterance() {
    let config = Config { max_utterance_ms: 1000, ..model_config() };
    let mut ps = PocketSphinx::with_config(
        Ok(config),
        SttOptions { interim_results: false, ..SttOptions::default() },
        offered(),
    );
    ps.plan().unwrap();
    let events = feed(&mut ps, &recording("goforward.raw"));
    let started = events.iter().filter(|e| matches!(e, SttEvent::SpeechStarted(_))).count();
    let ends = events.iter().filter(|e| matches!(e, SttEvent::UtteranceEnd(_))).count();
    assert_eq!((started, ends), (1, 1), "{events:?}");
    let finals = finals(&events);
    assert!(finals.len() >= 2, "{events:?}");
    let (last, cut) = finals.split_last().unwrap();
    assert!(last.speech_final && cut.iter().all(|t| !t.speech_final && t.duration_ms >= 990), "{finals:?}");
    for pair in finals.windows(2) {
        assert_eq!(pair[0].start_ms + pair[0].duration_ms, pair[1].start_ms, "{finals:?}");
    }
    let text: Vec<&str> = finals.iter().map(|t| t.text.as_str()).filter(|t| !t.is_empty()).collect();
    assert!(text.join(" ").starts_with("go"), "{text:?}");
}

#[test]
fn a_second_stream_cannot_speak_while_another_is_mid_utterance() {
    let audio = recording("goforward.raw");
    let mut first = session(SttOptions::default());
    let mut second = session(SttOptions::default());
    first.plan().unwrap();
    second.plan().unwrap();
    for batch in audio[..25_600].chunks(3200) {
        first.push_audio(batch.to_vec()).unwrap();
    }
    let mut refused = None;
    for batch in audio.chunks(3200) {
        if let Err(e) = second.push_audio(batch.to_vec()) {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(refused.expect("refused").kind, ErrorKind::Unavailable);
    // Once the first stream's utterance is over, the second decodes.
    first.command(SttCommand::Close);
    let mut second = session(SttOptions::default());
    second.plan().unwrap();
    assert_eq!(finals(&feed(&mut second, &audio))[0].text, "go forward ten meters");
}

#[test]
fn finalize_ends_the_utterance_at_once() {
    let mut ps = session(SttOptions { interim_results: false, ..SttOptions::default() });
    ps.plan().unwrap();
    let audio = recording("goforward.raw");
    // 1.6 s: "go forward" is said, the speech goes on.
    let mut events = Vec::new();
    for batch in audio[..25_600].chunks(3200) {
        events.extend(ps.push_audio(batch.to_vec()).unwrap());
    }
    assert!(matches!(events[..], [SttEvent::SpeechStarted(_)]), "no interims when not asked: {events:?}");
    let out = ps.command(SttCommand::Finalize);
    assert!(out.send.is_empty());
    let [SttEvent::Final(t), SttEvent::UtteranceEnd(_)] = &out.events[..] else { panic!("{:?}", out.events) };
    assert!(t.from_finalize && t.speech_final);
    assert!(t.text.starts_with("go"), "{t:?}");
    assert!(t.start_ms + t.duration_ms <= 1600, "{t:?}");

    // Nothing buffered: an empty final answers.
    let out = ps.command(SttCommand::Finalize);
    let [SttEvent::Final(t)] = &out.events[..] else { panic!("{:?}", out.events) };
    assert!(t.text.is_empty() && t.from_finalize && !t.speech_final);
    assert_eq!(t.start_ms, 1600);

    // The stream goes on: the rest of the recording is a new utterance.
    let events = feed(&mut ps, &audio[25_600..]);
    assert!(matches!(events.first(), Some(SttEvent::SpeechStarted(ms)) if *ms >= 1600), "{events:?}");
    assert!(finals(&events).iter().all(|t| !t.from_finalize));
}

#[test]
fn close_returns_the_last_final_and_ends_the_stream() {
    let mut ps = session(SttOptions::default());
    ps.plan().unwrap();
    let audio = recording("goforward.raw");
    for batch in audio[..38_400].chunks(3200) {
        ps.push_audio(batch.to_vec()).unwrap();
    }
    let out = ps.command(SttCommand::Close);
    let Some(SttEvent::Final(t)) = out.events.first() else { panic!("{:?}", out.events) };
    assert!(t.from_finalize && t.text.starts_with("go forward"), "{t:?}");
    assert_eq!(ps.push_audio(vec![0; 3200]).unwrap_err().kind, ErrorKind::BadRequest);
    assert!(ps.command(SttCommand::Close).events.is_empty());
    assert_eq!(ps.on_close(gatewayd_plugin::speech::Disconnect::Dropped("x".into())), CloseAction::Done);
    // A new plan is a new stream.
    ps.plan().unwrap();
    assert_eq!(finals(&feed(&mut ps, &audio))[0].text, "go forward ten meters");
}

#[test]
fn invalid_grammars_are_errors_not_panics() {
    let grammar = |jsgf: &str| {
        let options = SttOptions { extra: vec![("grammar".into(), jsgf.into())], ..SttOptions::default() };
        session(options).plan().unwrap_err()
    };
    for bad in [
        "#JSGF V1.0; grammar g; public <a> = (yes | ;",
        "#JSGF V1.0; grammar g; public <a> = yes <undefined>;",
        "#JSGF V1.0; grammar g; <a> = yes;",
        "not a grammar at all",
    ] {
        let e = grammar(bad);
        assert_eq!(e.kind, ErrorKind::BadRequest, "{bad}: {e:?}");
        assert!(!e.message.is_empty());
    }
    let fuzzed = String::from_utf8_lossy(&std::fs::read(sdist().join("test/data/fuzzed.gram")).unwrap()).into_owned();
    assert_eq!(grammar(&fuzzed).kind, ErrorKind::BadRequest);
    let e = grammar("#JSGF V1.0; grammar g; public <a> = yes | gatewaydish;");
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("gatewaydish"), "{}", e.message);
    let e = session(SttOptions { keyterms: vec!["sales".into(), "zorbleflux".into()], ..SttOptions::default() })
        .plan()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("zorbleflux"), "{}", e.message);

    // The decoder is fine afterwards.
    let mut ps = session(SttOptions::default());
    ps.plan().unwrap();
    assert_eq!(finals(&feed(&mut ps, &recording("goforward.raw")))[0].text, "go forward ten meters");
}

#[test]
fn unusable_configuration_and_options_are_errors() {
    let missing = Config { data_dir: "/nonexistent/models".into(), ..Config::default() };
    let e = PocketSphinx::with_config(Ok(missing.clone()), SttOptions::default(), offered()).plan().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("loading the PocketSphinx model"), "{}", e.message);
    // Not retried: the next session gets the same error.
    let again = PocketSphinx::with_config(Ok(missing), SttOptions::default(), offered()).plan().unwrap_err();
    assert_eq!(again, e);
    let e = PocketSphinx::with_config(Err("bad".into()), SttOptions::default(), offered()).plan().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);

    let kind = |options: SttOptions, offered: Vec<AudioFormat>| {
        PocketSphinx::with_config(Ok(model_config()), options, offered).plan().unwrap_err().kind
    };
    assert_eq!(kind(SttOptions::default(), vec![AudioFormat::MULAW_8000]), ErrorKind::Unsupported);
    let french = SttOptions { language: Some("fr-FR".into()), ..SttOptions::default() };
    assert_eq!(kind(french, offered()), ErrorKind::Unsupported);
    let unknown = SttOptions { extra: vec![("diarize".into(), "true".into())], ..SttOptions::default() };
    assert_eq!(kind(unknown, offered()), ErrorKind::BadRequest);
    let big = SttOptions {
        extra: vec![("grammar".into(), "x".repeat(grammar::MAX_GRAMMAR_BYTES + 1))],
        ..SttOptions::default()
    };
    assert_eq!(kind(big, offered()), ErrorKind::BadRequest);

    let mut ps = session(SttOptions { language: Some("en-US".into()), ..SttOptions::default() });
    ps.plan().unwrap();
    assert_eq!(ps.push_audio(vec![0; MAX_BATCH_SAMPLES + 1]).unwrap_err().kind, ErrorKind::BadRequest);
    assert!(ps.on_message(gatewayd_plugin::speech::WsMessage::Text("{}".into())).is_empty());
}
