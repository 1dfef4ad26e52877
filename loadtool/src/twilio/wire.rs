//! What travels between Twilio and the gateway, as data: ids, the signed webhook form, the
//! URLs, the TwiML answer and the Media Streams messages (telephony research notes section 4).
//! No sockets here.

use base64::Engine as _;
use serde_json::{Value, json};

/// Path of the incoming-call webhook (twilio-brief.md, URLs).
pub const VOICE_PATH: &str = "/api/telephony/twilio/voice";
/// Path of the status callback.
pub const STATUS_PATH: &str = "/api/telephony/twilio/status";
/// Path of the agent dashboard socket.
pub const DASHBOARD_PATH: &str = "/api/ws/telephony/stream";
/// The `ApiVersion` Twilio sends.
pub const API_VERSION: &str = "2010-04-01";
/// The development auth token (`config/gatewayd.toml`'s `[twilio] auth_token`).
pub const DEV_AUTH_TOKEN: &str = "gatewayd-development-twilio-token";

/// A Twilio id: a two-letter prefix and 32 lowercase hex digits (`CA…`, `MZ…`, `AC…`).
pub fn sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The three ids of one simulated call.
#[derive(Debug, Clone)]
pub struct CallIds {
    pub account_sid: String,
    pub call_sid: String,
    pub stream_sid: String,
}

impl CallIds {
    /// New call and stream ids under `account_sid` (a new account id when `None`).
    pub fn new(account_sid: Option<&str>) -> CallIds {
        CallIds {
            account_sid: account_sid.map_or_else(|| sid("AC"), str::to_string),
            call_sid: sid("CA"),
            stream_sid: sid("MZ"),
        }
    }
}

/// The form of the "a call comes in" webhook.
pub fn voice_form(ids: &CallIds, from: &str, to: &str) -> Vec<(String, String)> {
    pairs(&[
        ("AccountSid", &ids.account_sid),
        ("ApiVersion", API_VERSION),
        ("CallSid", &ids.call_sid),
        ("CallStatus", "ringing"),
        ("Called", to),
        ("Caller", from),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ])
}

/// The form of the status callback that ends the call (`CallStatus=completed`).
pub fn status_form(ids: &CallIds, from: &str, to: &str, duration_secs: u64) -> Vec<(String, String)> {
    pairs(&[
        ("AccountSid", &ids.account_sid),
        ("ApiVersion", API_VERSION),
        ("CallDuration", &duration_secs.to_string()),
        ("CallSid", &ids.call_sid),
        ("CallStatus", "completed"),
        ("Called", to),
        ("Caller", from),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ])
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `application/x-www-form-urlencoded` body of `form`.
pub fn form_body(form: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish()
}

/// The `X-Twilio-Signature` of a request to `url` with form `params` (none for the Media
/// Streams upgrade), as Twilio computes it: the daemon's own implementation.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    gatewayd::auth_twilio::signature(auth_token, url, params)
}

/// Where the daemon is and where Twilio believes it is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `host:port` the tool connects to (from `--base`, plain HTTP).
    pub authority: String,
    /// `--base` without a trailing `/` (`http://host:port`).
    pub base: String,
    /// `--public-base-url` without a trailing `/`: what Twilio signs webhooks with.
    pub public: String,
}

impl Endpoints {
    /// Check `base` (`http://host[:port]`, no path) and `public` (`http(s)://host[:port]`,
    /// no path; `None` = `base`).
    pub fn new(base: &str, public: Option<&str>) -> anyhow::Result<Endpoints> {
        let base = base.trim_end_matches('/');
        let Some(authority) = base.strip_prefix("http://") else {
            anyhow::bail!(
                "--base `{base}` must start with http:// (the tool speaks plain HTTP; point it at the \
                 daemon's listener, and give the TLS address Twilio uses as --public-base-url)"
            );
        };
        if authority.is_empty() || authority.contains(['/', '?', '#']) {
            anyhow::bail!("--base `{base}` must be a scheme, host and port only");
        }
        let public = public.unwrap_or(base).trim_end_matches('/');
        let rest = public.strip_prefix("http://").or_else(|| public.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(['/', '?', '#'])) {
            anyhow::bail!("--public-base-url `{public}` must be http(s)://host[:port] with no path");
        }
        let has_port = if authority.starts_with('[') { authority.contains("]:") } else { authority.contains(':') };
        let authority = if has_port { authority.to_string() } else { format!("{authority}:80") };
        Ok(Endpoints { authority, base: base.to_string(), public: public.to_string() })
    }

