//! The speech provider plugins (`stt-deepgram`, `tts-elevenlabs`, `tts-openai`) pointed at the
//! loopback fake vendors of `tests/fake-vendors` over TLS with their test CA: the config and
//! environment every test that speaks or listens on a call adds to its daemon.

use crate::plugin_file;
use gatewayd_fake_vendors::deepgram::{DeepgramFake, DeepgramScript};
use gatewayd_fake_vendors::tts::{TtsFake, TtsScript, TtsVendor};

/// API keys: distinctive, so a leak into the daemon's log is found.
pub const DEEPGRAM_KEY: &str = "dg-secret-4f1d9c2b7e";
pub const ELEVEN_KEY: &str = "xi-secret-8a3e5b1c90";
pub const OPENAI_KEY: &str = "sk-secret-2b7d4e6f13";

/// The three fakes, started with the test keys and `dg` / `tts` scripts.
pub async fn fakes(dg: DeepgramScript, tts: TtsScript) -> (DeepgramFake, TtsFake, TtsFake) {
    let dg = DeepgramFake::start(DeepgramScript { key: DEEPGRAM_KEY.into(), ..dg }).await;
    let eleven = TtsFake::start(TtsVendor::ElevenLabs, TtsScript { key: ELEVEN_KEY.into(), ..tts.clone() }).await;
    let openai = TtsFake::start(TtsVendor::OpenAi, TtsScript { key: OPENAI_KEY.into(), ..tts }).await;
    (dg, eleven, openai)
}

/// Config and environment for a daemon using the fakes.
pub struct Providers {
    /// `[network]`, `[speech]` (stt `deepgram`, tts `elevenlabs`) and the three
    /// `[plugins.<name>]` tables (`deepgram`, `elevenlabs`, `openai`).
    pub toml: String,
    /// The API keys, as the daemon reads them (`secret_env`).
    pub env: Vec<(String, String)>,
    /// Holds the CA file (read at start and on reload).
    pub ca_dir: crate::tempdir::TempDir,
}

/// The providers pointed at `dg`, `eleven` and `openai`; `deepgram_config` is added to the
/// Deepgram provider's config table.
pub fn providers(dg: &DeepgramFake, eleven: &TtsFake, openai: &TtsFake, deepgram_config: &str) -> Providers {
    let ca_dir = crate::tempdir::TempDir::new("gatewayd-speech-ca");
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, format!("{}\n{}\n{}", dg.ca_pem, eleven.ca_pem, openai.ca_pem)).expect("write the CA file");
    let toml = format!(
        r#"
[network]
extra_ca_file = "{ca}"

[speech]
stt = "deepgram"
tts = "elevenlabs"

[plugins.deepgram]
file = "{stt}"
[plugins.deepgram.capabilities]
connect = ["{dg}"]
secret_env = {{ api_key = "TEST_DEEPGRAM_KEY" }}
[plugins.deepgram.config]
base_url = "{dg_url}"
{deepgram_config}

[plugins.elevenlabs]
file = "{eleven_file}"
[plugins.elevenlabs.capabilities]
connect = ["{eleven}"]
secret_env = {{ api_key = "TEST_ELEVEN_KEY" }}
[plugins.elevenlabs.config]
base_url = "{eleven_url}"
default_voice = "test-voice"

[plugins.openai]
file = "{openai_file}"
[plugins.openai.capabilities]
connect = ["{openai}"]
secret_env = {{ api_key = "TEST_OPENAI_KEY" }}
[plugins.openai.config]
base_url = "{openai_url}"
"#,
        ca = ca.display(),
        stt = plugin_file("stt-deepgram").display(),
        dg = dg.addr,
        dg_url = dg.base_url(),
        eleven_file = plugin_file("tts-elevenlabs").display(),
        eleven = eleven.addr,
        eleven_url = eleven.base_url(),
        openai_file = plugin_file("tts-openai").display(),
        openai = openai.addr,
        openai_url = openai.base_url(),
    );
    let env = vec![
        ("TEST_DEEPGRAM_KEY".to_string(), DEEPGRAM_KEY.to_string()),
        ("TEST_ELEVEN_KEY".to_string(), ELEVEN_KEY.to_string()),
        ("TEST_OPENAI_KEY".to_string(), OPENAI_KEY.to_string()),
    ];
    Providers { toml, env, ca_dir }
}

/// Fails the test when an API key appears in `logs`.
pub fn assert_no_key_logged(logs: &[String]) {
    let logs = logs.join("\n");
    for key in [DEEPGRAM_KEY, ELEVEN_KEY, OPENAI_KEY] {
        assert!(!logs.contains(key), "an API key appears in the daemon's log");
    }
}

/// The data directory of an offline engine (`pocketsphinx`, `flite`) as `make setup` installs
/// it: `build/models/<engine>` in the repository (git-ignored). Panics, saying how to install
/// it, when missing.
pub fn model_dir(engine: &str) -> std::path::PathBuf {
    let dir = crate::workspace().join("build/models").join(engine);
    assert!(dir.is_dir(), "{} is missing: run `make setup` (scripts/speech/{engine}.sh) first", dir.display());
    dir
}

/// `[speech]` (stt `pocketsphinx`, tts `flite`) and the two offline providers, as in
/// `config/gatewayd.toml`: PocketSphinx (en-us, the full language model) and Flite (the
/// `slt` voice), their components from `build/plugins`, each reading its data from
/// `build/models/<engine>` (both checked); `pocketsphinx_config` is added to the recogniser's
/// config table.
pub fn offline_providers_toml(pocketsphinx_config: &str) -> String {
    let plugins = plugin_file("stt-pocketsphinx").parent().expect("build/plugins").to_path_buf();
    plugin_file("tts-flite");
    let models = model_dir("pocketsphinx").parent().expect("build/models").to_path_buf();
    model_dir("flite");
    offline_providers_toml_in(&plugins, &models, pocketsphinx_config)
}

/// The same with the components in `plugins` (`stt-pocketsphinx.wasm`, `tts-flite.wasm`) and
/// the engines' data in `models` (`pocketsphinx/`, `flite/`), as the benchmark takes them.
pub fn offline_providers_toml_in(
    plugins: &std::path::Path,
    models: &std::path::Path,
    pocketsphinx_config: &str,
) -> String {
    format!(
        r#"
[speech]
stt = "pocketsphinx"
tts = "flite"

[plugins.pocketsphinx]
file = "{stt}"
[plugins.pocketsphinx.limits]
event_timeout_ms = 1000
load_timeout_ms = 30000
memory_mb = 512
[plugins.pocketsphinx.capabilities]
data_dir = "{stt_data}"
[plugins.pocketsphinx.config]
{pocketsphinx_config}

[plugins.flite]
file = "{tts}"
[plugins.flite.limits]
event_timeout_ms = 1000
load_timeout_ms = 10000
memory_mb = 128
[plugins.flite.capabilities]
data_dir = "{tts_data}"
"#,
        stt = plugins.join("stt-pocketsphinx.wasm").display(),
        stt_data = models.join("pocketsphinx").display(),
        tts = plugins.join("tts-flite.wasm").display(),
        tts_data = models.join("flite").display(),
    )
}
