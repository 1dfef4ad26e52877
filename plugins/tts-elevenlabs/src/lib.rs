//! Text-to-speech provider for ElevenLabs' streaming HTTP API, sans-IO.
//!
//! Each utterance is one `POST /v1/text-to-speech/{voice_id}/stream?output_format=ulaw_8000`
//! with `xi-api-key` (a secret reference the host fills in) and a JSON body; the response body
//! is the audio, which the host streams into the call as it arrives. For a phone call the
//! output is mu-law 8000 Hz, the call's own format, so nothing is transcoded.
//!
//! Configuration: `[plugins.<name>.config]` ([`config::Config`]); the API key is the secret
//! `api_key` unless `secret` says otherwise.

pub mod config;

use config::Config;
use gatewayd_plugin::speech::tts::{HttpTts, TtsOptions, TtsPlan};
use gatewayd_plugin::speech::{
    AudioEncoding, AudioExtract, AudioFormat, CloseAction, Disconnect, ErrorKind, Header, RequestPlan, SpeechError,
    TtsProvider, build_url, classify_refusal, pick_format,
};
use serde_json::{Value, json};

/// At most this many `extra` query parameters.
pub const MAX_EXTRA: usize = 16;
/// The longest voice id accepted, in bytes (ElevenLabs ids are 20 characters).
pub const MAX_VOICE_BYTES: usize = 128;

/// One ElevenLabs voice on one call.
pub struct ElevenLabs {
    config: Result<Config, String>,
    options: TtsOptions,
    wanted: Vec<AudioFormat>,
}

fn load_config() -> Result<Config, String> {
    let config: Config = gatewayd_plugin::config::load()?;
    config.validate().map(|()| config).map_err(|e| format!("plugin config: {e}"))
}

/// ElevenLabs' `output_format` for `format`, when it produces it (raw formats only: mp3 and
/// Opus come in containers the host would have to parse).
pub fn output_format(format: &AudioFormat) -> Option<String> {
    if format.channels != 1 {
        return None;
    }
    match (format.encoding, format.sample_rate) {
        (AudioEncoding::Mulaw, 8000) => Some("ulaw_8000".into()),
        (AudioEncoding::Alaw, 8000) => Some("alaw_8000".into()),
        (AudioEncoding::PcmS16le, rate @ (8000 | 16000 | 22050 | 24000 | 32000 | 44100 | 48000)) => {
            Some(format!("pcm_{rate}"))
        }
        _ => None,
    }
}

fn bad_request(message: impl Into<String>) -> SpeechError {
    SpeechError::new(ErrorKind::BadRequest, message)
}

impl ElevenLabs {
    /// A session with an already loaded configuration (`Err`: why it is invalid).
    pub fn with_config(config: Result<Config, String>, options: TtsOptions, wanted: Vec<AudioFormat>) -> ElevenLabs {
        ElevenLabs { config, options, wanted }
    }

    fn config(&self) -> Result<&Config, SpeechError> {
        self.config.as_ref().map_err(|e| SpeechError::new(ErrorKind::Config, e.clone()))
    }

    /// The output format: the first wanted one ElevenLabs produces, else PCM 16000 Hz.
    fn output(&self) -> AudioFormat {
        pick_format(&self.wanted, |f| output_format(f).is_some()).unwrap_or(AudioFormat::pcm_mono(16000))
    }

    /// The request that speaks `text`.
    pub fn request(&self, text: &str) -> Result<RequestPlan, SpeechError> {
        let config = self.config()?;
        let o = &self.options;
        let voice = if o.voice.is_empty() { config.default_voice.as_deref().unwrap_or_default() } else { &o.voice };
        if voice.is_empty() || voice.len() > MAX_VOICE_BYTES {
            return Err(bad_request(format!("voice id must be 1 to {MAX_VOICE_BYTES} bytes (or set default_voice)")));
        }
        if text.trim().is_empty() {
            return Err(bad_request("nothing to say: the text is empty"));
        }
        let chars = text.chars().count();
        if chars > config.max_text_chars {
            return Err(bad_request(format!("text of {chars} characters is over the {} bound", config.max_text_chars)));
        }
        if o.extra.len() > MAX_EXTRA
            || o.extra.iter().any(|(k, _)| k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(bad_request(format!("at most {MAX_EXTRA} extra parameters named with [A-Za-z0-9_]")));
        }
        let format = output_format(&self.output()).expect("the output is one ElevenLabs produces");
        let mut query: Vec<(&str, String)> = vec![("output_format", format)];
        if let Some(level) = config.optimize_streaming_latency {
            query.push(("optimize_streaming_latency", level.to_string()));
        }
        if let Some(logging) = config.enable_logging {
            query.push(("enable_logging", logging.to_string()));
        }
        query.extend(o.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let url = build_url(&config.base_url, &["v1", "text-to-speech", voice, "stream"], &query)?;

        let mut body = json!({
            "text": text,
            "model_id": o.model.clone().unwrap_or_else(|| config.model_id.clone()),
        });
        if let Some(language) = &o.language {
            body["language_code"] = json!(language);
        }
        let mut settings = config.voice_settings.clone();
        if let Some(speed) = o.speed {
            settings.get_or_insert_with(Default::default).speed = Some(speed);
        }
        if let Some(settings) = settings {
            body["voice_settings"] = serde_json::to_value(settings).unwrap_or(Value::Null);
        }
        if let Some(n) = &config.apply_text_normalization {
            body["apply_text_normalization"] = json!(n);
        }
        Ok(RequestPlan {
            method: "POST".into(),
            url,
            headers: vec![
                Header::secret("xi-api-key", &config.secret, "{}"),
                Header::literal("content-type", "application/json"),
            ],
            body: body.to_string().into_bytes(),
        })
    }
}

/// The vendor's message in an error body: `{"detail":{"status":..,"message":..}}` (the shape
/// is assumed from memory; the SDK only surfaces the status and body), or FastAPI's
/// `{"detail":"text"}` / `{"detail":[{"msg":..}]}` for validation errors.
pub fn vendor_message(body: &Value) -> Option<String> {
    let detail = &body["detail"];
    if let Some(message) = detail["message"].as_str() {
        return Some(match detail["status"].as_str() {
            Some(status) => format!("{status}: {message}"),
            None => message.to_string(),
        });
    }
    detail.as_str().map(str::to_string).or_else(|| detail[0]["msg"].as_str().map(str::to_string))
}

impl TtsProvider for ElevenLabs {
    fn init() -> Result<(), String> {
        load_config().map(drop)
    }