    /// The public URL of `path` (what Twilio signs).
    pub fn public_url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    /// Where to open a Media Stream the TwiML names: a URL under the public base (`ws`/`wss`
    /// form) is reached through `--base`; any other `ws://` URL as it is. Err: a `wss://` URL
    /// outside the public base (the tool has no TLS client).
    pub fn stream_target(&self, stream_url: &str) -> anyhow::Result<String> {
        let public_ws = ws_form(&self.public);
        if let Some(rest) = stream_url.strip_prefix(&public_ws)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return Ok(format!("{}{rest}", ws_form(&self.base)));
        }
        if stream_url.starts_with("ws://") {
            return Ok(stream_url.to_string());
        }
        anyhow::bail!(
            "the TwiML's Stream url `{stream_url}` is neither under --public-base-url ({public_ws}) nor plain ws://"
        )
    }

    /// The dashboard socket for `call_id` with `token`.
    pub fn dashboard_url(&self, token: &str, call_id: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("call_id", call_id)
            .append_pair("client_type", "telephony")
            .finish();
        format!("{}{DASHBOARD_PATH}?{query}", ws_form(&self.base))
    }
}

/// `http…` -> `ws…`, `https…` -> `wss…` (other URLs unchanged).
pub fn ws_form(url: &str) -> String {
    if let Some(r) = url.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = url.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        url.to_string()
    }
}

/// What the TwiML answer tells Twilio to do with the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Twiml {
    /// `<Connect><Stream url>`: open a bidirectional Media Stream with these `<Parameter>`s.
    Stream { url: String, parameters: Vec<(String, String)> },
    /// `<Reject>` (its `reason`, if any) or `<Hangup>` before any stream: the call ends.
    Refused { verb: String, reason: Option<String> },
}

/// Why a TwiML answer cannot be played.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TwimlError {
    /// Not well-formed XML (or a DTD, which Twilio's parser does not take either).
    #[error("the TwiML is not well-formed XML: {0}")]
    Xml(String),
    /// The root element is not `<Response>`.
    #[error("the TwiML's root element is <{0}>, not <Response>")]
    NotResponse(String),
    /// `<Connect>` without a `<Stream>` child, or a `<Stream>` without a `url`.
    #[error("<Connect> needs a <Stream url=\"ws(s)://…\"> (got: {0})")]
    BadStream(String),
    /// A `<Stream>` URL with a query string (Twilio error 31920) or not `ws://`/`wss://`.
    #[error("the Stream url `{0}` must be ws:// or wss:// with no query string (Twilio 31920)")]
    BadStreamUrl(String),
    /// `<Start><Stream>`: a one-way stream, which this bidirectional simulator does not play.
    #[error("<Start><Stream> is a one-way stream; the gateway must answer <Connect><Stream>")]
    OneWay,
    /// None of the verbs starts a stream or ends the call.
    #[error("the TwiML has no <Connect><Stream> (verbs: {0})")]
    NoStream(String),
}

