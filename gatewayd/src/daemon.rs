//! Start-up, reload and shutdown.
//!
//! Start-up: config -> storage (migrated) -> plugins -> listeners bound -> admin -> ready
//! (`READY=1` to systemd). Reload, on SIGHUP or when the config file, a plugin file or a TLS
//! certificate or key file changes: the config is re-read and validated; changed plugins are
//! rebuilt and swapped, new ones loaded, removed ones dropped, JWT keys rotated, routes replaced, TLS certificates re-read; anything invalid is rejected with a log line and a counter while
//! the running setup keeps serving. Stop, on SIGTERM/SIGINT: stop accepting, close WebSockets
//! with 1001, let writers finish for up to `DRAIN_TIMEOUT`, exit.

use crate::auth::{JwtVerifier, Keys};
use crate::bus::Bus;
use crate::config::Config;
use crate::plugins::stats::Metrics;
use crate::plugins::{Runtime, Services};
use crate::server::admin::Admin;
use crate::server::{Listener, Server};
use crate::store::Store;
use anyhow::Context;
use notify::Watcher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long open connections get to close after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// File events closer together than this trigger one reload.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);

/// Open the database named by the config and apply migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.daemon.state_dir)
        .with_context(|| format!("daemon.state_dir: creating {}", config.daemon.state_dir.display()))?;
    let storage = &config.storage;
    let store =
        Store::connect(&storage.url, &config.daemon.state_dir, storage.max_connections, storage.statement_timeout())
            .await?;
    store.migrate().await?;
    Ok(store)
}

/// What a reload needs.
struct Reloader {
    config_path: PathBuf,
    runtime: Arc<Runtime>,
    keys: Arc<Keys>,
    listeners: Vec<Arc<Listener>>,
    media: Arc<crate::media::MediaEngine>,
    speech: Arc<crate::speech::Calls>,
    /// The files a change of which triggers a reload (set by [`watch_files`]; a reload that
    /// adds a plugin adds its component file).
    watched: Arc<Watched>,
}

/// Apply every plugin's `[plugins.<name>.media]` (audio files read and converted, recordings
/// directory created).
fn configure_media(media: &crate::media::MediaEngine, config: &Config) -> anyhow::Result<()> {
    for (name, p) in &config.plugins {
        let settings = crate::media::PluginMedia {
            recordings_dir: p.media.recordings_dir.clone(),
            record_calls: p.media.record_calls,
            keep_said_audio: p.media.keep_said_audio,
        };
        media.configure_plugin(name, &p.media.files, settings).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Run the daemon (config read from `config_path`) until a stop signal.
pub async fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    config.check_files()?;
    let keys = Arc::new(Keys::new(JwtVerifier::new(&config.auth)?));
    let store = open_store(&config).await?;
    tracing::info!(backend = ?store.backend(), "storage ready");
    let bus = Arc::new(Bus::new());
    let metrics = Arc::new(Metrics::default());
    let jwt = keys.clone();
    let media_threads =
        crate::media::threads::MediaThreads::start(&config.media).context("starting the media threads")?;
    let media = Arc::new(crate::media::MediaEngine::new(bus.clone(), media_threads));
    configure_media(&media, &config)?;
    let speech = Arc::new(crate::speech::Calls::from_config(&config, media.clone(), metrics.speech.clone())?);
    let services = Arc::new(Services {
        bus: bus.clone(),
        store: Some(store.clone()),
        jwt,
        metrics: metrics.clone(),
        media: media.clone(),
        speech: speech.clone(),
    });
    let runtime = Arc::new(Runtime::load(&config.plugins, services).await?);
    let server = Server::bind(&config, &runtime, keys.clone(), bus.clone(), metrics.edge.clone()).await?;
    let admin = Arc::new(Admin { metrics, bus: bus.clone(), ready: false.into() });
    if let Some(a) = &config.admin {
        let socket = tokio::net::TcpListener::bind(a.address)
            .await
            .map_err(|e| anyhow::anyhow!("admin.address: cannot bind {}: {e}", a.address))?;
        tracing::info!(address = %socket.local_addr()?, "admin listening");
        tokio::spawn(crate::server::admin::serve(socket, admin.clone()));
    }
    let reloader = Arc::new(Reloader {
        config_path: config_path.to_path_buf(),
        runtime: runtime.clone(),
        keys,
        listeners: server.listeners(),
        media,
        speech,
        watched: Arc::default(),
    });
    let addrs = server.local_addrs();
    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(server.run(stop_rx));
    watch_files(&config, config_path, reloader.clone());
    admin.ready.store(true, Ordering::Release);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tracing::info!(listeners = ?addrs, "gatewayd ready");

    wait_for_stop(reloader).await;
    admin.ready.store(false, Ordering::Release);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
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

fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// Serve signals until SIGTERM/SIGINT; SIGHUP reloads.
async fn wait_for_stop(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                reloader.reload().await;
            }
        }
    }
}

