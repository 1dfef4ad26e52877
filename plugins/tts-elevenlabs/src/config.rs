//! `[plugins.<name>.config]` of the ElevenLabs provider.

use serde::{Deserialize, Serialize};

/// The provider's configuration. Every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the API is: scheme, host, optional port (`https://api.elevenlabs.io`). Tests point
    /// it at a loopback fake.
    pub base_url: String,
    /// `model_id` when the session does not name one (`eleven_flash_v2_5`, the low-latency one).
    pub model_id: String,
    /// The voice id used when a call does not name one (`say` without a voice); none: such a
    /// `say` is refused (`bad_request`).
    pub default_voice: Option<String>,
    /// Name of the secret holding the API key, sent as `xi-api-key`.
    pub secret: String,
    /// `voice_settings` of every request (absent: the voice's stored settings).
    pub voice_settings: Option<VoiceSettings>,
    /// `apply_text_normalization`: `auto`, `on` or `off` (absent: the vendor's default).
    pub apply_text_normalization: Option<String>,
    /// `optimize_streaming_latency` query parameter, 0..=4 (absent: not sent).
    pub optimize_streaming_latency: Option<u8>,
    /// `enable_logging` query parameter; false asks for zero retention (enterprise accounts).
    pub enable_logging: Option<bool>,
    /// The longest text one request may carry, in characters (Unicode scalar values). The
    /// vendor's limit depends on the model (assumed 5000 for the v2 models).
    pub max_text_chars: usize,
    /// Read by the host: secret name -> environment variable. Accepted here so the table may
    /// live in this section; the plugin never reads it.
    pub secret_env: Option<serde_json::Value>,
}

/// ElevenLabs `voice_settings`; absent fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceSettings {
    /// 0.0..=1.0: higher is more stable, less expressive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stability: Option<f32>,
    /// 0.0..=1.0: adherence to the original voice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_boost: Option<f32>,
    /// 0.0..=1.0: style exaggeration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub style: Option<f32>,
    /// Speaker boost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_speaker_boost: Option<bool>,
    /// Speaking rate, 1.0 normal (a session's `speed` option takes precedence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_url: "https://api.elevenlabs.io".into(),
            model_id: "eleven_flash_v2_5".into(),
            default_voice: None,
            secret: "api_key".into(),
            voice_settings: None,
            apply_text_normalization: None,
            optimize_streaming_latency: None,
            enable_logging: None,
            max_text_chars: 5000,
            secret_env: None,
        }
    }
}

impl Config {
    /// Check the values serde cannot: ranges, names, the base URL.
    pub fn validate(&self) -> Result<(), String> {
        if self.model_id.is_empty() || self.secret.is_empty() {
            return Err("model_id and secret must not be empty".into());
        }
        if !(1..=100_000).contains(&self.max_text_chars) {
            return Err(format!("max_text_chars {} is outside 1..=100000", self.max_text_chars));
        }
        if let Some(n) = &self.apply_text_normalization
            && !matches!(n.as_str(), "auto" | "on" | "off")
        {
            return Err(format!("apply_text_normalization `{n}` is not auto, on or off"));
        }
        if self.optimize_streaming_latency.is_some_and(|l| l > 4) {
            return Err("optimize_streaming_latency must be 0..=4".into());
        }
        if let Some(v) = &self.voice_settings {
            let unit = [v.stability, v.similarity_boost, v.style];
            if unit.iter().flatten().any(|x| !(0.0..=1.0).contains(x)) {
                return Err("voice_settings stability, similarity_boost and style must be 0.0..=1.0".into());
            }
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
    fn defaults_are_valid_and_values_are_checked() {
        assert_eq!(parse("{}").unwrap().model_id, "eleven_flash_v2_5");
        let c = parse(r#"{"voice_settings": {"stability": 0.5, "use_speaker_boost": true}}"#).unwrap();
        assert_eq!(c.voice_settings.unwrap().stability, Some(0.5));
        assert!(parse(r#"{"voice_settings": {"stability": 1.5}}"#).is_err());
        assert!(parse(r#"{"voice_settings": {"stabilty": 0.5}}"#).is_err());
        assert!(parse(r#"{"apply_text_normalization": "maybe"}"#).is_err());
        assert!(parse(r#"{"optimize_streaming_latency": 5}"#).is_err());
        assert!(parse(r#"{"max_text_chars": 0}"#).is_err());
        assert!(parse(r#"{"base_url": "api.elevenlabs.io"}"#).is_err());
        assert!(parse(r#"{"secret_env": {"api_key": "ELEVENLABS_API_KEY"}}"#).is_ok());
    }
}
