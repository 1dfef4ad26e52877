//! Text-to-speech provider for OpenAI's `/v1/audio/speech`, sans-IO.
//!
//! Each utterance is one `POST /v1/audio/speech` with `Authorization: Bearer <api_key>` (a
//! secret reference the host fills in) and the JSON body
//! `{"model","input","voice","response_format":"pcm","instructions"?,"speed"?}`. The response
//! body is raw PCM, signed 16-bit little-endian, 24000 Hz, mono; the host streams it into the
//! call, resampling to the call's rate.
//!
//! Configuration (`[plugins.<name>.config]`, every key optional): `base_url`
//! (`https://api.openai.com`), `model` (`gpt-4o-mini-tts`), `secret` (`api_key`),
//! `instructions` (voice direction; not sent to the `tts-1` models, which refuse it).

use gatewayd_plugin::speech::tts::{HttpTts, TtsOptions, TtsPlan};
use gatewayd_plugin::speech::{
    AudioExtract, AudioFormat, CloseAction, Disconnect, ErrorKind, Header, RequestPlan, SpeechError, TtsProvider,
    build_url, classify_refusal,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The longest `input` OpenAI accepts, in characters (documented: 4096).
pub const MAX_INPUT_CHARS: usize = 4096;
/// The longest `instructions` accepted, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 4096;
/// The longest voice name accepted, in bytes.
pub const MAX_VOICE_BYTES: usize = 64;
/// The speeds OpenAI accepts (documented: 0.25 to 4.0).
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;
/// The output: `response_format=pcm` is s16le at 24000 Hz, mono, without a header.
pub const OUTPUT: AudioFormat = AudioFormat::pcm_mono(24000);

/// The provider's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the API is: scheme, host, optional port and path prefix. Tests point it at a
    /// loopback fake.
    pub base_url: String,
    /// `model` when the session does not name one.
    pub model: String,
    /// The voice used when a call does not name one (`say` without a voice).
    pub default_voice: String,
    /// Name of the secret holding the API key, sent as `Authorization: Bearer`.
    pub secret: String,
    /// `instructions` of every request (tone, accent, pace), at most 4096 characters.
    pub instructions: Option<String>,
    /// Read by the host: secret name -> environment variable. Accepted here so the table may
    /// live in this section; the plugin never reads it.
    pub secret_env: Option<Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_url: "https://api.openai.com".into(),
            model: "gpt-4o-mini-tts".into(),
            default_voice: "alloy".into(),
            secret: "api_key".into(),
            instructions: None,
            secret_env: None,
        }
    }
}

impl Config {
    /// Check the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() || self.secret.is_empty() {
            return Err("model and secret must not be empty".into());
        }
        if self.instructions.as_ref().is_some_and(|i| i.chars().count() > MAX_INSTRUCTIONS_CHARS) {
            return Err(format!("instructions are over {MAX_INSTRUCTIONS_CHARS} characters"));
        }
        build_url(&self.base_url, &[], &[]).map(drop).map_err(|e| e.message)
    }
}

fn load_config() -> Result<Config, String> {
    let config: Config = gatewayd_plugin::config::load()?;
    config.validate().map(|()| config).map_err(|e| format!("plugin config: {e}"))
}

fn bad_request(message: impl Into<String>) -> SpeechError {
    SpeechError::new(ErrorKind::BadRequest, message)
}

/// One OpenAI voice on one call.
pub struct OpenAi {
    config: Result<Config, String>,
    options: TtsOptions,
}

impl OpenAi {
    /// A session with an already loaded configuration (`Err`: why it is invalid).
    pub fn with_config(config: Result<Config, String>, options: TtsOptions) -> OpenAi {
        OpenAi { config, options }
    }

    fn config(&self) -> Result<&Config, SpeechError> {
        self.config.as_ref().map_err(|e| SpeechError::new(ErrorKind::Config, e.clone()))
    }

    /// The request that speaks `text`.
    pub fn request(&self, text: &str) -> Result<RequestPlan, SpeechError> {
        let config = self.config()?;
        let o = &self.options;
        let voice = if o.voice.is_empty() { &config.default_voice } else { &o.voice };
        if voice.is_empty() || voice.len() > MAX_VOICE_BYTES {
            return Err(bad_request(format!("voice must be 1 to {MAX_VOICE_BYTES} bytes")));
        }
        if text.trim().is_empty() {
            return Err(bad_request("nothing to say: the text is empty"));
        }
        let chars = text.chars().count();
        if chars > MAX_INPUT_CHARS {
            return Err(bad_request(format!("text of {chars} characters is over OpenAI's {MAX_INPUT_CHARS}")));
        }
        let model = o.model.clone().unwrap_or_else(|| config.model.clone());
        let mut body = json!({"model": model, "input": text, "voice": voice, "response_format": "pcm"});
        if let Some(instructions) = &config.instructions
            && !model.starts_with("tts-1")
        {
            body["instructions"] = json!(instructions);
        }
        if let Some(speed) = o.speed {
            if !SPEED_RANGE.contains(&speed) {
                return Err(bad_request(format!("speed {speed} is outside 0.25..=4.0")));
            }
            body["speed"] = json!(speed);
        }
        Ok(RequestPlan {
            method: "POST".into(),
            url: build_url(&config.base_url, &["v1", "audio", "speech"], &[])?,
            headers: vec![
                Header::secret("authorization", &config.secret, "Bearer {}"),
                Header::literal("content-type", "application/json"),
            ],
            body: body.to_string().into_bytes(),
        })
    }
}