impl Reloader {
    /// Re-read the config and apply what changed. Never stops the daemon.
    async fn reload(&self) {
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        match Config::load(&self.config_path).and_then(|c| c.check_files().map(|_| c)) {
            Err(e) => tracing::error!(error = %e, "config reload rejected; the running configuration keeps serving"),
            Ok(config) => {
                if let Err(e) = configure_media(&self.media, &config) {
                    tracing::error!(error = %format!("{e:#}"), "plugin media not reloaded");
                }
                match crate::speech::calls::provider_tls(&config) {
                    Ok(tls) => self.speech.providers().set_tls(tls),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "[network] not reloaded; providers keep the current TLS roots")
                    }
                }
                self.speech.providers().set_defaults(config.speech.clone());
                let report = self.runtime.reload(&config.plugins).await;
                self.watched.set(&config, &self.config_path);
                if let Err(e) = self.keys.rotate(&config.auth) {
                    tracing::error!(error = %format!("{e:#}"), "JWT keys not reloaded; the current keys stay");
                }
                for listener in &self.listeners {
                    if config.listeners.contains_key(listener.name()) {
                        listener.update_routes(&config, &self.runtime);
                        listener.reload_tls(&config.listeners[listener.name()]);
                    } else {
                        tracing::warn!(
                            listener = listener.name(),
                            "listener removed from config: restart gatewayd to close it"
                        );
                    }
                }
                tracing::info!(
                    reloaded = ?report.reloaded,
                    added = ?report.added,
                    removed = ?report.removed,
                    rejected = report.failed.len(),
                    "reload done"
                );
            }
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }
}

/// The files whose change triggers a reload: the config file, every plugin's component and
/// every TLS certificate and key. Their directories are watched (editors and `cp` replace
/// files), and events are filtered by path.
#[derive(Default)]
struct Watched {
    files: parking_lot::RwLock<Vec<PathBuf>>,
    watcher: parking_lot::Mutex<Option<notify::RecommendedWatcher>>,
    dirs: parking_lot::Mutex<std::collections::BTreeSet<PathBuf>>,
}

impl Watched {
    /// Watch the files `config` names (and `config_path`), adding directories not yet watched.
    fn set(&self, config: &Config, config_path: &Path) {
        let mut files: Vec<PathBuf> = config.plugins.values().map(|p| p.file.clone()).collect();
        let tls = config.listeners.values().filter_map(|l| l.tls.as_ref());
        files.extend(tls.flat_map(|t| [t.cert_file.clone(), t.key_file.clone()]));
        files.push(std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf()));
        let mut watcher = self.watcher.lock();
        let mut dirs = self.dirs.lock();
        if let Some(watcher) = watcher.as_mut() {
            for dir in files.iter().filter_map(|f| f.parent()) {
                if dirs.contains(dir) {
                    continue;
                }
                match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        dirs.insert(dir.to_path_buf());
                    }
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; reload with SIGHUP"),
                }
            }
        }
        *self.files.write() = files;
    }
}

/// Watch the files of [`Watched`]; a change triggers a debounced reload.
fn watch_files(config: &Config, config_path: &Path, reloader: Arc<Reloader>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watched = reloader.watched.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
            && event.paths.iter().any(|p| watched.files.read().contains(p))
        {
            let _ = tx.send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(w) => *reloader.watched.watcher.lock() = Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP");
            return;
        }
    }
    reloader.watched.set(config, config_path);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            tracing::info!("file change: reloading");
            reloader.reload().await;
        }
    });
}
