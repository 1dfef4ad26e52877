//! Speech-to-text provider for Deepgram's live streaming API (`/v1/listen`, WebSocket), sans-IO.
//!
//! The plan asks the host to open `wss://api.deepgram.com/v1/listen?...` with
//! `Authorization: Token <api_key>` (a secret reference the host fills in) and to send the
//! call's audio as binary frames of raw samples: mu-law 8000 Hz when the host offers it (a phone
//! call's own format, no transcoding), else linear16. The host sends `{"type":"KeepAlive"}` while
//! no audio flows (Deepgram closes a connection idle for 10 s with NET-0001). Vendor messages
//! become neutral events ([`messages`]); closes and refused upgrades are classified ([`close`]).
//!
//! Configuration: `[plugins.<name>.config]` ([`config::Config`]); the API key is the secret
//! `api_key` unless `secret` says otherwise.

pub mod close;
pub mod config;
pub mod messages;

use config::Config;
use gatewayd_plugin::speech::stt::{CommandOutput, SttCommand, SttEvent, SttOptions, SttPlan, WsStt};
use gatewayd_plugin::speech::{
    AudioEncoding, AudioFormat, AudioFraming, CloseAction, Disconnect, ErrorKind, Header, Keepalive, SpeechError,
    SttProvider, WsConnection, WsMessage, build_url, pick_format,
};

/// At most this many keyterms per stream.
pub const MAX_KEYTERMS: usize = 100;
/// At most this many bytes per keyterm.
pub const MAX_KEYTERM_BYTES: usize = 128;
/// At most this many `extra` query parameters.
pub const MAX_EXTRA: usize = 32;

/// One Deepgram live stream.
pub struct Deepgram {
    config: Result<Config, String>,
    options: SttOptions,
    offered: Vec<AudioFormat>,
    /// A `close` command was sent: the next close is the end of the stream.
    closing: bool,
}

impl Deepgram {
    /// A stream with an already loaded configuration (`Err`: why it is invalid).
    pub fn with_config(config: Result<Config, String>, options: SttOptions, offered: Vec<AudioFormat>) -> Deepgram {
        Deepgram { config, options, offered, closing: false }
    }
}

fn load_config() -> Result<Config, String> {
    let config: Config = gatewayd_plugin::config::load()?;
    config.validate().map(|()| config).map_err(|e| format!("plugin config: {e}"))
}

/// Whether Deepgram takes `format` as raw binary frames: mono linear16 or mu-law, 8 to 48 kHz.
fn accepts(format: &AudioFormat) -> bool {
    matches!(format.encoding, AudioEncoding::Mulaw | AudioEncoding::PcmS16le)
        && format.channels == 1
        && (8000..=48000).contains(&format.sample_rate)
}

/// Deepgram's name of an accepted encoding.
fn encoding_name(encoding: AudioEncoding) -> &'static str {
    match encoding {
        AudioEncoding::Mulaw => "mulaw",
        _ => "linear16",
    }
}

fn bad_request(message: String) -> SpeechError {
    SpeechError::new(ErrorKind::BadRequest, message)
}

