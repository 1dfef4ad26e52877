//! `[plugins.<name>.config]` of the Deepgram provider.

use serde::Deserialize;

/// The provider's configuration. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the live API is: scheme, host, optional port (`wss://api.deepgram.com`). Tests
    /// point it at a loopback fake.
    pub base_url: String,
    /// Model when the stream does not name one (`nova-3`).
    pub model: String,
    /// Name of the secret holding the API key (the host resolves it through `secret_env`).
    pub secret: String,
    /// `Authorization` scheme: `Token` for an API key, `Bearer` for a temporary token.
    pub auth_scheme: String,
    /// Deepgram `punctuate`.
    pub punctuate: bool,
    /// Deepgram `smart_format` (numbers, dates, currency written out).
    pub smart_format: bool,
    /// Deepgram `vad_events`: `SpeechStarted` messages.
    pub vad_events: bool,
    /// Send `KeepAlive` after this long without audio, ms (1000..=5000: Deepgram closes a
    /// connection idle for 10 s with NET-0001 and asks for one every 3 to 5 s).
    pub keepalive_ms: u32,
    /// Audio per binary frame, ms (20..=250, a multiple of 20).
    pub chunk_ms: u32,
    /// Read by the host: secret name -> environment variable. Accepted here so the table may
    /// live in this section; the plugin never reads it.
    pub secret_env: Option<serde_json::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_url: "wss://api.deepgram.com".into(),
            model: "nova-3".into(),
            secret: "api_key".into(),
            auth_scheme: "Token".into(),
            punctuate: true,
            smart_format: true,
            vad_events: true,
            keepalive_ms: 4000,
            chunk_ms: 40,
            secret_env: None,
        }
    }
}

impl Config {
    /// Check the values serde cannot: ranges, the auth scheme, the base URL.
    pub fn validate(&self) -> Result<(), String> {
        if !(1000..=5000).contains(&self.keepalive_ms) {
            return Err(format!("keepalive_ms {} is outside 1000..=5000", self.keepalive_ms));
        }
        if !(20..=250).contains(&self.chunk_ms) || !self.chunk_ms.is_multiple_of(20) {
            return Err(format!("chunk_ms {} is not a multiple of 20 in 20..=250", self.chunk_ms));
        }
        if !matches!(self.auth_scheme.as_str(), "Token" | "Bearer") {
            return Err(format!("auth_scheme `{}` is neither `Token` nor `Bearer`", self.auth_scheme));
        }
        if self.model.is_empty() || self.secret.is_empty() {
            return Err("model and secret must not be empty".into());
        }
        gatewayd_plugin::speech::build_url(&self.base_url, &[], &[]).map(drop).map_err(|e| e.message)
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
    fn defaults_are_valid_and_bounds_are_checked() {
        let c = parse("{}").unwrap();
        assert_eq!((c.model.as_str(), c.keepalive_ms, c.chunk_ms), ("nova-3", 4000, 40));
        assert!(parse(r#"{"keepalive_ms": 6000}"#).unwrap_err().contains("keepalive_ms"));
        assert!(parse(r#"{"chunk_ms": 30}"#).unwrap_err().contains("chunk_ms"));
        assert!(parse(r#"{"auth_scheme": "Basic"}"#).unwrap_err().contains("auth_scheme"));
        assert!(parse(r#"{"base_url": "deepgram"}"#).is_err());
        assert!(parse(r#"{"modle": "x"}"#).unwrap_err().contains("unknown field"));
        assert!(parse(r#"{"secret_env": {"api_key": "DEEPGRAM_API_KEY"}}"#).is_ok());
    }
}
