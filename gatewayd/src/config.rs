//! The daemon's TOML configuration (`config/gatewayd.toml` documents every key).
//!
//! Parsing is strict: an unknown key or a bad value stops start-up with a message naming the
//! key. Relative paths are resolved against the directory holding the config file.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// The admin listener (metrics and health); none when absent.
    pub admin: Option<AdminConfig>,
    /// Listeners by name: `[listeners.main] address = "127.0.0.1:8000"`.
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// Routes in match order: the first route whose listener and path match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Plugins by name: `[plugins.signaling] file = "..."`.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Directory for the SQLite database and other state (created if missing).
    pub state_dir: PathBuf,
    /// `text` (human) or `json` (one object per line).
    pub log_format: LogFormat,
    /// A tracing-subscriber filter, e.g. `info` or `gatewayd=debug,info`. `RUST_LOG` overrides.
    pub log_level: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from("/var/lib/gatewayd"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://<path>` (relative paths are under `daemon.state_dir`) or `postgres://...`.
    pub url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { url: "sqlite://gatewayd.db".into(), max_connections: 8 }
    }
}

/// `[media]`: the threads calls run on (see `media::threads`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Media threads (1..=64); default: half the CPUs, at least one (the other half is left
    /// to plugin events, HTTP and the kernel's network processing).
    pub threads: usize,
    /// `SCHED_RR` priority of the media threads, 1..=99; 0 keeps normal scheduling. Default
    /// 20: with the default thread count the real-time threads can take at most half the
    /// CPUs, so normal processes always keep the other half. Refused by the OS (no
    /// `CAP_SYS_NICE`, `RLIMIT_RTPRIO` too low) -> a warning and normal scheduling.
    pub realtime_priority: u8,
}

impl Default for MediaConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        MediaConfig { threads: (cpus / 2).clamp(1, 64), realtime_priority: 20 }
    }
}

/// JWT verification (DESIGN section 7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Verification keys; a token must verify with one whose algorithm matches its header.
    pub keys: Vec<JwtKeyConfig>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// On a config reload, keys removed from `keys` stay accepted this many seconds (key
    /// rotation: add the new key, reload, later remove the old one, reload).
    pub rotation_overlap_secs: u64,
    /// Key the daemon signs tokens with for plugins (`auth.issue`, e.g. chat visitor tokens):
    /// HS256/HS384/HS512 with `secret` or `secret_env`. Issued tokens must verify, so the same
    /// secret must also be one of `keys`. Absent: plugins cannot issue tokens.
    pub signing: Option<JwtKeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 30,
            rotation_overlap_secs: 3600,
            signing: None,
        }
    }
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind; keep it on loopback or a private network.
    pub address: SocketAddr,
}

/// One verification key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `ES256`, `ES384` or `EdDSA`.
    pub algorithm: String,
    /// HMAC secret (HS*), inline. Prefer `secret_env` in production.
    pub secret: Option<String>,
    /// Name of an environment variable holding the HMAC secret (HS*).
    pub secret_env: Option<String>,
    /// PEM public key file (RS*, PS*, ES*, EdDSA).
    pub public_key_file: Option<PathBuf>,
    /// Only tokens whose header `kid` equals this use the key, when set.
    pub kid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind.
    pub address: SocketAddr,
    /// Largest WebSocket message accepted, in bytes; larger ones close the connection (1009).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest HTTP request body accepted, in bytes (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Frames queued to one slow client before it is disconnected (close 1008).
    #[serde(default = "default_send_queue")]
    pub send_queue_frames: usize,
}

fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_send_queue() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// WebSocket upgrades; other requests get 426.
    Websocket,
    /// Plain HTTP requests handled by the plugin's `on-http`.
    Http,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Tokens are ignored.
    None,
    /// A token, if presented, must be valid; its claims reach the plugin.
    #[default]
    Optional,
    /// A valid token is required.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name passed to the plugin in `connect-info.route` (defaults to the path).
    pub name: Option<String>,
    /// Listener name from `[listeners]`.
    pub listener: String,
    /// Request path, matched exactly; with `prefix = true`, any path starting with it.
    pub path: String,
    #[serde(default)]
    pub prefix: bool,
    pub kind: RouteKind,
    /// Plugin name from `[plugins]`.
    pub plugin: String,
    #[serde(default)]
    pub auth: AuthMode,
    /// Audio format of a media route (`media = { codec = "l16", rate = 8000 }`): its binary
    /// frames go to the media engine once the plugin has answered the call.
    #[serde(default)]
    pub media: Option<RouteMedia>,
}

