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
    /// Sustained messages per second one session may receive from all its connections together
    /// (token bucket refill rate; every frame counts).
    pub rate_per_sec: f64,
    /// Messages one session may receive in a burst, all its connections together (bucket size).
    pub rate_burst: f64,
    /// Longest id a client sends (`business`, `department`, `external_customer_id`,
    /// `uploaded_by_end_user`, `uploaded_by_agent`, the form's `session_id`), bytes.
    pub max_id_bytes: usize,
    /// Longest client file name of an upload, bytes.
    pub max_file_name_bytes: usize,
    /// Longest `file` URL in a socket `file` message, bytes.
    pub max_file_url_bytes: usize,
    /// Files one session may upload, over its whole life.
    pub max_uploads_per_session: u64,
    /// Bytes one session may upload, over its whole life.
    pub max_upload_bytes_per_session: u64,
    /// Files one client IP (an IPv6 client: its /64) may upload per `upload_ip_window_secs`.
    pub max_uploads_per_ip: u64,
    /// Bytes one client IP (IPv6: its /64) may upload per `upload_ip_window_secs`.
    pub max_upload_bytes_per_ip: u64,
    /// The window of the per-IP upload quotas, seconds.
    pub upload_ip_window_secs: u32,
    /// `POST /chat/start-session/` requests one client IP (IPv6: its /64) may make per
    /// `start_ip_window_secs`; more get 429 with `Retry-After`.
    pub max_starts_per_ip: u64,
    /// The window of the per-IP start-session rate, seconds.
    pub start_ip_window_secs: u32,
    /// How long a session's files are kept after it ends, seconds: 0 removes them at once
    /// (end-session); at most 30 days.
    pub file_retention_secs: u32,
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
            max_id_bytes: 255,
            max_file_name_bytes: 255,
            max_file_url_bytes: 2048,
            max_uploads_per_session: 50,
            max_upload_bytes_per_session: 50_000_000,
            max_uploads_per_ip: 200,
            max_upload_bytes_per_ip: 200_000_000,
            upload_ip_window_secs: 3600,
            max_starts_per_ip: 30,
            start_ip_window_secs: 60,
            file_retention_secs: 0,
            history_page_size: 100,
            history_max_page_size: 500,
        }
    }
}

/// Longest `file_retention_secs`: 30 days (a timer's delay is at most 2^32 ms).
pub const MAX_RETENTION_SECS: u32 = 30 * 86_400;

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
        let bounds = [s.max_id_bytes, s.max_file_name_bytes, s.max_file_url_bytes];
        let quotas = [s.max_uploads_per_session, s.max_upload_bytes_per_session, s.max_uploads_per_ip];
        let more = [s.max_upload_bytes_per_ip, s.max_starts_per_ip];
        if bounds.contains(&0) || quotas.contains(&0) || more.contains(&0) {
            return Err("chat config: the max_* bounds and quotas must be > 0".into());
        }
        if s.upload_ip_window_secs == 0 || s.start_ip_window_secs == 0 {
            return Err("chat config: upload_ip_window_secs and start_ip_window_secs must be > 0".into());
        }
        if s.file_retention_secs > MAX_RETENTION_SECS {
            return Err(format!("chat config: file_retention_secs must be at most {MAX_RETENTION_SECS} (30 days)"));
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
