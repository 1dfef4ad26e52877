//! `[plugins.twilio.config]`: every key has a default; unknown keys are refused, and `init`
//! refuses values out of bounds (the plugin does not load).

use serde::Deserialize;

/// Longest `say` text the host accepts, bytes (WIT `media.say`).
pub(crate) const SAY_MAX_BYTES: usize = 4096;
/// Largest `max_message_chars`: any text of that many characters fits [`SAY_MAX_BYTES`].
pub(crate) const MAX_MESSAGE_CHARS_LIMIT: usize = SAY_MAX_BYTES / 4;
/// Largest `max_id_bytes`: ids land in `VARCHAR(255)` columns (telephony.md section 4).
pub(crate) const MAX_ID_BYTES_LIMIT: usize = 255;
/// Most `keyterms` the host takes (WIT `media.transcribe-options`).
pub(crate) const MAX_KEYTERMS: usize = 100;
/// Longest keyterm, bytes (WIT `media.transcribe-options`).
pub(crate) const MAX_KEYTERM_BYTES: usize = 128;

/// The plugin's configuration (`[plugins.twilio.config]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// The business of a call whose `To` number has no `business_numbers` row; none: such calls
    /// are rejected (`<Reject/>`).
    pub default_business: Option<String>,
    /// Path of the Media Streams route; the TwiML's `<Stream url>` is the signed request's
    /// public base URL (`ws`/`wss`) plus this.
    pub stream_path: String,
    /// Spoken to the caller when the media stream starts (empty: nothing), stored as an agent
    /// message.
    pub welcome_message: String,
    /// BCP-47 language passed to transcription; none: the STT provider's default.
    pub language: Option<String>,
    /// Words or phrases the recogniser should favour on every call (at most 100, each 1 to 128
    /// bytes): Deepgram's keyterm prompting; the offline recogniser (PocketSphinx) takes them as
    /// a grammar and then hears only those phrases. Empty: the open vocabulary.
    pub keyterms: Vec<String>,
    /// Barge-in: a transcript at least this long (ms) while an utterance is playing clears the
    /// playback; 0 turns barge-in off.
    pub barge_in_min_ms: u32,
    /// Longest `agent_message` text, characters.
    pub max_message_chars: usize,
    /// Messages per second one dashboard socket may send (sustained, token bucket refill).
    pub rate_per_sec: f64,
    /// Messages one dashboard socket may send in a burst (bucket size).
    pub rate_burst: f64,
    /// Longest id a client sends (`call_id`, `CallSid`), bytes.
    pub max_id_bytes: usize,
    /// Transcribe every call (`customer_transcript`); false: calls are not transcribed.
    pub transcribe: bool,
    /// Send the caller's audio back to them (a line test, and the Media Streams benchmark).
    pub echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_business: None,
            stream_path: "/api/telephony/twilio/media-stream".into(),
            welcome_message: "Hello! Thank you for calling. An agent will be with you shortly.".into(),
            language: None,
            keyterms: Vec::new(),
            barge_in_min_ms: 300,
            max_message_chars: 1000,
            rate_per_sec: 20.0,
            rate_burst: 40.0,
            max_id_bytes: 255,
            transcribe: true,
            echo: false,
        }
    }
}

impl Config {
    /// The config table, decoded and checked once per instance (an instance belongs to one
    /// plugin version; a reload with a new table starts new instances).
    pub(crate) fn load() -> Result<Config, String> {
        static CACHED: std::sync::OnceLock<Result<Config, String>> = std::sync::OnceLock::new();
        CACHED.get_or_init(|| gatewayd_plugin::config::load::<Config>().and_then(|c| c.validate().map(|()| c))).clone()
    }

    /// Check every bound. Err: which key is wrong and why.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let err = |m: String| Err(format!("twilio config: {m}"));
        if let Some(b) = &self.default_business
            && (b.trim().is_empty() || b.len() > MAX_ID_BYTES_LIMIT)
        {
            return err(format!("default_business must be 1 to {MAX_ID_BYTES_LIMIT} bytes"));
        }
        let p = &self.stream_path;
        if !p.starts_with('/')
            || p.len() > 1024
            || p.chars().any(|c| c.is_control() || c.is_whitespace() || "?#".contains(c))
        {
            return err("stream_path must be a path starting with `/`, without query, fragment or spaces (Twilio refuses query strings in <Stream url>)".into());
        }
        if self.welcome_message.len() > SAY_MAX_BYTES {
            return err(format!("welcome_message must be at most {SAY_MAX_BYTES} bytes"));
        }
        if let Some(l) = &self.language
            && (l.is_empty() || l.len() > 35 || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return err("language must be a BCP-47 tag such as en-US".into());
        }
        if self.keyterms.len() > MAX_KEYTERMS
            || self.keyterms.iter().any(|k| k.trim().is_empty() || k.len() > MAX_KEYTERM_BYTES)
        {
            return err(format!("keyterms must be at most {MAX_KEYTERMS} phrases of 1 to {MAX_KEYTERM_BYTES} bytes"));
        }
        if self.barge_in_min_ms > 60_000 {
            return err("barge_in_min_ms must be at most 60000 (0 turns barge-in off)".into());
        }
        if !(1..=MAX_MESSAGE_CHARS_LIMIT).contains(&self.max_message_chars) {
            return err(format!("max_message_chars must be 1 to {MAX_MESSAGE_CHARS_LIMIT}"));
        }
        let rate_ok = self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0;
        let burst_ok = self.rate_burst.is_finite() && self.rate_burst >= 1.0;
        if !(rate_ok && burst_ok) {
            return err("rate_per_sec must be > 0 and rate_burst >= 1".into());
        }
        if !(1..=MAX_ID_BYTES_LIMIT).contains(&self.max_id_bytes) {
            return err(format!("max_id_bytes must be 1 to {MAX_ID_BYTES_LIMIT}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    #[test]
    fn an_empty_table_gives_the_documented_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.stream_path, "/api/telephony/twilio/media-stream");
        assert_eq!((c.barge_in_min_ms, c.max_message_chars, c.max_id_bytes), (300, 1000, 255));
        assert_eq!((c.rate_per_sec, c.rate_burst), (20.0, 40.0));
        assert!(c.default_business.is_none() && c.language.is_none());
    }

    #[test]
    fn unknown_keys_and_out_of_bound_values_are_refused() {
        assert!(parse(r#"{"stream_pth": "/x"}"#).is_err());
        for bad in [
            r#"{"stream_path": "api/x"}"#,
            r#"{"stream_path": "/x?call=1"}"#,
            r#"{"default_business": " "}"#,
            r#"{"language": "en US"}"#,
            r#"{"keyterms": [" "]}"#,
            r#"{"max_message_chars": 0}"#,
            r#"{"max_message_chars": 1025}"#,
            r#"{"rate_per_sec": 0}"#,
            r#"{"rate_burst": 0.5}"#,
            r#"{"max_id_bytes": 256}"#,
            r#"{"barge_in_min_ms": 60001}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let too_long = format!(r#"{{"keyterms": ["{}"]}}"#, "a".repeat(MAX_KEYTERM_BYTES + 1));
        let too_many = format!(r#"{{"keyterms": [{}]}}"#, vec![r#""sales""#; MAX_KEYTERMS + 1].join(","));
        assert!(parse(&too_long).is_err() && parse(&too_many).is_err());
        assert!(parse(r#"{"keyterms": ["sales", "technical support"]}"#).is_ok());
        let ok =
            parse(r#"{"default_business": "acme", "language": "en-US", "welcome_message": "", "barge_in_min_ms": 0}"#);
        assert!(ok.is_ok());
    }
}