/// A media route's wire audio: codec and sample rate, mono, 20 ms frames.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMedia {
    /// `pcmu`, `pcma` (8000 Hz), `l16` (8000/16000/24000/48000 Hz, little-endian) or `opus`.
    pub codec: crate::media::format::CodecName,
    /// Samples per second.
    pub rate: u32,
}

impl RouteMedia {
    /// The validated format.
    pub fn format(&self) -> Result<crate::media::format::Format, String> {
        crate::media::format::Format::new(self.codec, self.rate)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file (`.wasm`, built for wasm32-wasip2).
    pub file: PathBuf,
    #[serde(default)]
    pub limits: PluginLimits,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The plugin's own table, handed to it as JSON by `config.get`.
    #[serde(default)]
    pub config: toml::Table,
    /// Audio files the plugin may play and where its recordings go.
    #[serde(default)]
    pub media: PluginMediaConfig,
}

/// `[plugins.<name>.media]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PluginMediaConfig {
    /// Named WAV files for `media.play-file` (`greeting = "prompts/greeting.wav"`).
    pub files: BTreeMap<String, PathBuf>,
    /// Directory for call recordings (`media.record`); recording is refused without it.
    pub recordings_dir: Option<PathBuf>,
    /// Record every call of this plugin from `answer` on.
    pub record_calls: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// CPU time the plugin's own code may use in one event (or `init`) before it is
    /// interrupted, in ms. Host calls, instantiation and waiting for a CPU are not counted; the
    /// event's wall time is bounded separately at 10 times this, at least 10 s
    /// (`plugins/budget.rs`).
    pub event_timeout_ms: u64,
    /// Linear memory one instance may grow to, in MiB.
    pub memory_mb: u64,
    /// Instances of this plugin running events at once; further events wait.
    pub max_instances: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { event_timeout_ms: 200, memory_mb: 32, max_instances: 64 }
    }
}

/// Host interfaces a plugin may use beyond connections, session, kv, timers, config and log.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    pub store: StoreAccess,
    /// The `files` interface: a media directory the daemon stores the plugin's files in.
    pub files: Option<FilesCapability>,
}

/// `[plugins.<name>.capabilities.files]`: where and what the daemon stores for a plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesCapability {
    /// Media directory (created if missing; relative paths resolve against the config file).
    pub dir: PathBuf,
    /// Largest file accepted by `files.put`, in bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_bytes: u64,
    /// MIME types `files.put` accepts, as detected from the content (e.g. `image/png`).
    /// Empty: every type the sniffer recognises.
    #[serde(default)]
    pub allowed_types: Vec<String>,
}