/// Read a TwiML answer: the verbs in order until one connects a stream or ends the call
/// (`<Say>`, `<Pause>` and the like before it are skipped, as nothing would be heard).
pub fn parse_twiml(xml: &str) -> Result<Twiml, TwimlError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| TwimlError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Response" {
        return Err(TwimlError::NotResponse(root.tag_name().name().to_string()));
    }
    let mut seen = Vec::new();
    for verb in root.children().filter(|n| n.is_element()) {
        let name = verb.tag_name().name();
        match name {
            "Reject" | "Hangup" => {
                return Ok(Twiml::Refused {
                    verb: name.to_string(),
                    reason: verb.attribute("reason").map(str::to_string),
                });
            }
            "Connect" => {
                let Some(stream) = verb.children().find(|n| n.is_element() && n.tag_name().name() == "Stream") else {
                    return Err(TwimlError::BadStream("<Connect> without <Stream>".into()));
                };
                let url = stream.attribute("url").map(str::trim).unwrap_or_default();
                if url.is_empty() {
                    return Err(TwimlError::BadStream("<Stream> without url".into()));
                }
                if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.contains('?') {
                    return Err(TwimlError::BadStreamUrl(url.to_string()));
                }
                let parameters = stream
                    .children()
                    .filter(|n| n.is_element() && n.tag_name().name() == "Parameter")
                    .filter_map(|p| Some((p.attribute("name")?.to_string(), p.attribute("value")?.to_string())))
                    .collect();
                return Ok(Twiml::Stream { url: url.to_string(), parameters });
            }
            "Start" if verb.children().any(|n| n.is_element() && n.tag_name().name() == "Stream") => {
                return Err(TwimlError::OneWay);
            }
            _ => seen.push(format!("<{name}>")),
        }
    }
    Err(TwimlError::NoStream(if seen.is_empty() { "none".into() } else { seen.join(", ") }))
}

/// One message the gateway sent on the Media Stream.
#[derive(Debug, Clone, PartialEq)]
pub enum FromGateway {
    /// `media`: audio for the caller (mu-law bytes).
    Media { stream_sid: Option<String>, audio: Vec<u8> },
    /// `mark`: echo `name` once the audio sent before it has played.
    Mark { stream_sid: Option<String>, name: String },
    /// `clear`: drop the audio not yet played; echo the pending marks.
    Clear { stream_sid: Option<String> },
    /// Any other `event` (Twilio would report error 31951/31924).
    Other(String),
    /// Not JSON, no `event`, or a `media` without base64 payload / a `mark` without name.
    Invalid(String),
}

/// Read one text message of the gateway.
pub fn parse_from_gateway(text: &str) -> FromGateway {
    let Ok(v) = serde_json::from_str::<Value>(text) else { return FromGateway::Invalid(clip(text)) };
    let stream_sid = v["streamSid"].as_str().map(str::to_string);
    match v["event"].as_str() {
        Some("media") => {
            match v["media"]["payload"].as_str().map(|p| base64::engine::general_purpose::STANDARD.decode(p)) {
                Some(Ok(audio)) => FromGateway::Media { stream_sid, audio },
                _ => FromGateway::Invalid(clip(text)),
            }
        }
        Some("mark") => match v["mark"]["name"].as_str() {
            Some(name) => FromGateway::Mark { stream_sid, name: name.to_string() },
            None => FromGateway::Invalid(clip(text)),
        },
        Some("clear") => FromGateway::Clear { stream_sid },
        Some(other) => FromGateway::Other(other.to_string()),
        None => FromGateway::Invalid(clip(text)),
    }
}

/// At most 200 characters of `text`, for messages.
fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// `connected`, Twilio's first message (no sequence number).
pub fn connected() -> String {
    json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
}

/// `start` with sequence number `seq`.
pub fn start(seq: u64, ids: &CallIds, parameters: &[(String, String)]) -> String {
    let custom: serde_json::Map<String, Value> =
        parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "event": "start",
        "sequenceNumber": seq.to_string(),
        "streamSid": ids.stream_sid,
        "start": {
            "accountSid": ids.account_sid,
            "streamSid": ids.stream_sid,
            "callSid": ids.call_sid,
            "tracks": ["inbound", "outbound"],
            "customParameters": custom,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    })
    .to_string()
}

