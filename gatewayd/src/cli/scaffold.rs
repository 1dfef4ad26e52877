//! `gatewayd plugin new <ivr|protocol> <name>`: a plugin crate of its own, outside any
//! workspace, that builds into a wasm32-wasip2 component with one command (`cargo build
//! --release`; `.cargo/config.toml` names the target).
//!
//! The SDK is part of the daemon: the guest crate `gatewayd-plugin` with its WIT contract and,
//! for IVR plugins, the `ivr.md` protocol crate are compiled into this binary and written
//! beside the new crate (`sdk/`), so a plugin builds against exactly the contract of the daemon
//! that created it, without the gatewayd sources. Third-party crates (wit-bindgen, serde) come
//! from crates.io through cargo, as for any crate.
//!
//! The code written is the repository's own: the IVR crate is `plugins/ivr-menu` (a greeting,
//! a two-option menu, re-prompts on silence) with its prompts, the protocol crate is
//! `plugins/echo`. A generated `gatewayd.toml` holds the route and plugin tables to add to the
//! daemon's config.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// What kind of plugin to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// An IVR on the ivr.md protocol (calls with audio, DTMF, prompts).
    Ivr,
    /// A protocol plugin of your own (WebSocket and HTTP routes).
    Protocol,
}

/// The SDK's version: the daemon's.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Third-party dependencies of the SDK and the templates, as the workspace pins them (a test
/// keeps them in step with the workspace `Cargo.toml`).
const WIT_BINDGEN: &str = r#"{ version = "0.61", default-features = false, features = ["macros", "realloc"] }"#;
const SERDE: &str = r#"{ version = "1", features = ["derive"] }"#;
const SERDE_JSON: &str = r#""1""#;

const SDK_LIB: &str = include_str!("../../../plugin-api/src/lib.rs");
const SDK_WIT: &str = include_str!("../../../plugin-api/wit/gatewayd.wit");
const IVR_PROTOCOL_LIB: &str = include_str!("../../../plugins/ivr-protocol/src/lib.rs");
const IVR_TEMPLATE: &str = include_str!("../../../plugins/ivr-menu/src/lib.rs");
const PROTOCOL_TEMPLATE: &str = include_str!("../../../plugins/echo/src/lib.rs");
/// The IVR template's own table (`ivr_menu_` becomes the new plugin's prefix).
const IVR_MIGRATIONS: [(&str, &str); 2] = [
    (
        "migrations/sqlite/0001_choices.sql",
        include_str!("../../../plugins/ivr-menu/migrations/sqlite/0001_choices.sql"),
    ),
    (
        "migrations/postgres/0001_choices.sql",
        include_str!("../../../plugins/ivr-menu/migrations/postgres/0001_choices.sql"),
    ),
];
const PROMPTS: [(&str, &[u8]); 3] = [
    ("greeting", include_bytes!("../../../plugins/ivr-menu/prompts/greeting.wav")),
    ("option1", include_bytes!("../../../plugins/ivr-menu/prompts/option1.wav")),
    ("option2", include_bytes!("../../../plugins/ivr-menu/prompts/option2.wav")),
];

/// A plugin name: `[a-z][a-z0-9-]*`, at most 63 characters (it is the crate, the config key and
/// the route path).
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!("plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter (at most 63)");
    }
    Ok(())
}

