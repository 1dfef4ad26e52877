//! Hot-reload benchmarks.
//!
//! - `reload-latency`: against a running daemon serving the fault-test plugin from `--file`,
//!   replace that file (write beside it + rename) alternately with `--v1` and `--v2`, and time
//!   from the rename to the first `version` reply from the new build (probing every 1 ms).
//! - `reload-dispatch`: in-process, dispatch events back to back while the runtime reloads the
//!   plugin to another build; report dispatch cost before, during and after the reload.

use crate::report::Latencies;
use gatewayd::bus::{Bus, ConnParts, Next, Outbox};
use gatewayd::config::Config;
use gatewayd::plugins::{Event, Runtime, Session};
use gatewayd_e2e::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct LatencyArgs {
    /// WebSocket URL of a fault-test route, e.g. ws://127.0.0.1:18000/ws/faults/
    #[arg(long)]
    url: String,
    /// The component file the daemon loads (it is replaced).
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value = "build/plugins/fault-test.wasm")]
    v1: PathBuf,
    #[arg(long, default_value = "build/plugins/fault-test-v2.wasm")]
    v2: PathBuf,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
}

fn replace(target: &Path, source: &Path) -> anyhow::Result<()> {
    let tmp = target.with_extension("swap");
    std::fs::copy(source, &tmp)?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

pub async fn latency(a: LatencyArgs) -> anyhow::Result<()> {
    let mut c = Client::connect(&a.url).await?;
    let mut lat = Latencies::default();
    for round in 0..a.rounds {
        let (source, want) = if round % 2 == 0 { (&a.v2, "version:2") } else { (&a.v1, "version:1") };
        let written = Instant::now();
        replace(&a.file, source)?;
        loop {
            c.send_text("version").await?;
            if c.recv_text().await? == want {
                break;
            }
            anyhow::ensure!(written.elapsed() < Duration::from_secs(30), "round {round}: {want} never served");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lat.record(written.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("reloads: {}", a.rounds);
    lat.print("reload_file_to_first_event");
    Ok(())
}

#[derive(clap::Args)]
pub struct DispatchArgs {
    #[arg(long, default_value = "build/plugins/fault-test.wasm")]
    v1: PathBuf,
    #[arg(long, default_value = "build/plugins/fault-test-v2.wasm")]
    v2: PathBuf,
    /// Seconds of dispatching before the reload starts (and after it ends).
    #[arg(long, default_value_t = 2)]
    window: u64,
}

fn config_for(file: &Path) -> anyhow::Result<Config> {
    let file = std::fs::canonicalize(file)?;
    Ok(Config::parse(
        &format!("[listeners.x]\naddress = \"127.0.0.1:0\"\n[plugins.fault-test]\nfile = \"{}\"\n", file.display()),
        Path::new("/"),
    )?)
}

pub async fn dispatch(a: DispatchArgs) -> anyhow::Result<()> {
    let v1 = config_for(&a.v1)?;
    let v2 = config_for(&a.v2)?;
    let bus = Arc::new(Bus::new());
    let services = crate::dispatch::in_process_services(&bus, &v1)?;
    let runtime = Arc::new(Runtime::load(&v1.plugins, services).await?);
    let plugin = runtime.plugin("fault-test").expect("loaded").clone();
    let outbox = Arc::new(Outbox::new(1 << 24, usize::MAX));
    let conn = bus.register(ConnParts { plugin: "fault-test".into(), outbox: outbox.clone(), session: Arc::default() });
    let drained = outbox.clone();
    tokio::spawn(async move { while let Next::Frame(_) = drained.next().await {} });

    let window = Duration::from_secs(a.window);
    let (mut before, mut during, mut after) = (Latencies::default(), Latencies::default(), Latencies::default());
    let started = Instant::now();
    let mut reload: Option<tokio::task::JoinHandle<Duration>> = None;
    let mut reload_took = None;
    let mut after_since = None;
    loop {
        let t0 = Instant::now();
        let (r, _) = plugin.dispatch(Event::Text(conn, "ping".into()), Session { conn: Some(conn), state: None }).await;
        let took = t0.elapsed();
        r.map_err(|f| anyhow::anyhow!("dispatch failed: {f}"))?;
        match (&reload, reload_took, after_since) {
            (None, None, _) if started.elapsed() < window => before.record(took),
            (None, None, _) => {
                let rt = runtime.clone();
                let plugins = v2.plugins.clone();
                reload = Some(tokio::spawn(async move {
                    let t = Instant::now();
                    let report = rt.reload(&plugins).await;
                    assert_eq!(report.reloaded, vec!["fault-test".to_string()], "{report:?}");
                    t.elapsed()
                }));
            }
            (Some(h), None, _) if !h.is_finished() => during.record(took),
            (Some(_), None, _) => {
                reload_took = Some(reload.take().expect("running").await?);
                after_since = Some(Instant::now());
            }
            (_, Some(_), Some(since)) if since.elapsed() < window => after.record(took),
            _ => break,
        }
        tokio::task::yield_now().await;
    }
    println!("reload_build_and_swap: {:.1} ms", reload_took.expect("reloaded").as_secs_f64() * 1e3);
    before.print("dispatch_before");
    during.print("dispatch_during");
    after.print("dispatch_after");
    Ok(())
}