/// `media` (the caller's audio, track `inbound`): chunk `chunk` (from 1) at `timestamp_ms`
/// since the stream started.
pub fn media(seq: u64, stream_sid: &str, chunk: u64, timestamp_ms: u64, audio: &[u8]) -> String {
    // Formatted by hand: one per 20 ms per call, and nothing in it needs escaping (hex ids,
    // base64, digits).
    let payload = base64::engine::general_purpose::STANDARD.encode(audio);
    format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"{stream_sid}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":"{payload}"}}}}"#
    )
}

/// `dtmf`: the caller pressed `digit`.
pub fn dtmf(seq: u64, stream_sid: &str, digit: char) -> String {
    json!({
        "event": "dtmf",
        "sequenceNumber": seq.to_string(),
        "streamSid": stream_sid,
        "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
    })
    .to_string()
}

/// `mark`: the echo of the gateway's mark `name`.
pub fn mark(seq: u64, stream_sid: &str, name: &str) -> String {
    json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": stream_sid, "mark": {"name": name}})
        .to_string()
}

/// `stop`: the call ended.
pub fn stop(seq: u64, ids: &CallIds) -> String {
    json!({
        "event": "stop",
        "sequenceNumber": seq.to_string(),
        "streamSid": ids.stream_sid,
        "stop": {"accountSid": ids.account_sid, "callSid": ids.call_sid},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_a_prefix_and_32_lowercase_hex_digits() {
        let ids = CallIds::new(None);
        for (s, p) in [(&ids.call_sid, "CA"), (&ids.stream_sid, "MZ"), (&ids.account_sid, "AC")] {
            assert_eq!(s.len(), 34, "{s}");
            assert!(s.starts_with(p));
            assert!(s[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s}");
        }
        assert_ne!(CallIds::new(None).call_sid, ids.call_sid);
        assert_eq!(CallIds::new(Some("AC1")).account_sid, "AC1");
    }

    #[test]
    fn the_webhook_signature_is_twilios_over_the_public_url_and_the_form() {
        // Twilio's published vector (twilio-python test_request_validator.py).
        let form = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &form),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // The form the tool posts verifies with the daemon's check, and the body decodes back
        // to it.
        let ids = CallIds::new(None);
        let form = voice_form(&ids, "+15550100001", "+15550100002");
        let url = "http://127.0.0.1:8000/api/telephony/twilio/voice";
        let sig = signature(DEV_AUTH_TOKEN, url, &form);
        assert!(gatewayd::auth_twilio::verify(DEV_AUTH_TOKEN, url, &form, &sig));
        let decoded: Vec<(String, String)> =
            url::form_urlencoded::parse(form_body(&form).as_bytes()).into_owned().collect();
        assert_eq!(decoded, form);
        assert!(form_body(&form).contains("From=%2B15550100001"));
        let status = status_form(&ids, "+1", "+2", 42);
        assert!(status.contains(&("CallStatus".into(), "completed".into())));
        assert!(status.contains(&("CallDuration".into(), "42".into())));
    }

    #[test]
    fn endpoints_map_the_public_stream_url_onto_the_base() {
        let e = Endpoints::new("http://127.0.0.1:8000/", None).unwrap();
        assert_eq!(e.authority, "127.0.0.1:8000");
        assert_eq!(e.public_url(VOICE_PATH), "http://127.0.0.1:8000/api/telephony/twilio/voice");
        assert_eq!(
            e.stream_target("ws://127.0.0.1:8000/api/telephony/twilio/media-stream").unwrap(),
            "ws://127.0.0.1:8000/api/telephony/twilio/media-stream"
        );
        let e = Endpoints::new("http://localhost", Some("https://voice.example.com/")).unwrap();
        assert_eq!(e.authority, "localhost:80");
        assert_eq!(e.public_url(STATUS_PATH), "https://voice.example.com/api/telephony/twilio/status");
        assert_eq!(e.stream_target("wss://voice.example.com/s").unwrap(), "ws://localhost/s");
        assert_eq!(e.stream_target("ws://other:9/s").unwrap(), "ws://other:9/s");
        assert!(e.stream_target("wss://voice.example.com.evil/s").is_err());
        assert!(e.stream_target("wss://other/s").is_err());
        let d = e.dashboard_url("a b&c", "call-1");
        assert_eq!(d, "ws://localhost/api/ws/telephony/stream?token=a+b%26c&call_id=call-1&client_type=telephony");
        assert!(Endpoints::new("https://x", None).is_err());
        assert!(Endpoints::new("http://x/path", None).is_err());
        assert!(Endpoints::new("http://x", Some("ftp://y")).is_err());
        assert!(Endpoints::new("http://x", Some("https://y/p")).is_err());
        assert_eq!(Endpoints::new("http://[::1]", None).unwrap().authority, "[::1]:80");
        assert_eq!(Endpoints::new("http://[::1]:8000", None).unwrap().authority, "[::1]:8000");
    }

    const TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect>
    <Stream url="ws://127.0.0.1:8000/api/telephony/twilio/media-stream">
      <Parameter name="call_id" value="c-1 &amp; &quot;2&quot;"/>
      <Parameter name="tenant" value="7"/>
    </Stream>
  </Connect>
</Response>"#;

    #[test]
    fn twiml_connect_stream_gives_the_url_and_the_parameters() {
        assert_eq!(
            parse_twiml(TWIML).unwrap(),
            Twiml::Stream {
                url: "ws://127.0.0.1:8000/api/telephony/twilio/media-stream".into(),
                parameters: vec![("call_id".into(), "c-1 & \"2\"".into()), ("tenant".into(), "7".into())],
            }
        );
        // Verbs before <Connect> are skipped; one without parameters is fine.
        assert_eq!(
            parse_twiml("<Response><Say>hi</Say><Connect><Stream url=\"wss://h/s\"/></Connect></Response>").unwrap(),
            Twiml::Stream { url: "wss://h/s".into(), parameters: vec![] }
        );
    }

    #[test]
    fn twiml_reject_and_hangup_refuse_the_call() {
        assert_eq!(
            parse_twiml(r#"<?xml version="1.0"?><Response><Reject/></Response>"#).unwrap(),
            Twiml::Refused { verb: "Reject".into(), reason: None }
        );
        assert_eq!(
            parse_twiml(r#"<Response><Reject reason="busy"/></Response>"#).unwrap(),
            Twiml::Refused { verb: "Reject".into(), reason: Some("busy".into()) }
        );
        assert_eq!(
            parse_twiml("<Response><Hangup/><Connect><Stream url=\"ws://h/s\"/></Connect></Response>").unwrap(),
            Twiml::Refused { verb: "Hangup".into(), reason: None }
        );
    }

    #[test]
    fn twiml_without_a_usable_stream_is_an_error_that_says_why() {
        assert!(matches!(parse_twiml("<Response><Connect>"), Err(TwimlError::Xml(_))));
        assert!(matches!(parse_twiml("not xml"), Err(TwimlError::Xml(_))));
        assert!(matches!(parse_twiml(r#"<!DOCTYPE r [<!ENTITY a "b">]><Response/>"#), Err(TwimlError::Xml(_))));
        assert_eq!(parse_twiml("<Twiml/>"), Err(TwimlError::NotResponse("Twiml".into())));
        assert_eq!(parse_twiml("<Response/>"), Err(TwimlError::NoStream("none".into())));
        assert_eq!(
            parse_twiml("<Response><Say>x</Say><Pause/></Response>"),
            Err(TwimlError::NoStream("<Say>, <Pause>".into()))
        );
        assert!(matches!(parse_twiml("<Response><Connect/></Response>"), Err(TwimlError::BadStream(_))));
        assert!(matches!(
            parse_twiml("<Response><Connect><Stream/></Connect></Response>"),
            Err(TwimlError::BadStream(_))
        ));
        assert!(matches!(
            parse_twiml("<Response><Connect><Stream url=\"ws://h/s?call=1\"/></Connect></Response>"),
            Err(TwimlError::BadStreamUrl(_))
        ));
        assert!(matches!(
            parse_twiml("<Response><Connect><Stream url=\"https://h/s\"/></Connect></Response>"),
            Err(TwimlError::BadStreamUrl(_))
        ));
        assert_eq!(
            parse_twiml("<Response><Start><Stream url=\"wss://h/s\"/></Start></Response>"),
            Err(TwimlError::OneWay)
        );
    }

    #[test]
    fn messages_to_the_gateway_have_twilios_shapes() {
        let ids = CallIds::new(Some("AC0"));
        let v: Value = serde_json::from_str(&connected()).unwrap();
        assert_eq!(v, json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
        let v: Value = serde_json::from_str(&start(1, &ids, &[("call_id".into(), "c1".into())])).unwrap();
        assert_eq!(v["sequenceNumber"], "1");
        assert_eq!(v["streamSid"], ids.stream_sid.as_str());
        assert_eq!(v["start"]["callSid"], ids.call_sid.as_str());
        assert_eq!(v["start"]["accountSid"], "AC0");
        assert_eq!(v["start"]["tracks"], json!(["inbound", "outbound"]));
        assert_eq!(v["start"]["customParameters"], json!({"call_id": "c1"}));
        assert_eq!(v["start"]["mediaFormat"], json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}));
        let v: Value = serde_json::from_str(&media(3, &ids.stream_sid, 2, 20, &[0xFF; 160])).unwrap();
        assert_eq!(v["event"], "media");
        assert_eq!(v["sequenceNumber"], "3");
        assert_eq!(v["media"]["track"], "inbound");
        assert_eq!(v["media"]["chunk"], "2");
        assert_eq!(v["media"]["timestamp"], "20");
        let payload =
            base64::engine::general_purpose::STANDARD.decode(v["media"]["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload, vec![0xFF; 160]);
        let v: Value = serde_json::from_str(&dtmf(4, "MZ1", '#')).unwrap();
        assert_eq!(v["dtmf"], json!({"track": "inbound_track", "digit": "#"}));
        let v: Value = serde_json::from_str(&mark(5, "MZ1", "utt \"1\"")).unwrap();
        assert_eq!(
            v,
            json!({"event": "mark", "sequenceNumber": "5", "streamSid": "MZ1", "mark": {"name": "utt \"1\""}})
        );
        let v: Value = serde_json::from_str(&stop(6, &ids)).unwrap();
        assert_eq!(v["stop"], json!({"accountSid": "AC0", "callSid": ids.call_sid}));
    }

    #[test]
    fn gateway_messages_are_read_and_junk_is_named() {
        assert_eq!(
            parse_from_gateway(r#"{"event":"media","streamSid":"MZ1","media":{"payload":"/38="}}"#),
            FromGateway::Media { stream_sid: Some("MZ1".into()), audio: vec![0xFF, 0x7F] }
        );
        assert_eq!(
            parse_from_gateway(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#),
            FromGateway::Mark { stream_sid: Some("MZ1".into()), name: "m1".into() }
        );
        assert_eq!(parse_from_gateway(r#"{"event":"clear"}"#), FromGateway::Clear { stream_sid: None });
        assert_eq!(parse_from_gateway(r#"{"event":"hello"}"#), FromGateway::Other("hello".into()));
        for junk in ["nope", "{}", r#"{"event":"media","media":{"payload":"%%"}}"#, r#"{"event":"mark"}"#] {
            assert!(matches!(parse_from_gateway(junk), FromGateway::Invalid(_)), "{junk}");
        }
        assert_eq!(clip(&"é".repeat(300)).chars().count(), 201);
    }
}