/// Write a new `kind` plugin crate `name` into `parent/name` (which must not exist). Returns
/// the crate's directory.
pub fn new_plugin(kind: Kind, name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = std::path::absolute(parent.join(name)).context("resolving the plugin directory")?;
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        ("Cargo.toml".into(), crate_manifest(kind, name).into_bytes()),
        (".cargo/config.toml".into(), b"[build]\ntarget = \"wasm32-wasip2\"\n".to_vec()),
        (".gitignore".into(), b"/target\n".to_vec()),
        ("src/lib.rs".into(), template(kind, name).into_bytes()),
        ("gatewayd.toml".into(), config_snippet(kind, name, &root).into_bytes()),
        ("README.md".into(), readme(kind, name).into_bytes()),
        ("sdk/gatewayd-plugin/Cargo.toml".into(), sdk_manifest().into_bytes()),
        ("sdk/gatewayd-plugin/src/lib.rs".into(), SDK_LIB.as_bytes().to_vec()),
        ("sdk/gatewayd-plugin/wit/gatewayd.wit".into(), SDK_WIT.as_bytes().to_vec()),
    ];
    if kind == Kind::Ivr {
        files.push(("sdk/gatewayd-ivr-protocol/Cargo.toml".into(), ivr_protocol_manifest().into_bytes()));
        files.push(("sdk/gatewayd-ivr-protocol/src/lib.rs".into(), IVR_PROTOCOL_LIB.as_bytes().to_vec()));
        for (prompt, wav) in PROMPTS {
            files.push((format!("prompts/{prompt}.wav").into(), wav.to_vec()));
        }
        for (path, sql) in IVR_MIGRATIONS {
            files.push((path.into(), table_prefix(sql, name).into_bytes()));
        }
    }
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("files are under the root"))
            .with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root)
}

fn crate_manifest(kind: Kind, name: &str) -> String {
    let ivr = match kind {
        Kind::Ivr => "gatewayd-ivr-protocol = { path = \"sdk/gatewayd-ivr-protocol\" }\n",
        Kind::Protocol => "",
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
gatewayd-plugin = {{ path = "sdk/gatewayd-plugin" }}
{ivr}serde = {SERDE}
serde_json = {SERDE_JSON}

# A workspace of its own: the crate builds the same wherever it sits.
[workspace]

[profile.release]
debug = false
strip = true
codegen-units = 4
"#
    )
}

/// The manifest of an SDK crate written beside the plugin; `extra` adds dependency lines.
fn sdk_crate_manifest(name: &str, description: &str, extra: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
description = "{description} (written by `gatewayd plugin new`)."
version = "{SDK_VERSION}"
edition = "2024"
license = "Apache-2.0"

[dependencies]
{extra}serde = {SERDE}
serde_json = {SERDE_JSON}
"#
    )
}

fn sdk_manifest() -> String {
    let description = "Guest SDK for gatewayd plugins: WIT bindings plus typed helpers";
    sdk_crate_manifest("gatewayd-plugin", description, &format!("wit-bindgen = {WIT_BINDGEN}\n"))
}

fn ivr_protocol_manifest() -> String {
    let description = "The ivr.md wire protocol for IVR plugins";
    sdk_crate_manifest("gatewayd-ivr-protocol", description, "gatewayd-plugin = { path = \"../gatewayd-plugin\" }\n")
}

/// The template's source, its header naming the new plugin.
fn template(kind: Kind, name: &str) -> String {
    let (source, from) = match kind {
        Kind::Ivr => (IVR_TEMPLATE, "ivr-menu"),
        Kind::Protocol => (PROTOCOL_TEMPLATE, "echo"),
    };
    let source =
        format!("//! `{name}`: written by `gatewayd plugin new` from gatewayd's `{from}` plugin.\n//!\n{source}")
            .replace(&format!("[plugins.{from}"), &format!("[plugins.{name}"));
    table_prefix(&source, name)
}

/// Tables of the template (`ivr_menu_...`) named after the new plugin (`my_ivr_...`): on SQLite
/// all plugins' tables share one namespace, so each plugin prefixes its own.
fn table_prefix(text: &str, name: &str) -> String {
    text.replace("ivr_menu_", &format!("{}_", name.replace('-', "_")))
}

/// The wasm file `cargo build --release` makes.
fn wasm_path(root: &Path, name: &str) -> PathBuf {
    root.join("target/wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")))
}

