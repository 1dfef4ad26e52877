//! Rooms load (`rooms.md`): many rooms of several participants relaying ICE candidates.
//!
//! Set-up: `rooms` rooms are created over REST; `participants` WebSocket clients join each.
//! Rooms belong to a business and every client is an agent of it: the daemon needs the
//! tenants `--print-tenants` prints (`gatewayd tenant import`), and the rooms plugin a
//! `message_rate_per_sec` above the per-connection relay rate (`loadtool/scripts/rooms.sh`
//! sets both).
//! Load: in every room the participants take turns sending a `webrtc:ice-candidate` addressed
//! to the next participant (a ring); the relay latency runs from the send (its *scheduled*
//! time with `--rate`, so falling behind shows, no coordinated omission) to its arrival at the
//! addressee. Without `--rate` every room sends its next relay as soon as the previous one
//! arrived (closed loop: the maximum rate the daemon sustains at `rooms` concurrent relays).

use crate::report::Latencies;
use anyhow::{Context, bail};
use gatewayd_e2e::{Client, http_request};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct RoomsArgs {
    /// The rooms listener (REST under /api/v1, WebSocket at /ws).
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// HS256 secret the daemon verifies with (for the REST agent token).
    #[arg(long, default_value = "gatewayd-development-secret-change-me")]
    secret: String,
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    /// Participants per room (at least 2).
    #[arg(long, default_value_t = 4)]
    participants: usize,
    /// ICE-candidate relays per second, all rooms together; absent: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of measured load (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Print the tenants document the run needs and exit: business `load`, agent
    /// `load-admin` (user 1, creates the rooms) and agent `load-<i>-<k>` (user
    /// [`user_of`]`(i, k)`) for participant `k` of room `i`.
    #[arg(long)]
    print_tenants: bool,
}

/// The token `user_id` of participant `k` of room `i`.
fn user_of(a: &RoomsArgs, i: usize, k: usize) -> usize {
    100_000 + i * a.participants + k
}

/// A day-long token of `user_id`.
fn token_of(a: &RoomsArgs, user_id: usize) -> String {
    let claims = json!({"user_id": user_id, "exp": jsonwebtoken::get_current_timestamp() + 24 * 3600});
    gatewayd_e2e::token_with(&claims, &a.secret)
}

/// The tenants of [`RoomsArgs::print_tenants`].
fn tenants(a: &RoomsArgs) -> serde_json::Value {
    let mut agents = vec![json!({"id": "load-admin", "user_id": 1})];
    for i in 0..a.rooms {
        for k in 0..a.participants {
            agents.push(json!({"id": format!("load-{i}-{k}"), "user_id": user_of(a, i, k)}));
        }
    }
    let memberships: Vec<_> = agents.iter().map(|g| json!({"agent_id": g["id"], "business_id": "load"})).collect();
    json!({"businesses": [{"id": "load", "name": "load test"}], "agents": agents, "memberships": memberships})
}

/// One room's connected participants: (client, participant id).
type Room = (String, Vec<(Client, String)>);

async fn set_up_room(a: &RoomsArgs, token: &str, i: usize) -> anyhow::Result<Room> {
    let created =
        http_request(a.addr, "POST", "/api/v1/rooms", Some(token), Some(&json!({"name": format!("load-{i}")}))).await?;
    if created.status != 201 {
        bail!("room {i}: POST /rooms answered {} {}", created.status, created.body);
    }
    let room = created.body["id"].as_str().context("room id")?.to_string();
    let mut members: Vec<(Client, String)> = Vec::with_capacity(a.participants);
    for k in 0..a.participants {
        let mut c = Client::connect(&format!("ws://{}/ws?token={}", a.addr, token_of(a, user_of(a, i, k)))).await?;
        c.send_json(&json!({"type": "room:join", "roomId": room, "agentId": format!("load-{i}-{k}")})).await?;
        let joined = c.recv_json().await?;
        let pid = joined["participantId"].as_str().with_context(|| format!("room {i}: {joined}"))?.to_string();
        for (m, _) in members.iter_mut() {
            let ev = m.recv_json().await?;
            if ev["type"] != "room:participant-joined" {
                bail!("room {i}: expected room:participant-joined, got {ev}");
            }
        }
        members.push((c, pid));
    }
    Ok((room, members))
}

/// Run the load and print `rooms_*` figures.
pub async fn run(a: RoomsArgs) -> anyhow::Result<()> {
    if a.participants < 2 {
        bail!("--participants must be at least 2");
    }
    if a.print_tenants {
        println!("{}", tenants(&a));
        return Ok(());
    }
    let token = token_of(&a, 1);
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut setups = Vec::new();
    for i in 0..a.rooms {
        let (a, token, sem) = (a.clone(), token.clone(), sem.clone());
        setups.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            set_up_room(&a, &token, i).await
        }));
    }
    let mut rooms = Vec::with_capacity(a.rooms);
    for s in setups {
        rooms.push(s.await??);
    }
    println!(
        "rooms_ready: {} rooms x {} participants in {:.1} s",
        a.rooms,
        a.participants,
        started.elapsed().as_secs_f64()
    );

    let interval = a.rate.map(|r| Duration::from_secs_f64(a.rooms as f64 / r));
    let begin = Instant::now() + Duration::from_millis(200);
    let warm_until = begin + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(a.duration);
    let mut tasks = Vec::new();
    for (i, (room, mut members)) in rooms.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut relays = 0u64;
            let n = members.len();
            let mut next = begin + interval.map(|d| d.mul_f64(i as f64 / a.rooms as f64)).unwrap_or_default();
            let mut seq = 0usize;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let sent_at = if interval.is_some() { next } else { Instant::now() };
                let (from, to) = (seq % n, (seq + 1) % n);
                let target = members[to].1.clone();
                let candidate = json!({"candidate": format!("candidate:{seq} 1 udp 2113937151 192.0.2.1 {} typ host", 10000 + seq % 50000), "sdpMid": "0", "sdpMLineIndex": 0});
                members[from]
                    .0
                    .send_json(&json!({"type": "webrtc:ice-candidate", "roomId": room, "participantId": target, "candidate": candidate}))
                    .await?;
                let got = members[to].0.recv_json().await?;
                if got["type"] != "webrtc:ice-candidate" || got["candidate"]["candidate"] != candidate["candidate"] {
                    bail!("room {i}: expected the relayed candidate, got {got}");
                }
                let now = Instant::now();
                if sent_at >= warm_until && now <= end {
                    lat.record(now - sent_at);
                    relays += 1;
                }
                seq += 1;
                next = match interval {
                    Some(d) => next + d,
                    None => now,
                };
            }
            Ok::<_, anyhow::Error>((lat, relays))
        }));
    }
    let mut all = Latencies::default();
    let mut total = 0;
    for t in tasks {
        let (lat, relays) = t.await??;
        all.merge(&lat);
        total += relays;
    }
    match a.rate {
        Some(r) => println!("target_rate: {r} relays/s"),
        None => println!("target_rate: closed loop ({} relays in flight)", a.rooms),
    }
    println!("ice_relays_per_second: {:.0} relays/s", total as f64 / a.duration as f64);
    all.print("ice_relay");
    Ok(())
}
