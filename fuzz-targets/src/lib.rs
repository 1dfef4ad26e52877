//! Fuzz-target bodies: one function per decoder of untrusted bytes. Each takes the raw input
//! and must never panic, hang or allocate without bound, whatever the bytes.
//!
//! They are called from two places:
//! - the cargo-fuzz project `fuzz/` (`fuzz/fuzz_targets/<name>.rs`, one line each), which
//!   searches for inputs that break them (`make fuzz`, see docs/reliability.md);
//! - `tests/corpus.rs` here, which replays every file of `fuzz/corpus/<name>/` under a plain
//!   `cargo test` (part of `make test`), so a crash once found stays fixed.
//!
//! [`TARGETS`] lists them by name; a new target needs a body here, an entry in [`TARGETS`], a
//! `fuzz/fuzz_targets/<name>.rs` with its `[[bin]]` in `fuzz/Cargo.toml`, and a seed corpus.

/// A target body: takes one input, panics only on a bug.
pub type Body = fn(&[u8]);

/// Every target: (name, body). The name is the cargo-fuzz target and the corpus folder.
pub const TARGETS: &[(&str, Body)] = &[
    ("signaling_message", signaling_message),
    ("chat_message", chat_message),
    ("chat_upload", chat_upload),
    ("rooms_message", rooms_message),
    ("ivr_message", ivr_message),
    ("deepgram_message", deepgram_message),
    #[cfg(feature = "daemon")]
    ("sql_placeholders", sql_placeholders),
    #[cfg(feature = "daemon")]
    ("wav_prompt", wav_prompt),
    #[cfg(feature = "daemon")]
    ("media_frame", media_frame),
    #[cfg(feature = "daemon")]
    ("config", config),
    #[cfg(feature = "daemon")]
    ("jwt", jwt),
    #[cfg(feature = "daemon")]
    ("file_sniff", file_sniff),
    #[cfg(feature = "daemon")]
    ("websocket_frame_guard", websocket_frame_guard),
    #[cfg(feature = "daemon")]
    ("twilio_signature", twilio_signature),
    #[cfg(feature = "daemon")]
    ("tts_audio", tts_audio),
    #[cfg(feature = "daemon")]
    ("twilio_stream", twilio_stream),
    ("telephony_dashboard", telephony_dashboard),
];

/// A WebSocket text frame reaches a plugin only as UTF-8 (the daemon refuses other text).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Signaling: one client text frame (`protocol::parse`).
pub fn signaling_message(data: &[u8]) {
    if let Some(t) = text(data) {
        gatewayd_signaling::fuzzing::message(t);
    }
}

/// Chat: one WebSocket text frame, and the same bytes as a `POST /chat/start-session/` body.
pub fn chat_message(data: &[u8]) {
    if let Some(t) = text(data) {
        gatewayd_chat::fuzzing::socket_message(t);
    }
    gatewayd_chat::fuzzing::start_session_body(data);
}

/// Chat uploads: `<content-type header>\n<multipart body>` (the body may hold any bytes).
pub fn chat_upload(data: &[u8]) {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(head);
    gatewayd_chat::fuzzing::upload_form(&content_type, body.to_vec());
}

/// Rooms: one WebSocket text frame, and the same bytes as a REST body (`POST`/`PATCH /rooms`).
pub fn rooms_message(data: &[u8]) {
    if let Some(t) = text(data) {
        gatewayd_rooms::fuzzing::ws_message(t);
    }
    gatewayd_rooms::fuzzing::rest_body(data);
}

/// IVR (`ivr.md` wire, shared by the ivr and ivr-menu plugins): one text message, before and
/// during a call, and the same text as a timer key.
pub fn ivr_message(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = gatewayd_ivr_protocol::parse(t, false);
        let _ = gatewayd_ivr_protocol::parse(t, true);
        let _ = gatewayd_ivr_protocol::parse_timer_key(t);
    }
}