fn config_snippet(kind: Kind, name: &str, root: &Path) -> String {
    let wasm = wasm_path(root, name);
    match kind {
        Kind::Ivr => format!(
            r#"# Add to the daemon's config (e.g. /etc/gatewayd/gatewayd.toml), then reload:
# `systemctl reload gatewayd` (or SIGHUP). Calls: ws://<ivr listener>/{name}

[[routes]]
name = "{name}"
listener = "ivr"
path = "/{name}"
kind = "websocket"
plugin = "{name}"
auth = "none"
media = {{ codec = "l16", rate = 8000 }}

[plugins.{name}]
file = "{wasm}"
fault_report = "event"

# Its own table ({table}_choices, migrations/): the daemon creates it when it loads the plugin.
[plugins.{name}.capabilities]
store = "read-write"

[plugins.{name}.config]
# Silence after a prompt before re-prompting, ms; re-prompts before hanging up.
no_input_ms = 5000
max_reprompts = 1

[plugins.{name}.media.files]
greeting = "{root}/prompts/greeting.wav"
option1 = "{root}/prompts/option1.wav"
option2 = "{root}/prompts/option2.wav"
"#,
            wasm = wasm.display(),
            root = root.display(),
            table = name.replace('-', "_"),
        ),
        Kind::Protocol => format!(
            r#"# Add to the daemon's config (e.g. /etc/gatewayd/gatewayd.toml), then reload:
# `systemctl reload gatewayd` (or SIGHUP). Clients: ws://<main listener>/ws/{name}/

[[routes]]
name = "{name}"
listener = "main"
path = "/ws/{name}/"
kind = "websocket"
plugin = "{name}"
auth = "optional"

[plugins.{name}]
file = "{wasm}"
"#,
            wasm = wasm.display(),
        ),
    }
}

fn readme(kind: Kind, name: &str) -> String {
    let what = match kind {
        Kind::Ivr => "an IVR on gatewayd's ivr.md protocol (greeting, two-option menu, re-prompt on silence)",
        Kind::Protocol => "a gatewayd protocol plugin (every message echoed back)",
    };
    format!(
        r#"# {name}

{what}, written by `gatewayd plugin new`.

1. Build (needs the `wasm32-wasip2` target: `rustup target add wasm32-wasip2`):
   `cargo build --release` -> `target/wasm32-wasip2/release/{file}.wasm`
2. Add `gatewayd.toml` (route and plugin tables) to the daemon's config.
3. Reload the daemon (`systemctl reload gatewayd` or SIGHUP): the plugin is loaded and its route
   served without a restart. Rebuilding the wasm file later reloads it on its own.

`sdk/` is the gatewayd SDK of the daemon that wrote this crate (the `gatewayd:plugin` WIT contract
and its Rust helpers); `gatewayd plugin new` writes a fresh copy for a newer daemon.
"#,
        file = name.replace('-', "_"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["my-ivr", "a", "ivr2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(64);
        for bad in ["", "My", "-x", "x-", "a_b", "../x", "a/b", long.as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    /// The SDK's third-party versions are the workspace's.
    #[test]
    fn sdk_dependencies_match_the_workspace() {
        let manifest: toml::Table =
            toml::from_str(include_str!("../../../Cargo.toml")).expect("the workspace Cargo.toml parses");
        let deps = &manifest["workspace"]["dependencies"];
        for (name, ours) in [("wit-bindgen", WIT_BINDGEN), ("serde", SERDE), ("serde_json", SERDE_JSON)] {
            let ours: toml::Value = toml::from_str::<toml::Table>(&format!("v = {ours}")).unwrap()["v"].clone();
            assert_eq!(deps[name], ours, "{name}: the scaffold's pin differs from the workspace's");
        }
    }

    #[test]
    fn writes_a_crate_and_refuses_to_overwrite() {
        let parent = std::env::temp_dir().join(format!("gatewayd-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let root = new_plugin(Kind::Ivr, "my-ivr", &parent).unwrap();
        for f in ["Cargo.toml", "src/lib.rs", "sdk/gatewayd-plugin/wit/gatewayd.wit", "prompts/greeting.wav"] {
            assert!(root.join(f).is_file(), "{f}");
        }
        let table = std::fs::read_to_string(root.join("migrations/sqlite/0001_choices.sql")).unwrap();
        assert!(table.contains("CREATE TABLE my_ivr_choices") && !table.contains("ivr_menu"), "{table}");
        let code = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(code.contains("INSERT INTO my_ivr_choices") && !code.contains("ivr_menu_"), "the code names its table");
        let snippet = std::fs::read_to_string(root.join("gatewayd.toml")).unwrap();
        assert!(snippet.parse::<toml::Table>().is_ok(), "{snippet}");
        assert!(new_plugin(Kind::Protocol, "my-ivr", &parent).is_err());
        let _ = std::fs::remove_dir_all(&parent);
    }
}
