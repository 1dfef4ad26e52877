//! Speech streams against the real provider components (built for wasm32-wasip2) and the
//! loopback fake vendors (`gatewayd-fake-vendors`) over TLS with a test CA.

mod stt;
mod tts;

use super::{Limits, Provider, SpeechEngine};
use crate::config::Capabilities;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Failure bound for anything expected to happen (the machine is shared and busy).
pub const WITHIN: Duration = Duration::from_secs(30);

/// The key the fakes accept.
pub const KEY: &str = gatewayd_fake_vendors::TEST_KEY;

/// The component `file` (e.g. `gatewayd_stt_deepgram.wasm`): under `$CARGO_TARGET_DIR` (at
/// run or build time) or the workspace's `target`, profile `plugin`, or `build/plugins`.
pub fn component(file: &str, package: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(root.join("target"));
    let mut candidates: Vec<PathBuf> = dirs.iter().map(|d| d.join("wasm32-wasip2/plugin").join(file)).collect();
    candidates.push(root.join("build/plugins").join(file));
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the provider component {file} is missing; build it first: \
             cargo build --profile plugin --target wasm32-wasip2 -p {package}"
        )
    })
}

/// One engine for all tests.
pub fn engine() -> &'static SpeechEngine {
    static ENGINE: OnceLock<SpeechEngine> = OnceLock::new();
    ENGINE.get_or_init(|| SpeechEngine::new().expect("speech engine"))
}

/// Load provider `package` (component `file`) as plugin `name` with `config` (JSON), allowed
/// to connect to `addr`, secret `api_key = key`, trusting `ca_pem`.
pub async fn provider(
    name: &str,
    file: &str,
    package: &str,
    config: serde_json::Value,
    addr: std::net::SocketAddr,
    key: &str,
    ca_pem: &str,
) -> Arc<Provider> {
    let ca = std::env::temp_dir().join(format!("gatewayd-speech-ca-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&ca, ca_pem).unwrap();
    let tls = crate::net::tls::client_config(false, Some(&ca)).unwrap();
    let _ = std::fs::remove_file(&ca);
    let caps = Capabilities {
        connect: vec![addr.to_string()],
        secrets: [("api_key", key)].into_iter().collect(),
        ..Capabilities::default()
    };
    let provider =
        Provider::load(engine(), name, &component(file, package), &config.to_string(), &caps, Limits::default(), tls)
            .await
            .unwrap_or_else(|e| panic!("loading {file}: {e:#}"));
    Arc::new(provider)
}

/// Everything logged on this thread (at every level) while the guard lives.
pub struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    /// Capture the current thread's logs (a `#[tokio::test]` runs its tasks on it).
    pub fn capture() -> Logs {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || Capture(buffer.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        Logs { buffer, _guard: tracing::subscriber::set_default(subscriber) }
    }

    /// The text logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = self.0.lock().unwrap();
        if b.len() < 4 << 20 {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Receive from `rx` within [`WITHIN`]; panics naming `what`.
pub async fn next<T>(rx: &mut tokio::sync::mpsc::Receiver<T>, what: &str) -> T {
    match tokio::time::timeout(WITHIN, rx.recv()).await {
        Ok(Some(v)) => v,
        Ok(None) => panic!("{what}: the channel closed"),
        Err(_) => panic!("{what}: nothing within {WITHIN:?}"),
    }
}