impl Deepgram {
    /// The WebSocket plan for the current options.
    pub fn build_plan(&self) -> Result<SttPlan, SpeechError> {
        let config = self.config.as_ref().map_err(|e| SpeechError::new(ErrorKind::Config, e.clone()))?;
        let o = &self.options;
        let format = pick_format(&self.offered, accepts).ok_or_else(|| {
            SpeechError::new(ErrorKind::Unsupported, "Deepgram needs mono mu-law or linear16 at 8000 to 48000 Hz")
        })?;
        if o.keyterms.len() > MAX_KEYTERMS || o.keyterms.iter().any(|k| k.is_empty() || k.len() > MAX_KEYTERM_BYTES) {
            return Err(bad_request(format!("at most {MAX_KEYTERMS} keyterms of 1 to {MAX_KEYTERM_BYTES} bytes")));
        }
        if o.extra.len() > MAX_EXTRA
            || o.extra.iter().any(|(k, _)| k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(bad_request(format!("at most {MAX_EXTRA} extra parameters named with [A-Za-z0-9_]")));
        }
        let flag = |b: bool| if b { "true" } else { "false" }.to_string();
        // UtteranceEnd needs interim results on the wire; the host may still not want them.
        let interim = o.interim_results || o.utterance_end_ms.is_some();
        let mut query: Vec<(&str, String)> = vec![
            ("model", o.model.clone().unwrap_or_else(|| config.model.clone())),
            ("encoding", encoding_name(format.encoding).into()),
            ("sample_rate", format.sample_rate.to_string()),
            ("channels", "1".into()),
            ("interim_results", flag(interim)),
        ];
        if let Some(ms) = o.endpointing_ms {
            query.push(("endpointing", if ms == 0 { "false".into() } else { ms.to_string() }));
        }
        if let Some(ms) = o.utterance_end_ms {
            query.push(("utterance_end_ms", ms.to_string()));
        }
        query.push(("vad_events", flag(config.vad_events)));
        query.push(("punctuate", flag(config.punctuate)));
        query.push(("smart_format", flag(config.smart_format)));
        if let Some(language) = &o.language {
            query.push(("language", language.clone()));
        }
        query.extend(o.keyterms.iter().map(|k| ("keyterm", k.clone())));
        query.extend(o.extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let url = build_url(&config.base_url, &["v1", "listen"], &query)?;
        Ok(SttPlan::Websocket(WsStt {
            connection: WsConnection {
                url,
                headers: vec![Header::secret("authorization", &config.secret, &format!("{} {{}}", config.auth_scheme))],
                subprotocols: Vec::new(),
                on_open: Vec::new(),
                keepalive: Some(Keepalive {
                    interval_ms: config.keepalive_ms,
                    message: control("KeepAlive"),
                    while_streaming: false,
                }),
            },
            send_format: format,
            framing: AudioFraming::Binary,
            chunk_ms: config.chunk_ms,
        }))
    }
}

/// A control message: `{"type":"<kind>"}` in a text frame (Deepgram requires text frames).
fn control(kind: &str) -> WsMessage {
    WsMessage::json(&serde_json::json!({ "type": kind }))
}

impl SttProvider for Deepgram {
    fn init() -> Result<(), String> {
        load_config().map(drop)
    }

    fn new(options: SttOptions, offered: Vec<AudioFormat>) -> Self {
        Deepgram::with_config(load_config(), options, offered)
    }

    fn plan(&mut self) -> Result<SttPlan, SpeechError> {
        self.closing = false;
        self.build_plan()
    }

    fn on_message(&mut self, message: WsMessage) -> Vec<SttEvent> {
        messages::events(message, self.options.interim_results)
    }

    fn command(&mut self, command: SttCommand) -> CommandOutput {
        let send = match command {
            SttCommand::Finalize => control("Finalize"),
            SttCommand::Close => {
                self.closing = true;
                control("CloseStream")
            }
        };
        CommandOutput { send: vec![send], events: Vec::new() }
    }

    fn on_close(&mut self, reason: Disconnect) -> CloseAction {
        close::classify(&reason, self.closing)
    }
}

gatewayd_plugin::stt_provider!(Deepgram);

#[cfg(test)]
mod tests {
    use super::*;
    use gatewayd_plugin::speech::HeaderValue;

    fn stream(options: SttOptions, offered: Vec<AudioFormat>) -> Deepgram {
        Deepgram::with_config(Ok(Config::default()), options, offered)
    }

