//! Start-up and shutdown: config -> storage (migrated) -> plugins -> listeners -> serve, and on
//! SIGTERM/SIGINT a graceful stop.

use crate::auth::JwtVerifier;
use crate::bus::Bus;
use crate::config::Config;
use crate::plugins::{Runtime, Services};
use crate::server::Server;
use crate::store::Store;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long open connections get to close after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Open the database named by the config and apply migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.daemon.state_dir)
        .with_context(|| format!("daemon.state_dir: creating {}", config.daemon.state_dir.display()))?;
    let store = Store::connect(&config.storage.url, &config.daemon.state_dir, config.storage.max_connections).await?;
    store.migrate().await?;
    Ok(store)
}

/// Run the daemon until a stop signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.check_files()?;
    let jwt = Arc::new(JwtVerifier::new(&config.auth)?);
    let store = open_store(&config).await?;
    tracing::info!(backend = ?store.backend(), "storage ready");
    let bus = Arc::new(Bus::new());
    let media = Arc::new(crate::media::MediaEngine::new(bus.clone()));
    for (name, p) in &config.plugins {
        let settings = crate::media::PluginMedia {
            recordings_dir: p.media.recordings_dir.clone(),
            record_calls: p.media.record_calls,
        };
        media.configure_plugin(name, &p.media.files, settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let services = Arc::new(Services { bus: bus.clone(), store: Some(store.clone()), jwt: jwt.clone(), media });
    let runtime = Runtime::load(&config.plugins, services).await?;
    let server = Server::bind(&config, &runtime, jwt, bus.clone()).await?;
    tracing::info!(listeners = ?server.local_addrs(), "gatewayd ready");

    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(server.run(stop_rx));
    wait_for_stop_signal().await;
    tracing::info!(connections = bus.len(), "stopping: no new connections; closing open ones with 1001");
    let _ = stop_tx.send(true);
    let _ = serving.await;
    bus.close_all(1001, "server shutting down");
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while !bus.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
    tracing::info!(left_open = bus.len(), "stopped");
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
