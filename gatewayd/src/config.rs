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
    /// `[network]`: outbound connections of provider plugins (see `net`).
    #[serde(default)]
    pub network: NetworkConfig,
    /// `[speech]`: the STT and TTS providers calls use unless a route or the plugin names one.
    #[serde(default)]
    pub speech: SpeechChoice,
    /// `[twilio]`: what the daemon checks Twilio's request signatures with (routes with
    /// `twilio_signature = true`).
    pub twilio: Option<TwilioConfig>,
}

/// `[twilio]`: the account's auth token and the URL Twilio reaches the daemon at
/// (`auth_twilio`, telephony.md section 5 "Twilio Integration").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// The auth token inline (development only).
    pub auth_token: Option<String>,
    /// The environment variable holding the auth token (production).
    pub auth_token_env: Option<String>,
    /// Scheme, host and port Twilio calls the daemon at (`https://voice.example.com`): Twilio
    /// signs the URL it requested, so the daemon checks signatures against this base plus the
    /// request's path and query, never the Host header. `http`/`https` for webhooks; the Media
    /// Streams upgrade is checked against the same base with `ws`/`wss`.
    pub public_base_url: String,
}

impl TwilioConfig {
    /// The auth token (`auth_token`, or the variable `auth_token_env` names). Err: neither or
    /// both given, the variable unset, or an empty token.
    pub fn resolve_token(&self) -> Result<String, String> {
        let token = match (&self.auth_token, &self.auth_token_env) {
            (Some(t), None) => t.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| format!("auth_token_env: ${var} is not set"))?,
            _ => return Err("exactly one of `auth_token` or `auth_token_env` is needed".into()),
        };
        if token.is_empty() {
            return Err("the auth token is empty".into());
        }
        Ok(token)
    }

    /// `public_base_url` without a trailing `/`. Err: not `http://` or `https://`, or it carries
    /// a path, query or fragment.
    pub fn base_url(&self) -> Result<&str, String> {
        let base = self.public_base_url.trim_end_matches('/');
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or_else(|| format!("`{base}` must start with http:// or https://"))?;
        if rest.is_empty() || rest.contains(['/', '?', '#']) {
            return Err(format!("`{base}` must be a scheme, host and port only"));
        }
        Ok(base)
    }
}

/// Which speech provider plugins to use (`[speech]`, and a route's `speech = {...}`): plugin
/// names from `[plugins]` whose components are speech providers (`speech::Providers`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechChoice {
    /// The speech-to-text provider (`stt-provider` world).
    pub stt: Option<String>,
    /// The text-to-speech provider (`tts-provider` world).
    pub tts: Option<String>,
}

impl SpeechChoice {
    /// `self`'s choices, falling back to `defaults`' where `self` has none.
    pub fn or(&self, defaults: &SpeechChoice) -> SpeechChoice {
        SpeechChoice {
            stt: self.stt.clone().or_else(|| defaults.stt.clone()),
            tts: self.tts.clone().or_else(|| defaults.tts.clone()),
        }
    }
}

/// `[network]`: what every provider plugin's outbound TLS trusts.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// PEM file of CA certificates trusted besides the platform's roots (e.g. a private CA of
    /// an on-premises speech server); at most 1 MiB.
    pub extra_ca_file: Option<PathBuf>,
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
    /// File descriptors kept back from client connections for the admin listener, the
    /// database, plugin files and accepting; client connections of all listeners together stay
    /// below `RLIMIT_NOFILE` minus this. Default: a tenth of the limit, at least 128.
    pub reserved_descriptors: Option<u64>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from("/var/lib/gatewayd"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            reserved_descriptors: None,
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
    /// Longest a statement may run, in ms (plugins' and the daemon's; migrations have no
    /// limit); 0 = no limit. An expired statement is cancelled at the database and its caller
    /// gets a `statement_timeout` error.
    pub statement_timeout_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { url: "sqlite://gatewayd.db".into(), max_connections: 8, statement_timeout_ms: 5_000 }
    }
}