    fn ws(plan: SttPlan) -> WsStt {
        match plan {
            SttPlan::Websocket(ws) => ws,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_phone_call_streams_mulaw_8000_without_transcoding() {
        let options = SttOptions {
            language: Some("en-US".into()),
            endpointing_ms: Some(300),
            utterance_end_ms: Some(1000),
            keyterms: vec!["gatewayd".into(), "two words".into()],
            ..SttOptions::default()
        };
        let plan =
            ws(stream(options, vec![AudioFormat::MULAW_8000, AudioFormat::pcm_mono(16000)]).build_plan().unwrap());
        assert_eq!(
            plan.connection.url,
            "wss://api.deepgram.com/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000&channels=1\
             &interim_results=true&endpointing=300&utterance_end_ms=1000&vad_events=true&punctuate=true\
             &smart_format=true&language=en-US&keyterm=gatewayd&keyterm=two+words"
        );
        assert_eq!(plan.send_format, AudioFormat::MULAW_8000);
        assert_eq!((plan.framing, plan.chunk_ms), (AudioFraming::Binary, 40));
        let [header] = plan.connection.headers.as_slice() else { panic!() };
        assert_eq!(header.name, "authorization");
        let HeaderValue::Secret(secret) = &header.value else { panic!("{header:?}") };
        assert_eq!((secret.name.as_str(), secret.template.as_str()), ("api_key", "Token {}"));
        let keepalive = plan.connection.keepalive.unwrap();
        assert!(keepalive.interval_ms <= 5000 && !keepalive.while_streaming);
        assert_eq!(keepalive.message, WsMessage::Text(r#"{"type":"KeepAlive"}"#.into()));
        assert!(plan.connection.on_open.is_empty() && plan.connection.subprotocols.is_empty());
    }

    #[test]
    fn options_and_config_shape_the_query() {
        let config = Config {
            base_url: "ws://127.0.0.1:4000".into(),
            model: "nova-2".into(),
            punctuate: false,
            smart_format: false,
            vad_events: false,
            auth_scheme: "Bearer".into(),
            ..Config::default()
        };
        let options = SttOptions {
            model: Some("nova-3-medical".into()),
            interim_results: false,
            endpointing_ms: Some(0),
            extra: vec![("diarize".into(), "true".into())],
            ..SttOptions::default()
        };
        let plan =
            ws(Deepgram::with_config(Ok(config), options, vec![AudioFormat::pcm_mono(16000)]).build_plan().unwrap());
        assert_eq!(
            plan.connection.url,
            "ws://127.0.0.1:4000/v1/listen?model=nova-3-medical&encoding=linear16&sample_rate=16000&channels=1\
             &interim_results=false&endpointing=false&vad_events=false&punctuate=false&smart_format=false&diarize=true"
        );
        assert!(matches!(&plan.connection.headers[0].value, HeaderValue::Secret(s) if s.template == "Bearer {}"));
    }

    #[test]
    fn utterance_end_asks_deepgram_for_interims_but_the_host_does_not_get_them() {
        let options = SttOptions { interim_results: false, utterance_end_ms: Some(1000), ..SttOptions::default() };
        let mut dg = stream(options, vec![AudioFormat::MULAW_8000]);
        assert!(ws(dg.plan().unwrap()).connection.url.contains("interim_results=true&utterance_end_ms=1000"));
        let interim = r#"{"type":"Results","is_final":false,"channel":{"alternatives":[{"transcript":"hel"}]}}"#;
        assert!(dg.on_message(WsMessage::Text(interim.into())).is_empty());
    }

    #[test]
    fn unusable_formats_options_and_config_are_errors() {
        let kind = |dg: Deepgram| dg.build_plan().unwrap_err().kind;
        let stereo = AudioFormat { channels: 2, ..AudioFormat::MULAW_8000 };
        let alaw = AudioFormat { encoding: AudioEncoding::Alaw, ..AudioFormat::MULAW_8000 };
        assert_eq!(kind(stream(SttOptions::default(), vec![stereo, alaw])), ErrorKind::Unsupported);
        assert_eq!(kind(stream(SttOptions::default(), vec![])), ErrorKind::Unsupported);
        let many = SttOptions { keyterms: vec!["k".into(); MAX_KEYTERMS + 1], ..SttOptions::default() };
        assert_eq!(kind(stream(many, vec![AudioFormat::MULAW_8000])), ErrorKind::BadRequest);
        let long = SttOptions { keyterms: vec!["k".repeat(MAX_KEYTERM_BYTES + 1)], ..SttOptions::default() };
        assert_eq!(kind(stream(long, vec![AudioFormat::MULAW_8000])), ErrorKind::BadRequest);
        let injected = SttOptions { extra: vec![("a&b".into(), "1".into())], ..SttOptions::default() };
        assert_eq!(kind(stream(injected, vec![AudioFormat::MULAW_8000])), ErrorKind::BadRequest);
        let broken = Deepgram::with_config(Err("bad".into()), SttOptions::default(), vec![AudioFormat::MULAW_8000]);
        assert_eq!(kind(broken), ErrorKind::Config);
    }

    #[test]
    fn commands_are_deepgram_control_messages() {
        let mut dg = stream(SttOptions::default(), vec![AudioFormat::MULAW_8000]);
        let finalize = dg.command(SttCommand::Finalize);
        assert_eq!(finalize.send, [WsMessage::Text(r#"{"type":"Finalize"}"#.into())]);
        assert!(finalize.events.is_empty());
        // Before CloseStream a normal close means the stream must go on; after it, it is done.
        let normal = || Disconnect::Closed(gatewayd_plugin::speech::WsClose { code: 1000, reason: String::new() });
        assert!(matches!(dg.on_close(normal()), CloseAction::Reconnect(_)));
        assert_eq!(dg.command(SttCommand::Close).send, [WsMessage::Text(r#"{"type":"CloseStream"}"#.into())]);
        assert_eq!(dg.on_close(normal()), CloseAction::Done);
        // A new connection (plan) starts a new stream.
        dg.plan().unwrap();
        assert!(matches!(dg.on_close(normal()), CloseAction::Reconnect(_)));
    }

    #[test]
    fn push_audio_is_refused_by_a_remote_provider() {
        let mut dg = stream(SttOptions::default(), vec![AudioFormat::MULAW_8000]);
        assert_eq!(dg.push_audio(vec![0; 1600]).unwrap_err().kind, ErrorKind::Unsupported);
    }
}
