//! `[plugins.chat.config]` (config/gatewayd.toml documents each key).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Scheme, host and port clients reach the daemon at; file URLs are
    /// `<public_base_url>/chat/media/<name>`.
    pub public_base_url: String,
    /// Lifetime of the visitor token `start-session` returns, seconds.
    pub visitor_token_ttl_secs: u32,
    /// Longest `text` content, in characters (longer: an `error`, nothing stored).
    pub max_message_chars: usize,
    /// Sustained messages per second one connection may send (token bucket refill rate).
    pub rate_per_sec: f64,
    /// Messages one connection may send in a burst (token bucket size).
    pub rate_burst: f64,
    /// History entries per page when `limit` is not given.
    pub history_page_size: u32,
    /// Largest `limit` accepted by the history endpoint.
    pub history_max_page_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            public_base_url: "http://127.0.0.1:8000".into(),
            visitor_token_ttl_secs: 86_400,
            max_message_chars: 4000,
            rate_per_sec: 10.0,
            rate_burst: 20.0,
            history_page_size: 100,
            history_max_page_size: 500,
        }
    }
}

impl Settings {
    /// The plugin's config table, decoded and checked once per instance: an instance belongs to
    /// one plugin version, and a reload with new config starts new instances.
    pub fn load() -> Result<Settings, String> {
        static CACHED: std::sync::OnceLock<Result<Settings, String>> = std::sync::OnceLock::new();
        CACHED.get_or_init(Settings::decode).clone()
    }

    fn decode() -> Result<Settings, String> {
        let s: Settings = gatewayd_plugin::config::load()?;
        if !(s.public_base_url.starts_with("http://") || s.public_base_url.starts_with("https://")) {
            return Err("chat config: public_base_url must start with http:// or https://".into());
        }
        if s.visitor_token_ttl_secs == 0 || s.max_message_chars == 0 || s.history_page_size == 0 {
            return Err(
                "chat config: visitor_token_ttl_secs, max_message_chars and history_page_size must be > 0".into()
            );
        }
        if s.rate_per_sec <= 0.0 || s.rate_burst < 1.0 {
            return Err("chat config: rate_per_sec must be > 0 and rate_burst >= 1".into());
        }
        if s.history_max_page_size < s.history_page_size {
            return Err("chat config: history_max_page_size must be >= history_page_size".into());
        }
        Ok(s)
    }

    /// The URL a stored file is served at.
    pub fn media_url(&self, stored_name: &str) -> String {
        format!("{}/chat/media/{stored_name}", self.public_base_url.trim_end_matches('/'))
    }
}