impl StorageConfig {
    /// `statement_timeout_ms` as a limit (`None`: no limit).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        (self.statement_timeout_ms > 0).then(|| std::time::Duration::from_millis(self.statement_timeout_ms))
    }
}

/// Default `[media] coalesce_us`.
pub const DEFAULT_COALESCE_US: u32 = 500;

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
    /// Wake-up coalescing, in µs (0..=5000; 0 = off; default 500): a media thread that wakes
    /// up waits this long before it runs, so the frames and events that arrive meanwhile are
    /// handled in one pass, as a network card coalesces interrupts. Adds at most this much to
    /// a frame's delay; saves the wake-ups and context switches (and, under `SCHED_RR`, the
    /// preemptions of other threads) of handling them one at a time (docs/benchmarks.md,
    /// Speech).
    pub coalesce_us: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        MediaConfig { threads: (cpus / 2).clamp(1, 64), realtime_priority: 20, coalesce_us: DEFAULT_COALESCE_US }
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
    /// Not a config key: each plugin's `capabilities.issue.audience` and the plugin, filled in
    /// by [`Config::parse`]. Tokens of such an audience are accepted for that plugin only.
    #[serde(skip)]
    pub issued: BTreeMap<String, String>,
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
            issued: BTreeMap::new(),
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
    /// Bytes queued to one slow client before it is disconnected (close 1008). One message
    /// larger than this is still sent when nothing else waits.
    #[serde(default = "default_send_queue_bytes")]
    pub send_queue_bytes: usize,
    /// Time a client has to send a request's headers, ms; also how long an idle keep-alive
    /// HTTP connection is kept. The connection is dropped when it runs out.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send a whole request body, ms; 408 `body_timeout` beyond.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// A WebSocket client that sends nothing for this long is closed with 1001, ms. The daemon
    /// pings it when it has been silent for half of it (browsers answer pings by themselves).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Time one outbound WebSocket frame may take to reach the socket, ms; a client that
    /// takes longer is dropped.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// Open connections (HTTP and WebSocket) on this listener; more are refused at accept.
    /// The process as a whole also stays below its open-file limit (see `server::limits`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one client address on this listener; more are refused.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` names the client: for a
    /// connection from one of them, the per-address cap and the plugin's `remote_addr` use the
    /// right-most address of that header that is not itself a trusted proxy.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[listeners.<name>.tls]`: serve TLS (https://, wss://) instead of plain TCP.
    pub tls: Option<TlsConfig>,
}

/// `[listeners.<name>.tls]`: the listener's certificate, reloaded on SIGHUP and when either
/// file changes (new handshakes get the new certificate; open connections stay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server certificate first, then the intermediates.
    pub cert_file: PathBuf,
    /// PEM file: the private key (PKCS#8, RSA or EC); readable by the daemon only.
    pub key_file: PathBuf,
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
/// A list of networks, each `"a.b.c.d/n"`, `"::1/128"` or a single address.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an IP address or CIDR network")))
        })
        .collect()
}