/// SQL from plugins: the `$n` -> `?` rewriter of the store writer, the statement-shape lexer
/// (`store::sql`) and the single-read check. Whatever they return must be consistent: one
/// parameter number per `?` written, all >= 1; a statement the rewriter takes as one is one
/// for the lexer too.
#[cfg(feature = "daemon")]
pub fn sql_placeholders(data: &[u8]) {
    let Some(sql) = text(data) else { return };
    let _ = gatewayd::store::is_single_read(sql);
    let shape = gatewayd::store::sql::shape(sql);
    assert!(shape.head.bytes().all(|c| c.is_ascii_uppercase()), "head is a keyword: {:?}", shape.head);
    if let Some((out, order)) = gatewayd::store::writer::positional(sql) {
        assert!(order.iter().all(|&n| n >= 1), "parameter numbers start at 1: {order:?}");
        assert!(out.len() <= sql.len(), "the rewrite never grows the text");
        assert!(shape.single, "one statement for the rewriter, several for the lexer: {sql:?}");
    }
}

/// WAV prompts: decode the bytes, then convert them to every session rate as the file library
/// does on first use.
#[cfg(feature = "daemon")]
pub fn wav_prompt(data: &[u8]) {
    if let Ok(clip) = gatewayd::media::files::decode_wav(std::io::Cursor::new(data)) {
        for rate in [8000, 16000, 48000] {
            let _ = gatewayd::media::resample::resample_clip(&clip.samples, clip.rate, rate);
        }
    }
}

/// Media frames from callers: the first byte picks the wire format (codec and rate), the rest is
/// one frame, decoded as a call decodes it (fixed-size codecs refuse other sizes).
#[cfg(feature = "daemon")]
pub fn media_frame(data: &[u8]) {
    use gatewayd::media::codec::Codec;
    use gatewayd::media::format::{CodecName, Format};
    let Some((&pick, frame)) = data.split_first() else { return };
    let formats: Vec<Format> = [CodecName::Pcmu, CodecName::Pcma, CodecName::L16, CodecName::Opus]
        .iter()
        .flat_map(|&c| c.rates().iter().map(move |&r| Format { codec: c, rate: r }))
        .collect();
    let format = formats[pick as usize % formats.len()];
    let mut codec = Codec::new(format).expect("every listed format has a codec");
    let mut out = Vec::new();
    // Twice: Opus keeps state between frames.
    for _ in 0..2 {
        if codec.decode(frame, format.frame_samples(), &mut out).is_ok() {
            assert_eq!(out.len(), format.frame_samples(), "a decoded frame has the frame's sample count");
        }
    }
}

/// The config loader: TOML text -> validated [`gatewayd::config::Config`].
#[cfg(feature = "daemon")]
pub fn config(data: &[u8]) {
    if let Some(t) = text(data) {
        let _ = gatewayd::config::Config::parse(t, std::path::Path::new("/nonexistent-base"));
    }
}

/// A JWT as clients send it: found in a query, an `Authorization` header or a
/// `Sec-WebSocket-Protocol` header, then verified with an HS256 key and with a key that has an
/// issuer, audience and `kid`.
#[cfg(feature = "daemon")]
pub fn jwt(data: &[u8]) {
    use gatewayd::auth::{JwtVerifier, extract_token};
    use gatewayd::config::{AuthConfig, JwtKeyConfig};
    static VERIFIERS: std::sync::OnceLock<[JwtVerifier; 2]> = std::sync::OnceLock::new();
    let verifiers = VERIFIERS.get_or_init(|| {
        let key = |kid: Option<&str>| JwtKeyConfig {
            algorithm: "HS256".into(),
            secret: Some("fuzz-secret-0123456789abcdef".into()),
            secret_env: None,
            public_key_file: None,
            kid: kid.map(str::to_string),
        };
        let plain = AuthConfig { keys: vec![key(None)], ..AuthConfig::default() };
        let strict = AuthConfig {
            keys: vec![key(Some("k1")), key(None)],
            issuer: Some("gatewayd".into()),
            audience: Some("clients".into()),
            leeway_secs: 0,
            issued: [("visitors".to_string(), "chat".to_string())].into(),
            ..AuthConfig::default()
        };
        [JwtVerifier::new(&plain).expect("plain verifier"), JwtVerifier::new(&strict).expect("strict verifier")]
    });
    let raw = String::from_utf8_lossy(data);
    let mut headers = hyper::HeaderMap::new();
    for name in [hyper::header::AUTHORIZATION, hyper::header::SEC_WEBSOCKET_PROTOCOL] {
        if let Ok(v) = hyper::header::HeaderValue::from_bytes(data) {
            headers.insert(name, v);
        }
    }
    let from_headers = extract_token(&[], &headers).map(|(t, _)| t);
    let query = [("token".to_string(), raw.to_string())];
    let from_query = extract_token(&query, &headers).map(|(t, _)| t);
    for token in [Some(raw.to_string()), from_headers, from_query].into_iter().flatten() {
        for v in verifiers {
            for plugin in [None, Some("chat"), Some("signaling")] {
                let _ = v.verify(&token, plugin);
            }
        }
    }
}