/// OpenAI's message in an error body, `{"error":{"message":..,"type":..,"code":..}}`, with the
/// code when there is one.
pub fn vendor_message(body: &Value) -> Option<String> {
    let error = &body["error"];
    let message = error["message"].as_str()?;
    Some(match error["code"].as_str() {
        Some(code) => format!("{code}: {message}"),
        None => message.to_string(),
    })
}

impl TtsProvider for OpenAi {
    fn init() -> Result<(), String> {
        load_config().map(drop)
    }

    /// OpenAI has one raw output (PCM 24000 Hz), so `wanted` is not consulted: the host takes
    /// PCM at any rate.
    fn new(options: TtsOptions, _wanted: Vec<AudioFormat>) -> Self {
        OpenAi::with_config(load_config(), options)
    }

    fn plan(&mut self) -> Result<TtsPlan, SpeechError> {
        self.config()?;
        Ok(TtsPlan::Http(HttpTts { output: OUTPUT, extract: AudioExtract::RawBody }))
    }

    fn speak(&mut self, text: String) -> Result<RequestPlan, SpeechError> {
        self.request(&text)
    }

    fn on_close(&mut self, reason: Disconnect) -> CloseAction {
        match reason {
            Disconnect::Refused(failure) => classify_refusal(&failure, vendor_message),
            Disconnect::Dropped(why) => CloseAction::Reconnect(SpeechError::new(
                ErrorKind::Unavailable,
                format!("OpenAI response dropped: {why}"),
            )),
            // No WebSocket in HTTP mode; a normal close is the end, anything else transient.
            Disconnect::Closed(close) if close.code == 1000 => CloseAction::Done,
            Disconnect::Closed(close) => CloseAction::Reconnect(SpeechError::new(
                ErrorKind::Unavailable,
                format!("OpenAI closed: {} {}", close.code, close.reason),
            )),
        }
    }
}

gatewayd_plugin::tts_provider!(OpenAi);

#[cfg(test)]
mod tests {
    use super::*;
    use gatewayd_plugin::speech::{AudioEncoding, HeaderValue, HttpFailure};

    fn options(voice: &str) -> TtsOptions {
        TtsOptions { voice: voice.into(), model: None, language: None, speed: None, extra: Vec::new() }
    }

    fn body(plan: &RequestPlan) -> Value {
        serde_json::from_slice(&plan.body).unwrap()
    }

    fn parse(json: &str) -> Result<Config, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn a_request_asks_for_pcm_24000_with_a_bearer_secret() {
        let mut s = OpenAi::with_config(Ok(Config::default()), options("alloy"));
        let TtsPlan::Http(http) = s.plan().unwrap() else { panic!() };
        assert_eq!(
            (http.output.encoding, http.output.sample_rate, http.output.channels),
            (AudioEncoding::PcmS16le, 24000, 1)
        );
        assert_eq!(http.extract, AudioExtract::RawBody);
        let plan = s.speak("Hello.".into()).unwrap();
        assert_eq!((plan.method.as_str(), plan.url.as_str()), ("POST", "https://api.openai.com/v1/audio/speech"));
        assert_eq!(
            body(&plan),
            json!({"model": "gpt-4o-mini-tts", "input": "Hello.", "voice": "alloy", "response_format": "pcm"})
        );
        let [auth, content_type] = plan.headers.as_slice() else { panic!("{:?}", plan.headers) };
        assert_eq!(auth.name, "authorization");
        assert!(matches!(&auth.value, HeaderValue::Secret(s) if s.name == "api_key" && s.template == "Bearer {}"));
        assert_eq!(content_type.value, HeaderValue::Literal("application/json".into()));
    }

