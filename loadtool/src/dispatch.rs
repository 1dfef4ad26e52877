//! Plugin dispatch cost: the time of `Plugin::dispatch` for one event, measured in-process with
//! the real runtime and a real plugin, no network. A connection is registered on the bus so the
//! plugin's replies are really queued (and drained here).

use crate::report::Latencies;
use gatewayd::bus::{Bus, ConnParts, Next, Outbound, Outbox};
use gatewayd::config::Config;
use gatewayd::plugins::{Event, Runtime, Services, Session};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct DispatchArgs {
    /// The signaling plugin component.
    #[arg(long, default_value = "build/plugins/signaling.wasm")]
    plugin: PathBuf,
    /// Measured events (after 1,000 warm-up events).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
}

pub async fn run(a: DispatchArgs) -> anyhow::Result<()> {
    let plugin_path = std::fs::canonicalize(&a.plugin)?;
    let config = Config::parse(
        &format!(
            "[listeners.x]\naddress = \"127.0.0.1:0\"\n[plugins.signaling]\nfile = \"{}\"\n",
            plugin_path.display()
        ),
        std::path::Path::new("/"),
    )?;
    let bus = Arc::new(Bus::new());
    let services = in_process_services(&bus, &config)?;
    let runtime = Runtime::load(&config.plugins, services).await?;
    let plugin = runtime.plugin("signaling").expect("loaded").clone();

    // Room for every reply: the measured loop must never find the outbox full.
    let outbox = Arc::new(Outbox::new(a.events + 1000, usize::MAX));
    let conn = bus.register(ConnParts { plugin: "signaling".into(), outbox: outbox.clone(), session: Arc::default() });
    let drained = outbox.clone();
    let drain = tokio::spawn(async move {
        let mut replies = 0u64;
        while let Next::Frame(out) = drained.next().await {
            if matches!(out, Outbound::Text(_)) {
                replies += 1;
            }
        }
        replies
    });
    // A guest session (as on_open would have saved it) sending `ping`: parse, load the
    // session, one host call to reply.
    let state = r#"{"role":{"kind":"guest","guest_id":"g1"},"business_id":"b1"}"#.to_string();
    let mut lat = Latencies::default();
    for i in 0..(a.events + 1000) {
        let session = Session { conn: Some(conn), state: Some(state.clone()) };
        let t0 = Instant::now();
        let (result, _) = plugin.dispatch(Event::Text(conn, r#"{"type":"ping"}"#.into()), session).await;
        let elapsed = t0.elapsed();
        result.map_err(|f| anyhow::anyhow!("dispatch failed: {f}"))?;
        if i >= 1000 {
            lat.record(elapsed);
        }
    }
    bus.unregister(conn);
    outbox.close();
    drop(plugin);
    drop(runtime);
    let replies = drain.await?;
    anyhow::ensure!(replies as usize == a.events + 1000, "expected a pong per event, got {replies}");
    println!("events: {}", a.events);
    lat.print("dispatch");
    Ok(())
}

/// Daemon services for an in-process runtime: the given bus, no database, the config's keys,
/// fresh metrics, a media engine and speech (no providers).
pub fn in_process_services(bus: &Arc<Bus>, config: &Config) -> anyhow::Result<Arc<Services>> {
    let jwt = Arc::new(gatewayd::auth::Keys::new(gatewayd::auth::JwtVerifier::new(&config.auth)?));
    let media_threads = gatewayd::media::threads::MediaThreads::start(&gatewayd::config::MediaConfig {
        threads: 1,
        realtime_priority: 0,
        coalesce_us: 0,
    })?;
    let media = Arc::new(gatewayd::media::MediaEngine::new(bus.clone(), media_threads));
    let metrics = Arc::new(gatewayd::plugins::stats::Metrics::default());
    let speech = Arc::new(gatewayd::speech::Calls::from_config(config, media.clone(), metrics.speech.clone())?);
    Ok(Arc::new(Services { bus: bus.clone(), store: None, jwt, metrics, media, speech }))
}
