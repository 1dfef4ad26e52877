//! Chat fan-out with persistence on (chat.md): `sessions` sessions, each with one visitor and
//! one agent connected. Visitors send `text` messages open-loop at `rate` messages/s in total;
//! every message is stored by the daemon and then broadcast to both connections of its session.
//! Reported: delivered messages/s (broadcasts received within the measured window, both
//! recipients counted) and the latency from the *scheduled* send time to the agent's receipt
//! (no coordinated omission: falling behind shows up as latency). With `--pid`, also the
//! daemon's and the tool's CPU (% of one core) and the daemon's CPU per stored message.

use crate::report::{CpuMeter, Latencies};
use anyhow::{Context, bail};
use bytes::Bytes;
use gatewayd_e2e::Client;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct ChatArgs {
    /// Daemon address, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: String,
    /// HS256 secret the daemon verifies agent tokens with.
    #[arg(long, default_value = "gatewayd-development-secret-change-me")]
    secret: String,
    /// Business of every session; `user_id` must be an agent of it.
    #[arg(long)]
    business: String,
    #[arg(long, default_value_t = 100_000)]
    user_id: i64,
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Messages sent per second, all sessions together (each is delivered twice).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of measured load (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The daemon's process id, for its CPU use (not reported without it).
    #[arg(long)]
    pid: Option<u32>,
}

/// `POST /chat/start-session/` for a new external customer; returns (session_id, token).
async fn start_session(addr: &str, business: &str, customer: &str) -> anyhow::Result<(String, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = json!({"business": business, "external_customer_id": customer}).to_string();
    let req = hyper::Request::post("/chat/start-session/")
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    if !status.is_success() {
        bail!("start-session: {status} {v}");
    }
    let s = |k: &str| v["data"][k].as_str().map(str::to_string).with_context(|| format!("no data.{k} in {v}"));
    Ok((s("session_id")?, s("token")?))
}

async fn join(addr: &str, session_id: &str, token: &str) -> anyhow::Result<Client> {
    let url = format!("ws://{addr}/ws/visitor-chat/?session_id={session_id}");
    let protocol = format!("Bearer, {token}");
    let mut c = Client::connect_with(&url, &[("Sec-WebSocket-Protocol", &protocol)])
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {} {}", r.status, r.body))?;
    let hello = c.recv_json().await?;
    if hello["type"] != "connection_established" {
        bail!("expected connection_established, got {hello}");
    }
    Ok(c)
}

pub async fn run(a: ChatArgs) -> anyhow::Result<()> {
    let agent_token = gatewayd_e2e::token_with(
        &json!({"user_id": a.user_id, "exp": jsonwebtoken::get_current_timestamp() + 3600}),
        &a.secret,
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut pairs = Vec::with_capacity(a.sessions);
    for i in 0..a.sessions {
        let (sid, token) = start_session(&a.addr, &a.business, &format!("load-{run_id}-{i}")).await?;
        let visitor = join(&a.addr, &sid, &token).await?;
        let agent = join(&a.addr, &sid, &agent_token).await?;
        pairs.push((visitor, agent));
    }
    println!("sessions_connected: {}", a.sessions);
    let interval = Duration::from_secs_f64(a.sessions as f64 / a.rate);
    let begin = Instant::now() + Duration::from_millis(200);
    let warm_until = begin + Duration::from_secs(1);
    let end = warm_until + Duration::from_secs(a.duration);
    let cpu = match a.pid {
        Some(pid) => Some((CpuMeter::start(pid)?, CpuMeter::start(std::process::id())?)),
        None => None,
    };
    let mut tasks = Vec::new();
    for (i, (mut visitor, mut agent)) in pairs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut delivered = 0u64;
            let mut next = begin + interval.mul_f64(i as f64 / a.sessions as f64);
            let mut seq = 0u64;
            // Stop at `end` even when behind schedule: what was not delivered by then is not
            // counted, so the rate is what the daemon really sustained.
            while next < end && Instant::now() < end {
                tokio::time::sleep_until(next.into()).await;
                let content = format!("s{i}-m{seq}");
                visitor.send_json(&json!({"type": "text", "content": content})).await?;
                let got = agent.recv_json().await?;
                if got["content"] != content.as_str() {
                    bail!("session {i}: expected {content}, got {got}");
                }
                let measured = next >= warm_until;
                if measured {
                    lat.record(next.elapsed());
                }
                let in_window = |t: Instant| t >= warm_until && t <= end;
                if in_window(Instant::now()) {
                    delivered += 1;
                }
                let echo = visitor.recv_json().await?;
                if echo["content"] != content.as_str() {
                    bail!("session {i}: expected the echo of {content}, got {echo}");
                }
                if in_window(Instant::now()) {
                    delivered += 1;
                }
                seq += 1;
                next += interval;
            }
            Ok::<_, anyhow::Error>((lat, delivered))
        }));
    }
    let mut all = Latencies::default();
    let mut delivered = 0;
    for t in tasks {
        let (lat, d) = t.await??;
        all.merge(&lat);
        delivered += d;
    }
    println!("target_send_rate: {} messages/s", a.rate);
    let rate = delivered as f64 / a.duration as f64;
    println!("delivered_rate: {rate:.0} messages/s");
    all.print("send_to_agent");
    if let Some((daemon, tool)) = cpu {
        // Over warm-up and measured window together (all messages sent in them).
        let daemon = daemon.percent()?;
        let sent_rate = rate / 2.0;
        println!("daemon_cpu: {daemon:.1} % of one core ({:.1} us per stored message)", daemon * 1e4 / sent_rate);
        println!("loadtool_cpu: {:.1} % of one core", tool.percent()?);
    }
    Ok(())
}
