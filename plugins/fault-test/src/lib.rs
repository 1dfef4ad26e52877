//! A test plugin that misbehaves on request, to prove fault isolation (DESIGN property 3).
//!
//! Text commands on its WebSocket route:
//! - `trap`: panics (a Wasm trap);
//! - `loop`: spins forever (stopped by the epoch deadline);
//! - `oom`: allocates until the memory limit refuses (stopped by the store limiter);
//! - `count`: increments a counter kept in the host's session state and replies `count:<n>`;
//! - `store-read`: replies `store:<n> row(s)` or `store-error:<why>` after trying to read the store (capability test);
//! - `version`: replies `version:1`, or `version:2` when built with the `v2` feature (a second
//!   build for hot-reload tests);
//! - anything else: echoed back as `echo:<text>`.
//!
//! Config: `fail_init = true` makes `init` fail (a version that must be rejected on load).

use gatewayd_plugin::{ConnectionId, Protocol, conn, session, store};

struct FaultTest;

const VERSION: &str = if cfg!(feature = "v2") { "2" } else { "1" };

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {
    fail_init: bool,
}

impl Protocol for FaultTest {
    fn init() -> Result<(), String> {
        match gatewayd_plugin::config::load::<Config>()? {
            Config { fail_init: true } => Err("fault-test: init failure requested by config".into()),
            _ => Ok(()),
        }
    }

    fn on_text(id: ConnectionId, text: String) {
        match text.as_str() {
            "trap" => panic!("fault-test: trap requested"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "version" => {
                conn::send_text(id, &format!("version:{VERSION}"));
            }
            "count" => {
                let n = session::load::<u64>().unwrap_or(0) + 1;
                session::save(&n);
                conn::send_text(id, &format!("count:{n}"));
            }
            "store-read" => {
                let reply = match store::query("SELECT COUNT(*) FROM businesses", &[]) {
                    Ok(rows) => format!("store:{} row(s)", rows.len()),
                    Err(e) => format!("store-error:{e}"),
                };
                conn::send_text(id, &reply);
            }
            other => {
                conn::send_text(id, &format!("echo:{other}"));
            }
        }
    }
}

gatewayd_plugin::protocol_plugin!(FaultTest);