fn default_send_queue_bytes() -> usize {
    1024 * 1024
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_write_timeout_ms() -> u64 {
    10_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    1_000
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
    /// WebSocket routes: answer a refused token (invalid, expired, another plugin's) by
    /// completing the handshake and closing with this code (4000..=4999), the refusal's text as
    /// the reason, instead of HTTP 401. A browser cannot read the status of a refused
    /// handshake, only a close code (chat.md: 4003). The plugin never sees such a connection.
    #[serde(default)]
    pub refused_token_close: Option<u16>,
    /// Media routes: speech providers for this route's calls, over `[speech]`
    /// (`speech = { stt = "deepgram", tts = "elevenlabs" }`).
    #[serde(default)]
    pub speech: SpeechChoice,
    /// Check Twilio's `X-Twilio-Signature` on every request (HTTP webhooks, and the Media
    /// Streams WebSocket upgrade) with `[twilio]`: a missing or wrong signature gets 403 and
    /// never reaches the plugin.
    #[serde(default)]
    pub twilio_signature: bool,
}

/// A media route's wire audio: codec and sample rate, mono, 20 ms frames.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMedia {
    /// `pcmu`, `pcma` (8000 Hz), `l16` (8000/16000/24000/48000 Hz, little-endian) or `opus`.
    pub codec: crate::media::format::CodecName,
    /// Samples per second.
    pub rate: u32,
    /// How audio travels on the socket: `binary` (one binary message per chunk of audio, the
    /// default) or `twilio` (Twilio Media Streams' JSON text messages, base64 mu-law 8 kHz;
    /// `media::twilio`).
    #[serde(default)]
    pub framing: crate::media::format::Framing,
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
    /// How a connection is told that an event of its session failed (trap, time or memory
    /// limit), in the plugin's protocol's own shape.
    #[serde(default)]
    pub fault_report: FaultReport,
}

/// `[plugins.<name>] fault_report`: the message a connection gets when an event of its session
/// failed. `code` is `plugin_trap`, `plugin_timeout`, `plugin_memory` or `plugin_unavailable`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FaultReport {
    /// `{"type":"error","code":...,"message":...}` (signaling, chat, rooms).
    #[default]
    Type,
    /// `{"event":"error","code":...,"message":...}` (ivr.md's `event`-keyed messages).
    Event,
    /// Nothing is sent; the fault is only logged and counted.
    None,
}

impl FaultReport {
    /// The text frame for a fault, if any.
    pub fn message(self, code: &str, message: &str) -> Option<String> {
        let key = match self {
            FaultReport::Type => "type",
            FaultReport::Event => "event",
            FaultReport::None => return None,
        };
        Some(serde_json::json!({key: "error", "code": code, "message": message}).to_string())
    }
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
    /// Keep the audio of `say` utterances with a mark for `media.said-audio` (a few seconds of
    /// wire audio per utterance, at most 4 per call).
    pub keep_said_audio: bool,
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
    /// Speech providers: CPU time for making an instance and a session (where a local engine
    /// loads its model), in ms, as fuel (see `speech::Limits::from_config`).
    pub load_timeout_ms: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { event_timeout_ms: 200, memory_mb: 32, max_instances: 64, load_timeout_ms: 500 }
    }
}

/// Host interfaces a plugin may use beyond connections, session, kv, timers, config and log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    pub store: StoreAccess,
    /// The `files` interface: a media directory the daemon stores the plugin's files in.
    pub files: Option<FilesCapability>,
    /// `auth.issue`: the plugin may sign tokens, of its own audience only.
    pub issue: Option<IssueCapability>,
    /// Outbound network (speech providers): `host:port` entries the daemon may connect to for
    /// this plugin (`"api.deepgram.com:443"`, `"127.0.0.1:9443"`, `"[::1]:443"`). Empty: none.
    /// Names resolving to private or loopback addresses are refused unless the entry is that
    /// IP literal or `localhost` (`net::allow`).
    pub connect: Vec<String>,
    /// Lookup, TCP, TLS and WebSocket upgrade answer together, in ms.
    pub connect_timeout_ms: u64,
    /// From an HTTP request sent to its response head, in ms.
    pub first_byte_timeout_ms: u64,
    /// No byte from the vendor for this long ends a stream, in ms.
    pub idle_timeout_ms: u64,
    /// WebSockets plus HTTP requests of this plugin open at once; more fail at once.
    pub max_streams: usize,
    /// Largest HTTP response body, in bytes.
    pub max_response_bytes: u64,
    /// Named secrets from the daemon's environment: `{ api_key = "DEEPGRAM_API_KEY" }`. Plans
    /// refer to them by name; the host puts the value into the header, the plugin never sees it.
    pub secret_env: BTreeMap<String, String>,
    /// Not a config key: the values of `secret_env`, read by [`Config::parse`].
    #[serde(skip)]
    pub secrets: crate::net::Secrets,
    /// Speech providers: a directory of model or voice data the plugin may read (not write),
    /// seen inside the plugin as `/data` (a WASI preopen; relative paths resolve against the
    /// config file). None: the plugin has no filesystem at all.
    pub data_dir: Option<PathBuf>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            store: StoreAccess::default(),
            files: None,
            issue: None,
            connect: Vec::new(),
            connect_timeout_ms: crate::net::DEFAULT_CONNECT_TIMEOUT_MS,
            first_byte_timeout_ms: crate::net::DEFAULT_FIRST_BYTE_TIMEOUT_MS,
            idle_timeout_ms: crate::net::DEFAULT_IDLE_TIMEOUT_MS,
            max_streams: crate::net::DEFAULT_MAX_STREAMS,
            max_response_bytes: crate::net::DEFAULT_MAX_RESPONSE_BYTES,
            secret_env: BTreeMap::new(),
            secrets: crate::net::Secrets::default(),
            data_dir: None,
        }
    }
}

