//! Signaling load: the spec flow once, invite load over many pairs, idle connections.

use crate::report::{Latencies, rss_kib};
use anyhow::{Context, bail};
use gatewayd_e2e::Client;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct FlowArgs {
    /// Daemon base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// HS256 secret the daemon verifies with.
    #[arg(long, default_value = "gatewayd-development-secret-change-me")]
    secret: String,
    /// The agent's user id (must have exactly one membership).
    #[arg(long, default_value_t = 720)]
    user_id: i64,
    #[arg(long, default_value = "2b1b2a9e-4a0a-4e1a-95d6-a6e4b9d9d1b2")]
    guest_id: String,
}

fn agent_url(base: &str, secret: &str, user_id: i64) -> String {
    let claims = json!({"user_id": user_id, "exp": jsonwebtoken::get_current_timestamp() + 3600});
    format!("{base}/ws/signaling/?token={}", gatewayd_e2e::token_with(&claims, secret))
}

async fn show(who: &str, c: &mut Client) -> anyhow::Result<Value> {
    let v = c.recv_json().await?;
    println!("{who} <- {v}");
    Ok(v)
}

async fn say(who: &str, c: &mut Client, v: Value) -> anyhow::Result<()> {
    println!("{who} -> {v}");
    c.send_json(&v).await
}

/// The spec's flow, printed.
pub async fn flow(a: FlowArgs) -> anyhow::Result<()> {
    let mut agent = Client::connect(&agent_url(&a.url, &a.secret, a.user_id)).await?;
    let hello = show("agent", &mut agent).await?;
    let (Some(business), Some(agent_id)) = (hello["business_id"].as_str(), hello["agent_id"].as_str()) else {
        bail!("the agent was not resolved: {hello}");
    };
    let (business, agent_id) = (business.to_string(), agent_id.to_string());
    let mut guest =
        Client::connect(&format!("{}/ws/signaling/?guest_id={}&business_id={business}", a.url, a.guest_id)).await?;
    show("guest", &mut guest).await?;
    say("agent", &mut agent, json!({"type": "call.invite", "to_guest_id": a.guest_id, "business_id": business, "room_id": "room_abc123", "caller_display": "Ada Lovelace"})).await?;
    show("agent", &mut agent).await?;
    show("guest", &mut guest).await?;
    say("guest", &mut guest, json!({"type": "call.response", "to_agent_id": agent_id, "business_id": business, "room_id": "room_abc123", "accept": true})).await?;
    show("guest", &mut guest).await?;
    show("agent", &mut agent).await?;
    say("guest", &mut guest, json!({"type": "call.invite", "to_agent_id": agent_id, "business_id": business, "room_id": "room_2", "caller_display": "Visitor #42"})).await?;
    show("guest", &mut guest).await?;
    show("agent", &mut agent).await?;
    say("agent", &mut agent, json!({"type": "call.response", "to_guest_id": a.guest_id, "business_id": business, "room_id": "room_2", "accept": false})).await?;
    show("agent", &mut agent).await?;
    show("guest", &mut guest).await?;
    Ok(())
}

#[derive(clap::Args, Clone)]
pub struct InviteArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    #[arg(long, default_value = "gatewayd-development-secret-change-me")]
    secret: String,
    /// Business of every agent and guest.
    #[arg(long)]
    business: String,
    /// Agents have user ids `user_id_base + i` (i in 0..pairs), one membership each.
    #[arg(long, default_value_t = 100_000)]
    user_id_base: i64,
    #[arg(long, default_value_t = 500)]
    pairs: usize,
    /// Invites per second, all pairs together.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of measured load (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
}