/// Uploaded files: the content sniffing that decides a stored file's type, and the name check
/// of `files.get`.
#[cfg(feature = "daemon")]
pub fn file_sniff(data: &[u8]) {
    let _ = gatewayd::plugins::host_files::sniff(data);
    if let Some(t) = text(data) {
        let _ = gatewayd::plugins::host_files::is_generated_name(t);
    }
}

/// The WebSocket frame guard (`gatewayd::server::guard`) on a raw client byte stream: the first
/// two bytes choose the message limit and the read size, the rest is the stream. The verdict
/// must not depend on how the stream is cut into reads, and a refused stream stays refused.
#[cfg(feature = "daemon")]
pub fn websocket_frame_guard(data: &[u8]) {
    use gatewayd::server::guard::FrameGuard;
    let [limit, chunk, stream @ ..] = data else { return };
    let limit = 125 + usize::from(*limit) * 257;
    let chunk = usize::from(*chunk).max(1);
    let whole = FrameGuard::new(limit).inspect(stream);
    let mut guard = FrameGuard::new(limit);
    let mut passed = 0;
    let mut verdict = Ok(());
    for piece in stream.chunks(chunk) {
        match guard.inspect(piece) {
            Ok(()) => passed += piece.len(),
            Err((n, v)) => {
                assert!(n <= piece.len(), "offset {n} inside a read of {}", piece.len());
                passed += n;
                verdict = Err(v);
                break;
            }
        }
    }
    match (&whole, &verdict) {
        (Ok(()), Ok(())) => assert_eq!(passed, stream.len()),
        (Err((at, v)), Err(w)) => {
            assert_eq!(v, w, "same violation whatever the reads");
            // Bytes of the refused header that came in earlier reads were passed on already.
            assert!(*at <= passed && passed < at + 14, "refused at {at}, passed {passed}");
            assert_eq!(guard.inspect(b"more").map_err(|(n, _)| n), Err(0), "refused for good");
        }
        _ => panic!("verdicts differ: whole {whole:?}, in reads {verdict:?}"),
    }
}

/// A Twilio webhook as a client could send it: the bytes split into a URL, form parameters
/// (`k=v&...`) and an `X-Twilio-Signature` header, each checked by `auth_twilio`. Properties:
/// never a panic; a signature computed by `signature` always verifies; a header that is not
/// that signature (nor the one for the other port form) never does.
#[cfg(feature = "daemon")]
pub fn twilio_signature(data: &[u8]) {
    use gatewayd::auth_twilio::{signature, verify, verify_body};
    let raw = String::from_utf8_lossy(data);
    let mut parts = raw.splitn(3, '\n');
    let (url, form, header) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let params: Vec<(String, String)> = form
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let token = "fuzz-auth-token";
    let _ = verify(token, url, &params, header);
    let _ = verify_body(token, url, form.as_bytes(), header);
    let good = signature(token, url, &params);
    assert!(verify(token, url, &params, &good), "a computed signature verifies: {url:?}");
    assert!(!verify("another-token", url, &params, &good), "another token's signature never verifies");
}