    fn new(options: TtsOptions, wanted: Vec<AudioFormat>) -> Self {
        ElevenLabs::with_config(load_config(), options, wanted)
    }

    fn plan(&mut self) -> Result<TtsPlan, SpeechError> {
        self.config()?;
        Ok(TtsPlan::Http(HttpTts { output: self.output(), extract: AudioExtract::RawBody }))
    }

    fn speak(&mut self, text: String) -> Result<RequestPlan, SpeechError> {
        self.request(&text)
    }

    fn on_close(&mut self, reason: Disconnect) -> CloseAction {
        match reason {
            Disconnect::Refused(failure) => classify_refusal(&failure, vendor_message),
            Disconnect::Dropped(why) => CloseAction::Reconnect(SpeechError::new(
                ErrorKind::Unavailable,
                format!("ElevenLabs response dropped: {why}"),
            )),
            // No WebSocket in HTTP mode; a normal close is the end, anything else transient.
            Disconnect::Closed(close) if close.code == 1000 => CloseAction::Done,
            Disconnect::Closed(close) => CloseAction::Reconnect(SpeechError::new(
                ErrorKind::Unavailable,
                format!("ElevenLabs closed: {} {}", close.code, close.reason),
            )),
        }
    }
}

gatewayd_plugin::tts_provider!(ElevenLabs);

#[cfg(test)]
mod tests {
    use super::*;
    use config::VoiceSettings;
    use gatewayd_plugin::speech::{HeaderValue, HttpFailure, WsMessage};

    fn options(voice: &str) -> TtsOptions {
        TtsOptions { voice: voice.into(), model: None, language: None, speed: None, extra: Vec::new() }
    }

    fn session(config: Config, options: TtsOptions) -> ElevenLabs {
        ElevenLabs::with_config(Ok(config), options, vec![AudioFormat::MULAW_8000, AudioFormat::pcm_mono(16000)])
    }

    fn body(plan: &RequestPlan) -> Value {
        serde_json::from_slice(&plan.body).unwrap()
    }

    #[test]
    fn a_phone_call_gets_ulaw_8000_as_a_raw_body() {
        let mut s = session(Config::default(), options("21m00Tcm4TlvDq8ikWAM"));
        let TtsPlan::Http(http) = s.plan().unwrap() else { panic!() };
        assert_eq!(http.output, AudioFormat::MULAW_8000);
        assert_eq!(http.extract, AudioExtract::RawBody);
        let plan = s.speak("Hello there.".into()).unwrap();
        assert_eq!(plan.method, "POST");
        assert_eq!(
            plan.url,
            "https://api.elevenlabs.io/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream?output_format=ulaw_8000"
        );
        assert_eq!(body(&plan), json!({"text": "Hello there.", "model_id": "eleven_flash_v2_5"}));
        let [key, content_type] = plan.headers.as_slice() else { panic!("{:?}", plan.headers) };
        assert_eq!(key.name, "xi-api-key");
        assert!(matches!(&key.value, HeaderValue::Secret(s) if s.name == "api_key" && s.template == "{}"));
        assert_eq!(content_type.value, HeaderValue::Literal("application/json".into()));
    }