fn default_max_file_bytes() -> u64 {
    5 * 1024 * 1024
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StoreAccess {
    #[default]
    None,
    /// `SELECT` / `WITH` statements only.
    Read,
    ReadWrite,
}

/// A configuration error naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl Config {
    /// Read, parse, validate and resolve the paths of a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { path: path.display().to_string(), message: format!("cannot read: {e}") })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Absolute, so derived paths (e.g. the SQLite URL) never start with `..` or a bare name.
        let base = std::path::absolute(&base).unwrap_or(base);
        Config::parse(&text, &base).map_err(|mut e| {
            e.path = format!("{}: {}", path.display(), e.path);
            e
        })
    }

    /// Parse and validate config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            path: "config".into(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
        self.daemon.state_dir = abs(&self.daemon.state_dir);
        for p in self.plugins.values_mut() {
            p.file = abs(&p.file);
            if let Some(f) = &mut p.capabilities.files {
                f.dir = abs(&f.dir);
            }
            for f in p.media.files.values_mut() {
                *f = abs(f);
            }
            p.media.recordings_dir = p.media.recordings_dir.as_ref().map(abs);
        }
        for k in &mut self.auth.keys {
            if let Some(f) = &k.public_key_file {
                k.public_key_file = Some(abs(f));
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |path: String, message: String| Err(ConfigError { path, message });
        if self.listeners.is_empty() {
            return err("listeners".into(), "at least one listener is required".into());
        }
        if !(1..=64).contains(&self.media.threads) {
            return err("media.threads".into(), "must be 1 to 64".into());
        }
        if self.media.realtime_priority > 99 {
            return err("media.realtime_priority".into(), "must be 0 (off) or 1 to 99".into());
        }
        let mut addresses = BTreeMap::new();
        for (name, l) in &self.listeners {
            if let Some(other) = addresses.insert(l.address, name) {
                return err(
                    format!("listeners.{name}.address"),
                    format!("{} is also used by listener `{other}`", l.address),
                );
            }
            if l.max_message_bytes < 125 {
                return err(format!("listeners.{name}.max_message_bytes"), "must be at least 125".into());
            }
            if l.send_queue_frames == 0 {
                return err(format!("listeners.{name}.send_queue_frames"), "must be at least 1".into());
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !self.listeners.contains_key(&r.listener) {
                return err(
                    format!("routes[{i}].listener"),
                    format!("no listener named `{}` in [listeners]", r.listener),
                );
            }
            if !self.plugins.contains_key(&r.plugin) {
                return err(format!("routes[{i}].plugin"), format!("no plugin named `{}` in [plugins]", r.plugin));
            }
            if !r.path.starts_with('/') {
                return err(format!("routes[{i}].path"), format!("`{}` must start with /", r.path));
            }
            if let Some(m) = &r.media {
                m.format().map_err(|message| ConfigError { path: format!("routes[{i}].media"), message })?;
                if r.kind != RouteKind::Websocket {
                    return err(format!("routes[{i}].media"), "only websocket routes carry media".into());
                }
            }
        }
        for (name, p) in &self.plugins {
            if p.limits.event_timeout_ms == 0 {
                return err(format!("plugins.{name}.limits.event_timeout_ms"), "must be at least 1".into());
            }
            if p.limits.memory_mb == 0 {
                return err(format!("plugins.{name}.limits.memory_mb"), "must be at least 1".into());
            }
            if p.limits.max_instances == 0 {
                return err(format!("plugins.{name}.limits.max_instances"), "must be at least 1".into());
            }
        }
        for (i, k) in self.auth.keys.iter().enumerate() {
            crate::auth::check_key_config(k)
                .map_err(|message| ConfigError { path: format!("auth.keys[{i}]"), message })?;
        }
        if let Some(k) = &self.auth.signing {
            crate::auth::check_signing_config(k)
                .map_err(|message| ConfigError { path: "auth.signing".into(), message })?;
        }
        for (name, p) in &self.plugins {
            if p.capabilities.files.as_ref().is_some_and(|f| f.max_bytes == 0) {
                return err(format!("plugins.{name}.capabilities.files.max_bytes"), "must be at least 1".into());
            }
        }
        if self.auth.leeway_secs > 300 {
            return err("auth.leeway_secs".into(), "must be at most 300".into());
        }
        if !(self.storage.url.starts_with("sqlite:")
            || self.storage.url.starts_with("postgres://")
            || self.storage.url.starts_with("postgresql://"))
        {
            return err("storage.url".into(), "must start with sqlite:// or postgres://".into());
        }
        if self.storage.max_connections == 0 {
            return err("storage.max_connections".into(), "must be at least 1".into());
        }
        Ok(())
    }

    /// Check what parsing cannot: plugin files exist. Used by `gatewayd check` and start-up.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for (name, p) in &self.plugins {
            for (file, path) in &p.media.files {
                if !path.is_file() {
                    return Err(ConfigError {
                        path: format!("plugins.{name}.media.files.{file}"),
                        message: format!("{} does not exist", path.display()),
                    });
                }
            }
            if !p.file.is_file() {
                return Err(ConfigError {
                    path: format!("plugins.{name}.file"),
                    message: format!("{} does not exist (build plugins with `make plugins`)", p.file.display()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listeners.main]
        address = "127.0.0.1:0"
        [[routes]]
        listener = "main"
        path = "/ws/x/"
        kind = "websocket"
        plugin = "x"
        [plugins.x]
        file = "x.wasm"
    "#;

    #[test]
    fn minimal_config_resolves_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/gw")).unwrap();
        assert_eq!(c.plugins["x"].file, PathBuf::from("/etc/gw/x.wasm"));
        assert_eq!(c.routes[0].auth, AuthMode::Optional);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("path = \"/ws/x/\"", "path = \"/ws/x/\"\nbogus = 1");
        let e = Config::parse(&text, Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn dangling_route_is_named() {
        let text = MINIMAL.replace("plugin = \"x\"", "plugin = \"y\"");
        let e = Config::parse(&text, Path::new("/")).unwrap_err().to_string();
        assert_eq!(e, "routes[0].plugin: no plugin named `y` in [plugins]");
    }
}