/// Deepgram live results: one vendor message (text as the vendor's JSON, and the same bytes as
/// a binary message) through the `stt-deepgram` provider's parser, natively (in the daemon it
/// runs in the provider's sandbox).
pub fn deepgram_message(data: &[u8]) {
    use gatewayd_plugin::speech::WsMessage;
    use gatewayd_stt_deepgram::messages::events;
    if let Some(t) = text(data) {
        let _ = events(WsMessage::Text(t.to_string()), true);
        let _ = events(WsMessage::Text(t.to_string()), false);
    }
    let _ = events(WsMessage::Binary(data.to_vec()), true);
}

/// A TTS vendor's response body (`speech::convert::ToCall`) in every supported format, cut into
/// chunks whose sizes come from the input (empty ones included, as a body may frame them):
/// never a panic, at most the samples the bytes hold (resampled: their share at 8000 Hz plus
/// the resampler's tail), and at 8000 Hz the same samples however the body was cut.
#[cfg(feature = "daemon")]
pub fn tts_audio(data: &[u8]) {
    use gatewayd::speech::bindings::types::{AudioEncoding, AudioFormat};
    use gatewayd::speech::convert::ToCall;
    let Some((&cut, body)) = data.split_first() else { return };
    let formats = [
        (AudioEncoding::Mulaw, 8000),
        (AudioEncoding::Alaw, 8000),
        (AudioEncoding::PcmS16le, 8000),
        (AudioEncoding::PcmS16le, 16000),
        (AudioEncoding::PcmS16le, 24000),
        (AudioEncoding::Mulaw, 11025),
    ];
    for (encoding, sample_rate) in formats {
        let format = AudioFormat { encoding, sample_rate, channels: 1 };
        let decode = |sizes: &mut dyn Iterator<Item = usize>| {
            let mut to_call = ToCall::new(&format).expect("a supported format");
            let (mut out, mut rest) = (Vec::new(), body);
            while !rest.is_empty() {
                let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
                to_call.push(&rest[..n], &mut out);
                rest = &rest[n..];
            }
            to_call.finish(&mut out);
            out
        };
        let whole = decode(&mut std::iter::empty());
        // Chunk sizes 0..=cut % 8 + 1, each in turn from `cut`: small and odd, empty ones
        // included, and a non-empty one in every cycle (a step sharing a factor with the
        // modulus could give only empty chunks: `i * 7` with modulus 7 never ended).
        let modulus = usize::from(cut % 8) + 2;
        let cut_up = decode(&mut (0..).map(|i| (i + usize::from(cut)) % modulus));
        let bytes_per_sample = if encoding == AudioEncoding::PcmS16le { 2 } else { 1 };
        let samples = body.len() / bytes_per_sample;
        let bound = samples * 8000 / sample_rate as usize + 1024;
        assert!(cut_up.len() <= bound, "{} samples from {} bytes at {sample_rate} Hz", cut_up.len(), body.len());
        if sample_rate == 8000 {
            assert_eq!(whole, cut_up, "{encoding:?}: how the body was cut changed the audio");
        }
    }
}

/// A Twilio Media Streams text message, as the media engine takes it (`media::twilio::parse`)
/// and as the twilio plugin reads the ones it gets. Properties: never a panic; the audio of a
/// `media` message survives our own encoding of it (`media::twilio::media`) byte for byte.
#[cfg(feature = "daemon")]
pub fn twilio_stream(data: &[u8]) {
    use gatewayd::media::twilio::{Inbound, media, parse};
    let Some(t) = text(data) else { return };
    if let Ok(Inbound::Media(audio)) = parse(t) {
        let again = media("MZ0", &audio);
        let again = std::str::from_utf8(&again).expect("our messages are UTF-8");
        assert_eq!(parse(again), Ok(Inbound::Media(audio)), "re-encoded audio differs");
    }
    gatewayd_twilio::fuzzing::stream_message(t);
}

/// The telephony dashboard socket (telephony.md section 2) and Twilio's webhook bodies, through
/// the twilio plugin's decoders, natively.
pub fn telephony_dashboard(data: &[u8]) {
    if let Some(t) = text(data) {
        gatewayd_twilio::fuzzing::dashboard_message(t);
    }
    gatewayd_twilio::fuzzing::webhook_form(data);
}