/// `[plugins.<name>.capabilities.issue]`: what tokens a plugin may sign with `auth.issue`.
///
/// Every token the plugin issues carries `aud = audience`, which differs from `[auth] audience`
/// and from every other plugin's: such a token is accepted only on this plugin's own routes
/// and by its own `auth.verify`, so a plugin cannot mint a token another protocol (or the
/// daemon) takes for an agent's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueCapability {
    /// The `aud` claim of the plugin's tokens.
    pub audience: String,
    /// Claim names the plugin may set; anything else is refused with `bad_claims`. `exp`,
    /// `iat`, `iss` and `aud` are always the daemon's.
    pub claims: Vec<String>,
    /// Longest lifetime the plugin may ask for, in seconds (1..=86400).
    #[serde(default = "default_max_ttl_secs")]
    pub max_ttl_secs: u32,
}

fn default_max_ttl_secs() -> u32 {
    crate::auth_signing::MAX_TTL_SECS
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
        for (name, p) in &mut config.plugins {
            let caps = &mut p.capabilities;
            caps.secrets = crate::net::Secrets::from_env(&caps.secret_env).map_err(|(key, var, why)| ConfigError {
                path: format!("plugins.{name}.capabilities.secret_env.{key}"),
                message: format!("${var} {why}"),
            })?;
        }
        config.auth.issued = config
            .plugins
            .iter()
            .filter_map(|(name, p)| Some((p.capabilities.issue.as_ref()?.audience.clone(), name.clone())))
            .collect();
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
        self.daemon.state_dir = abs(&self.daemon.state_dir);
        self.network.extra_ca_file = self.network.extra_ca_file.as_ref().map(abs);
        for p in self.plugins.values_mut() {
            p.file = abs(&p.file);
            if let Some(f) = &mut p.capabilities.files {
                f.dir = abs(&f.dir);
            }
            p.capabilities.data_dir = p.capabilities.data_dir.as_ref().map(abs);
            for f in p.media.files.values_mut() {
                *f = abs(f);
            }
            p.media.recordings_dir = p.media.recordings_dir.as_ref().map(abs);
        }
        for tls in self.listeners.values_mut().filter_map(|l| l.tls.as_mut()) {
            tls.cert_file = abs(&tls.cert_file);
            tls.key_file = abs(&tls.key_file);
        }
        for k in &mut self.auth.keys {
            if let Some(f) = &k.public_key_file {
                k.public_key_file = Some(abs(f));
            }
        }
    }

    /// The providers `choice` names must be plugins of the config (whether they are speech
    /// providers is known once their components are read: `speech::Providers`).
    fn check_speech(&self, choice: &SpeechChoice, path: &str) -> Result<(), ConfigError> {
        for (key, name) in [("stt", &choice.stt), ("tts", &choice.tts)] {
            if let Some(name) = name
                && !self.plugins.contains_key(name)
            {
                return Err(ConfigError {
                    path: format!("{path}.{key}"),
                    message: format!("no plugin named `{name}` in [plugins]"),
                });
            }
        }
        Ok(())
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
        if self.media.coalesce_us > 5000 {
            return err("media.coalesce_us".into(), "must be 0 (off) to 5000 µs".into());
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
            if l.send_queue_bytes < 1024 {
                return err(format!("listeners.{name}.send_queue_bytes"), "must be at least 1024".into());
            }
            for (key, ms) in [
                ("header_timeout_ms", l.header_timeout_ms),
                ("body_timeout_ms", l.body_timeout_ms),
                ("idle_timeout_ms", l.idle_timeout_ms),
                ("write_timeout_ms", l.write_timeout_ms),
            ] {
                if !(100..=86_400_000).contains(&ms) {
                    return err(format!("listeners.{name}.{key}"), "must be between 100 and 86400000 ms".into());
                }
            }
            if l.max_connections == 0 {
                return err(format!("listeners.{name}.max_connections"), "must be at least 1".into());
            }
            if l.max_connections_per_ip == 0 {
                return err(format!("listeners.{name}.max_connections_per_ip"), "must be at least 1".into());
            }
        }
        self.check_speech(&self.speech, "speech")?;
        if let Some(t) = &self.twilio {
            t.base_url().map_err(|message| ConfigError { path: "twilio.public_base_url".into(), message })?;
            t.resolve_token().map_err(|message| ConfigError { path: "twilio".into(), message })?;
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
                let format =
                    m.format().map_err(|message| ConfigError { path: format!("routes[{i}].media"), message })?;
                if m.framing == crate::media::format::Framing::Twilio
                    && (format.codec != crate::media::format::CodecName::Pcmu || format.rate != 8000)
                {
                    return err(format!("routes[{i}].media"), "Twilio framing carries pcmu at 8000 Hz".into());
                }
                if r.kind != RouteKind::Websocket {
                    return err(format!("routes[{i}].media"), "only websocket routes carry media".into());
                }
            }
            if r.speech != SpeechChoice::default() && r.media.is_none() {
                return err(format!("routes[{i}].speech"), "only media routes use speech providers".into());
            }
            self.check_speech(&r.speech, &format!("routes[{i}].speech"))?;
            if r.twilio_signature && self.twilio.is_none() {
                return err(format!("routes[{i}].twilio_signature"), "needs a [twilio] table".into());
            }
            if let Some(code) = r.refused_token_close
                && (r.kind != RouteKind::Websocket || !(4000..=4999).contains(&code))
            {
                return err(format!("routes[{i}].refused_token_close"), "a websocket route's code, 4000..=4999".into());
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
        let mut audiences = std::collections::HashMap::new();
        for (name, p) in &self.plugins {
            check_network(name, &p.capabilities)?;
            if p.capabilities.files.as_ref().is_some_and(|f| f.max_bytes == 0) {
                return err(format!("plugins.{name}.capabilities.files.max_bytes"), "must be at least 1".into());
            }
            if let Some(issue) = &p.capabilities.issue {
                let path = format!("plugins.{name}.capabilities.issue");
                if issue.audience.is_empty() || Some(&issue.audience) == self.auth.audience.as_ref() {
                    return err(format!("{path}.audience"), "must be set and differ from auth.audience".into());
                }
                if let Some(other) = audiences.insert(issue.audience.as_str(), name) {
                    return err(format!("{path}.audience"), format!("plugin `{other}` issues tokens of this audience"));
                }
                if !(1..=crate::auth_signing::MAX_TTL_SECS).contains(&issue.max_ttl_secs) {
                    return err(format!("{path}.max_ttl_secs"), "must be 1..=86400".into());
                }
                if let Some(c) =
                    issue.claims.iter().find(|c| crate::auth_signing::RESERVED_CLAIMS.contains(&c.as_str()))
                {
                    return err(format!("{path}.claims"), format!("`{c}` is set by the daemon"));
                }
                if self.auth.signing.is_none() {
                    return err(path, "needs an [auth.signing] key".into());
                }
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

    /// Check what parsing cannot: plugin and TLS files exist, `[network] extra_ca_file` holds
    /// certificates. Used by `gatewayd check`, start-up and reload.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.network.extra_ca_file {
            crate::net::tls::extra_roots(path)?;
        }
        for (name, l) in &self.listeners {
            let Some(tls) = &l.tls else { continue };
            for (key, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !path.is_file() {
                    return Err(ConfigError {
                        path: format!("listeners.{name}.tls.{key}"),
                        message: format!("{} does not exist", path.display()),
                    });
                }
            }
        }
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

/// The outbound-network keys of `[plugins.<name>.capabilities]`.
fn check_network(name: &str, caps: &Capabilities) -> Result<(), ConfigError> {
    let path = |key: &str| format!("plugins.{name}.capabilities.{key}");
    let err = |key: &str, message: String| Err(ConfigError { path: path(key), message });
    if let Err((i, message)) = crate::net::Allowlist::parse(&caps.connect) {
        return err(&format!("connect[{i}]"), message);
    }
    for (key, ms) in [
        ("connect_timeout_ms", caps.connect_timeout_ms),
        ("first_byte_timeout_ms", caps.first_byte_timeout_ms),
        ("idle_timeout_ms", caps.idle_timeout_ms),
    ] {
        if !(100..=86_400_000).contains(&ms) {
            return err(key, "must be between 100 and 86400000 ms".into());
        }
    }
    if !(1..=100_000).contains(&caps.max_streams) {
        return err("max_streams", "must be 1 to 100000".into());
    }
    if caps.max_response_bytes == 0 {
        return err("max_response_bytes", "must be at least 1".into());
    }
    for (key, var) in &caps.secret_env {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return err("secret_env", format!("`{key}`: a secret's name is letters, digits, `_` and `-`"));
        }
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            return err(&format!("secret_env.{key}"), "must name an environment variable".into());
        }
    }
    Ok(())
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
    fn tls_table_resolves_paths_and_is_strict() {
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:0\"",
            "address = \"127.0.0.1:0\"\n[listeners.main.tls]\ncert_file = \"tls/cert.pem\"\nkey_file = \"/k.pem\"",
        );
        let c = Config::parse(&text, Path::new("/etc/gw")).unwrap();
        let tls = c.listeners["main"].tls.as_ref().unwrap();
        assert_eq!(
            (tls.cert_file.as_path(), tls.key_file.as_path()),
            (Path::new("/etc/gw/tls/cert.pem"), Path::new("/k.pem"))
        );

        let e = Config::parse(&text.replace("key_file", "keyfile"), Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("unknown field `keyfile`"), "{e}");
        let e = Config::parse(&text.replace("key_file = \"/k.pem\"", ""), Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("missing field `key_file`"), "{e}");
        let e = c.check_files().unwrap_err().to_string();
        assert_eq!(e, "listeners.main.tls.cert_file: /etc/gw/tls/cert.pem does not exist");
    }

    #[test]
    fn media_table_defaults_and_bounds() {
        let c = Config::parse(MINIMAL, Path::new("/")).unwrap();
        assert_eq!((c.media.realtime_priority, c.media.coalesce_us), (20, DEFAULT_COALESCE_US));
        let with = |media: &str| Config::parse(&format!("{MINIMAL}\n[media]\n{media}"), Path::new("/"));
        assert_eq!(with("coalesce_us = 0").unwrap().media.coalesce_us, 0);
        assert_eq!(with("coalesce_us = 5000").unwrap().media.coalesce_us, 5000);
        let e = with("coalesce_us = 5001").unwrap_err().to_string();
        assert_eq!(e, "media.coalesce_us: must be 0 (off) to 5000 µs");
        let e = with("realtime_priority = 100").unwrap_err().to_string();
        assert_eq!(e, "media.realtime_priority: must be 0 (off) or 1 to 99");
    }

    #[test]
    fn dangling_route_is_named() {
        let text = MINIMAL.replace("plugin = \"x\"", "plugin = \"y\"");
        let e = Config::parse(&text, Path::new("/")).unwrap_err().to_string();
        assert_eq!(e, "routes[0].plugin: no plugin named `y` in [plugins]");
    }

    #[test]
    fn outbound_network_keys_have_defaults_and_are_validated() {
        let c = Config::parse(MINIMAL, Path::new("/etc/gw")).unwrap();
        let caps = &c.plugins["x"].capabilities;
        assert!(caps.connect.is_empty() && caps.secrets.is_empty());
        assert_eq!((caps.connect_timeout_ms, caps.idle_timeout_ms, caps.max_streams), (10_000, 30_000, 128));
        assert_eq!(caps.max_response_bytes, 16 * 1024 * 1024);

        let with = |extra: &str| {
            MINIMAL.replace("file = \"x.wasm\"", &format!("file = \"x.wasm\"\n[plugins.x.capabilities]\n{extra}"))
        };
        let c = Config::parse(
            &with("connect = [\"api.deepgram.com:443\", \"[::1]:9443\"]\nmax_streams = 2"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.plugins["x"].capabilities.max_streams, 2);
        for (extra, expected) in [
            (
                "connect = [\"a:443\", \"api.deepgram.com\"]",
                "plugins.x.capabilities.connect[1]: `api.deepgram.com` needs a port (host:port)",
            ),
            (
                "connect = [\"::1:443\"]",
                "plugins.x.capabilities.connect[0]: `::1:443`: write an IPv6 address in brackets, e.g. [::1]:443",
            ),
            ("idle_timeout_ms = 0", "plugins.x.capabilities.idle_timeout_ms: must be between 100 and 86400000 ms"),
            ("max_streams = 0", "plugins.x.capabilities.max_streams: must be 1 to 100000"),
            ("max_response_bytes = 0", "plugins.x.capabilities.max_response_bytes: must be at least 1"),
        ] {
            assert_eq!(Config::parse(&with(extra), Path::new("/")).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn secret_env_is_read_at_load_and_never_printed() {
        let with = |var: &str| {
            MINIMAL.replace(
                "file = \"x.wasm\"",
                &format!("file = \"x.wasm\"\n[plugins.x.capabilities]\nsecret_env = {{ api_key = \"{var}\" }}"),
            )
        };
        let e = Config::parse(&with("GATEWAYD_TEST_UNSET_SECRET_VAR"), Path::new("/")).unwrap_err().to_string();
        assert_eq!(e, "plugins.x.capabilities.secret_env.api_key: $GATEWAYD_TEST_UNSET_SECRET_VAR is not set");
        // PATH is set in every test environment; its value stands in for a key.
        let c = Config::parse(&with("PATH"), Path::new("/")).unwrap();
        let path = std::env::var("PATH").unwrap();
        let caps = &c.plugins["x"].capabilities;
        assert_eq!(caps.secrets.get("api_key").unwrap().expose(), path);
        assert!(!format!("{c:?}").contains(&path), "the config's Debug shows a secret");
    }

    #[test]
    fn extra_ca_file_resolves_and_is_checked() {
        let text = format!("[network]\nextra_ca_file = \"ca.pem\"\n{MINIMAL}");
        let c = Config::parse(&text, Path::new("/nonexistent-gw")).unwrap();
        assert_eq!(c.network.extra_ca_file.as_deref(), Some(Path::new("/nonexistent-gw/ca.pem")));
        let e = c.check_files().unwrap_err().to_string();
        assert!(e.starts_with("network.extra_ca_file: cannot read /nonexistent-gw/ca.pem"), "{e}");
    }
}