    #[test]
    fn instructions_and_speed_are_sent_where_the_model_takes_them() {
        let config = Config {
            base_url: "http://127.0.0.1:4002/openai".into(),
            instructions: Some("Speak calmly.".into()),
            ..Config::default()
        };
        let s = OpenAi::with_config(Ok(config.clone()), TtsOptions { speed: Some(1.5), ..options("nova") });
        let plan = s.request("Hi").unwrap();
        assert_eq!(plan.url, "http://127.0.0.1:4002/openai/v1/audio/speech");
        assert_eq!(
            body(&plan),
            json!({"model": "gpt-4o-mini-tts", "input": "Hi", "voice": "nova", "response_format": "pcm",
                   "instructions": "Speak calmly.", "speed": 1.5})
        );
        let tts1 = OpenAi::with_config(Ok(config), TtsOptions { model: Some("tts-1-hd".into()), ..options("nova") });
        assert!(body(&tts1.request("Hi").unwrap()).get("instructions").is_none());
    }

    #[test]
    fn input_and_options_are_bounded() {
        let s = OpenAi::with_config(Ok(Config::default()), options("alloy"));
        assert!(s.request(&"é".repeat(MAX_INPUT_CHARS)).is_ok(), "the bound is in characters, not bytes");
        let e = s.request(&"a".repeat(MAX_INPUT_CHARS + 1)).unwrap_err();
        assert!(e.kind == ErrorKind::BadRequest && e.message.contains("4097 characters"), "{e:?}");
        assert_eq!(s.request(" \n").unwrap_err().kind, ErrorKind::BadRequest);
        for speed in [0.2, 4.5, f32::NAN] {
            let s = OpenAi::with_config(Ok(Config::default()), TtsOptions { speed: Some(speed), ..options("alloy") });
            assert_eq!(s.request("hi").unwrap_err().kind, ErrorKind::BadRequest, "speed {speed}");
        }
        // No voice: the configured default; none configured either: refused.
        let s = OpenAi::with_config(Ok(Config::default()), options(""));
        assert!(String::from_utf8(s.request("hi").unwrap().body).unwrap().contains("\"voice\":\"alloy\""));
        let no_default = Config { default_voice: String::new(), ..Config::default() };
        let s = OpenAi::with_config(Ok(no_default), options(""));
        assert_eq!(s.request("hi").unwrap_err().kind, ErrorKind::BadRequest);
        let mut broken = OpenAi::with_config(Err("bad".into()), options("alloy"));
        assert_eq!(broken.plan().unwrap_err().kind, ErrorKind::Config);
    }

    #[test]
    fn config_is_checked() {
        assert_eq!(parse("{}").unwrap().model, "gpt-4o-mini-tts");
        assert!(parse(r#"{"base_url": "openai"}"#).is_err());
        assert!(parse(r#"{"voice": "alloy"}"#).unwrap_err().contains("unknown field"));
        assert!(parse(&format!(r#"{{"instructions": "{}"}}"#, "x".repeat(MAX_INSTRUCTIONS_CHARS + 1))).is_err());
        assert!(parse(r#"{"secret_env": {"api_key": "OPENAI_API_KEY"}}"#).is_ok());
    }

    fn refused(status: u16, body: &str) -> Disconnect {
        Disconnect::Refused(HttpFailure {
            status,
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn refusals_carry_the_vendors_message() {
        let mut s = OpenAi::with_config(Ok(Config::default()), options("alloy"));
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-...","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        match s.on_close(refused(401, body)) {
            CloseAction::Fail(e) => {
                assert_eq!(e.kind, ErrorKind::Auth);
                assert_eq!(e.message, "HTTP 401: invalid_api_key: Incorrect API key provided: sk-...");
            }
            other => panic!("{other:?}"),
        }
        let body =
            r#"{"error":{"message":"[{'type': 'string_too_long'}]","type":"invalid_request_error","code":null}}"#;
        assert!(
            matches!(s.on_close(refused(400, body)), CloseAction::Fail(e) if e.message == "HTTP 400: [{'type': 'string_too_long'}]")
        );
        assert!(
            matches!(s.on_close(refused(429, r#"{"error":{"message":"Rate limit"}}"#)), CloseAction::Reconnect(e) if e.kind == ErrorKind::RateLimited)
        );
        assert!(
            matches!(s.on_close(refused(502, "<html>bad gateway</html>")), CloseAction::Reconnect(e) if e.message.contains("bad gateway"))
        );
        assert!(matches!(s.on_close(Disconnect::Dropped("eof".into())), CloseAction::Reconnect(_)));
    }

    #[test]
    fn websocket_and_in_process_calls_are_refused() {
        let mut s = OpenAi::with_config(Ok(Config::default()), options("alloy"));
        assert_eq!(s.push_text("c".into(), "hi".into(), false).unwrap_err().kind, ErrorKind::Unsupported);
        assert_eq!(s.synthesize("hi".into()).unwrap_err().kind, ErrorKind::Unsupported);
        assert_eq!(s.pull_audio(480).unwrap_err().kind, ErrorKind::Unsupported);
    }
}