    #[test]
    fn config_and_options_shape_the_request() {
        let config = Config {
            base_url: "http://127.0.0.1:4001/".into(),
            voice_settings: Some(VoiceSettings { stability: Some(0.4), speed: Some(0.9), ..Default::default() }),
            apply_text_normalization: Some("off".into()),
            optimize_streaming_latency: Some(3),
            enable_logging: Some(false),
            ..Config::default()
        };
        let options = TtsOptions {
            model: Some("eleven_multilingual_v2".into()),
            language: Some("de".into()),
            speed: Some(1.1),
            extra: vec![("seed".into(), "7".into())],
            ..options("voice/../x")
        };
        let mut s = ElevenLabs::with_config(Ok(config), options, vec![AudioFormat::pcm_mono(24000)]);
        let TtsPlan::Http(http) = s.plan().unwrap() else { panic!() };
        assert_eq!(http.output, AudioFormat::pcm_mono(24000));
        let plan = s.speak("Guten Tag".into()).unwrap();
        assert_eq!(
            plan.url,
            "http://127.0.0.1:4001/v1/text-to-speech/voice%2F..%2Fx/stream?output_format=pcm_24000\
             &optimize_streaming_latency=3&enable_logging=false&seed=7"
        );
        assert_eq!(
            body(&plan),
            json!({"text": "Guten Tag", "model_id": "eleven_multilingual_v2", "language_code": "de",
                   "voice_settings": {"stability": 0.4f32, "speed": 1.1f32}, "apply_text_normalization": "off"})
        );
    }

    #[test]
    fn unproducible_formats_fall_back_to_pcm_16000() {
        let mp3 = AudioFormat { encoding: AudioEncoding::Mp3, sample_rate: 44100, channels: 1 };
        let mut s = ElevenLabs::with_config(Ok(Config::default()), options("v"), vec![mp3]);
        let TtsPlan::Http(http) = s.plan().unwrap() else { panic!() };
        assert_eq!(http.output, AudioFormat::pcm_mono(16000));
        assert!(s.speak("hi".into()).unwrap().url.ends_with("output_format=pcm_16000"));
    }

    #[test]
    fn text_and_options_are_bounded() {
        let mut s = session(Config { max_text_chars: 10, ..Config::default() }, options("v"));
        assert!(s.speak("é".repeat(10)).is_ok(), "the bound is in characters, not bytes");
        let e = s.speak("é".repeat(11)).unwrap_err();
        assert!(e.kind == ErrorKind::BadRequest && e.message.contains("11 characters"), "{e:?}");
        assert_eq!(s.speak("  ".into()).unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(session(Config::default(), options("")).speak("hi".into()).unwrap_err().kind, ErrorKind::BadRequest);
        let long_voice = options(&"v".repeat(MAX_VOICE_BYTES + 1));
        assert_eq!(session(Config::default(), long_voice).speak("hi".into()).unwrap_err().kind, ErrorKind::BadRequest);
        let injected = TtsOptions { extra: vec![("a=b".into(), "c".into())], ..options("v") };
        assert_eq!(session(Config::default(), injected).speak("hi".into()).unwrap_err().kind, ErrorKind::BadRequest);
        let mut broken = ElevenLabs::with_config(Err("bad".into()), options("v"), vec![]);
        assert_eq!(broken.plan().unwrap_err().kind, ErrorKind::Config);
        assert_eq!(broken.speak("hi".into()).unwrap_err().kind, ErrorKind::Config);
    }

    fn refused(status: u16, body: &str) -> Disconnect {
        Disconnect::Refused(HttpFailure { status, content_type: None, body: body.as_bytes().to_vec() })
    }

    #[test]
    fn refusals_carry_the_vendors_message() {
        let mut s = session(Config::default(), options("v"));
        let body = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;
        match s.on_close(refused(401, body)) {
            CloseAction::Fail(e) => {
                assert_eq!(
                    (e.kind, e.message.as_str()),
                    (ErrorKind::Auth, "HTTP 401: invalid_api_key: Invalid API key")
                )
            }
            other => panic!("{other:?}"),
        }
        match s.on_close(refused(422, r#"{"detail":[{"loc":["body","text"],"msg":"field required"}]}"#)) {
            CloseAction::Fail(e) => {
                assert_eq!((e.kind, e.message.as_str()), (ErrorKind::BadRequest, "HTTP 422: field required"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(s.on_close(refused(429, r#"{"detail":"busy"}"#)), CloseAction::Reconnect(e) if e.message == "HTTP 429: busy")
        );
        assert!(matches!(s.on_close(refused(500, "")), CloseAction::Reconnect(e) if e.kind == ErrorKind::Unavailable));
        assert!(matches!(s.on_close(Disconnect::Dropped("reset".into())), CloseAction::Reconnect(_)));
    }

    #[test]
    fn websocket_and_in_process_calls_are_refused_or_empty() {
        let mut s = session(Config::default(), options("v"));
        assert_eq!(s.push_text("c".into(), "hi".into(), true).unwrap_err().kind, ErrorKind::Unsupported);
        assert_eq!(s.synthesize("hi".into()).unwrap_err().kind, ErrorKind::Unsupported);
        assert_eq!(s.pull_audio(160).unwrap_err().kind, ErrorKind::Unsupported);
        assert!(s.finish("c".into()).is_empty());
        let cancel = s.cancel("c".into());
        assert!(cancel.send.is_empty() && !cancel.reconnect);
        assert!(s.on_message(WsMessage::Text("{}".into())).is_empty());
    }
}