/// Open-loop invite load. Each pair sends on its own schedule; latency runs from the
/// *scheduled* send time to the ring at the guest, so falling behind shows up in the figures
/// (no coordinated omission). Each invite is answered, so no invite is left pending.
pub async fn invites(a: InviteArgs) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(a.pairs as f64 / a.rate);
    let mut pairs = Vec::with_capacity(a.pairs);
    for i in 0..a.pairs {
        let mut agent = Client::connect(&agent_url(&a.url, &a.secret, a.user_id_base + i as i64)).await?;
        let hello = agent.recv_json().await?;
        let agent_id =
            hello["agent_id"].as_str().with_context(|| format!("agent {i} not resolved: {hello}"))?.to_string();
        let guest_id = format!("load-guest-{i}");
        let mut guest =
            Client::connect(&format!("{}/ws/signaling/?guest_id={guest_id}&business_id={}", a.url, a.business)).await?;
        guest.recv_json().await?;
        pairs.push((agent, agent_id, guest, guest_id));
    }
    println!("pairs_connected: {}", a.pairs);
    let begin = Instant::now() + Duration::from_millis(200);
    let warm_until = begin + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(a.duration);
    let business = Arc::new(a.business.clone());
    let mut tasks = Vec::new();
    for (i, (mut agent, agent_id, mut guest, guest_id)) in pairs.into_iter().enumerate() {
        let business = business.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut sent = 0u64;
            let mut next = begin + interval.mul_f64(i as f64 / a.pairs as f64);
            let mut seq = 0u64;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let room = format!("r{i}-{seq}");
                agent.send_json(&json!({"type": "call.invite", "to_guest_id": guest_id, "business_id": *business, "room_id": room})).await?;
                let ring = guest.recv_json().await.with_context(|| format!("pair {i}: waiting for call.ring of {room}"))?;
                if ring["type"] != "call.ring" {
                    bail!("pair {i}: expected call.ring, got {ring}");
                }
                if next >= warm_until {
                    lat.record(next.elapsed());
                    sent += 1;
                }
                guest.send_json(&json!({"type": "call.response", "to_agent_id": agent_id, "business_id": *business, "room_id": room, "accept": true})).await?;
                for (is_agent, want) in [(true, "invite.sent"), (false, "response.sent"), (true, "call.accepted")] {
                    let m = if is_agent { agent.recv_json().await } else { guest.recv_json().await }
                        .with_context(|| format!("pair {i}: waiting for {want} of {room}"))?;
                    if m["type"] != want {
                        bail!("pair {i}: expected {want}, got {m}");
                    }
                }
                seq += 1;
                next += interval;
            }
            Ok::<_, anyhow::Error>((lat, sent))
        }));
    }
    let mut all = Latencies::default();
    let mut total = 0;
    for t in tasks {
        let (lat, sent) = t.await??;
        all.merge(&lat);
        total += sent;
    }
    println!("target_rate: {} invites/s", a.rate);
    println!("achieved_rate: {:.0} invites/s", total as f64 / a.duration as f64);
    all.print("invite_to_ring");
    Ok(())
}

#[derive(clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    url: String,
    /// Process id of the daemon, whose resident memory is measured.
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Business the guests connect to (optional).
    #[arg(long)]
    business: Option<String>,
}

/// Resident memory of the daemon per idle connection: RSS after opening `connections` guest
/// connections (each past `connection_established`) minus RSS before, divided by the count.
pub async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(a.pid)?;
    let mut clients = Vec::with_capacity(a.connections);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..a.connections {
        let url = match &a.business {
            Some(b) => format!("{}/ws/signaling/?guest_id=idle-{i}&business_id={b}", a.url),
            None => format!("{}/ws/signaling/?guest_id=idle-{i}", a.url),
        };
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let mut c = Client::connect(&url).await?;
            c.recv_json().await?;
            Ok::<_, anyhow::Error>(c)
        }));
    }
    for t in tasks {
        clients.push(t.await??);
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(a.pid)?;
    println!("idle_connections: {}", clients.len());
    println!("connect_rate: {:.0} connections/s", clients.len() as f64 / open_secs);
    println!("daemon_rss_before: {before} KiB");
    println!("daemon_rss_after: {after} KiB");
    println!("rss_per_idle_connection: {:.2} KiB", (after.saturating_sub(before)) as f64 / clients.len() as f64);
    Ok(())
}
