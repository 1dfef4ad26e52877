//! A test plugin that misbehaves on request, to prove fault isolation (DESIGN property 3).
//!
//! Text commands on its WebSocket route:
//! - `trap`: panics (a Wasm trap);
//! - `loop`: spins forever (stopped by the epoch deadline);
//! - `oom`: allocates until the memory limit refuses (stopped by the store limiter);
//! - `count`: increments a counter kept in the host's session state and replies `count:<n>`;
//! - `store-read`: replies `store:<n> row(s)` or `store-error:<why>` after trying to read the store (capability test);
//! - `sql-query:<sql>` / `sql-execute:<sql>`: runs `<sql>` with `store.query` / `store.execute`
//!   and replies `rows:<debug of the rows>` / `affected:<n>`, or `store-error:<why>` (the
//!   hostile-plugin tests: whatever a plugin may try with its capability);
//! - `sql-batch:<sql>` with statements separated by lines `---`: runs them with `store.batch`
//!   and replies `results:<affected counts>:<rows of the last statement>` or
//!   `batch-error:<index>:<why>`;
//! - `issue:<ttl-secs>:<claims JSON>`: `auth.issue`; replies `token:<jwt>` or `issue-error:<why>`;
//! - `verify:<jwt>`: `auth.verify`; replies `claims:<JSON>` or `verify-error:<why>`;
//! - `version`: replies `version:1`, or `version:2` when built with the `v2` feature (a second
//!   build for hot-reload tests);
//! - on a media route (speech tests): `answer` (replies `answered`), `transcribe` or
//!   `transcribe:<provider>` (interim results on; replies `transcribing`), `stop-transcribing`
//!   (replies `stop:<true|false>`), `say:<mark>:<text>` or `say-with:<provider>:<mark>:<text>`
//!   (replies `saying`), `clear` (replies `cleared`), `hangup` (replies `hung-up`); a refused
//!   call replies `media-error:<why>`. Media events come back as `mark:<name>`,
//!   `play-finished`, `frame-rejected:<why>`; speech events as `speech:<JSON>` with `event`
//!   (`speech_started`, `transcript`, `utterance_end`, `stt_error`, `stopped`, `tts_error`) and
//!   the event's fields;
//! - anything else: echoed back as `echo:<text>`.
//!
//! Config: `fail_init = true` makes `init` fail (a version that must be rejected on load).
//!
//! Tables, with config `tables = true` (which needs the `store` capability): migration 1
//! creates `fault_notes (id TEXT PRIMARY KEY, body TEXT)`; the `v2` build adds migration 2
//! (`fault_notes.v2`). Config `extra_migration = "<sql>"` adds one more migration with that SQL
//! (hostile or broken schema changes, which the daemon must refuse).

use gatewayd_plugin::{
    ConnectionId, MediaEvent, Migration, Protocol, SpeechEvent, auth, conn, media, session, store, tokens,
};
use serde_json::json;

struct FaultTest;

const VERSION: &str = if cfg!(feature = "v2") { "2" } else { "1" };

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Config {
    fail_init: bool,
    tables: bool,
    extra_migration: Option<String>,
}

impl Protocol for FaultTest {
    fn init() -> Result<(), String> {
        match gatewayd_plugin::config::load::<Config>()? {
            Config { fail_init: true, .. } => Err("fault-test: init failure requested by config".into()),
            _ => Ok(()),
        }
    }

    fn migrations(_backend: &str) -> Vec<Migration> {
        let config = gatewayd_plugin::config::load::<Config>().unwrap_or_default();
        if !config.tables {
            return Vec::new();
        }
        let step = |version: u32, name: &str, sql: &str| Migration { version, name: name.into(), sql: sql.into() };
        let mut list =
            vec![step(1, "notes", "CREATE TABLE fault_notes (id TEXT PRIMARY KEY, body TEXT NOT NULL DEFAULT '')")];
        if cfg!(feature = "v2") {
            list.push(step(2, "notes_v2", "ALTER TABLE fault_notes ADD COLUMN v2 INTEGER"));
        }
        if let Some(sql) = &config.extra_migration {
            list.push(step(list.len() as u32 + 1, "extra", sql));
        }
        list
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
                let reply = hostile(other).or_else(|| call(id, other)).unwrap_or_else(|| format!("echo:{other}"));
                conn::send_text(id, &reply);
            }
        }
    }

    fn on_media(id: ConnectionId, event: MediaEvent) {
        let text = match event {
            MediaEvent::Mark(name) => format!("mark:{name}"),
            MediaEvent::PlayFinished => "play-finished".into(),
            MediaEvent::FrameRejected(why) => format!("frame-rejected:{why}"),
        };
        conn::send_text(id, &text);
    }

    fn on_speech(id: ConnectionId, event: SpeechEvent) {
        let message = match event {
            SpeechEvent::SpeechStarted => json!({"event": "speech_started"}),
            SpeechEvent::Transcript(t) => json!({
                "event": "transcript", "text": t.text, "is_final": t.is_final,
                "speech_final": t.speech_final, "confidence": t.confidence,
            }),
            SpeechEvent::UtteranceEnd => json!({"event": "utterance_end"}),
            SpeechEvent::SttError(f) => json!({"event": "stt_error", "code": f.code, "message": f.message}),
            SpeechEvent::Stopped => json!({"event": "stopped"}),
            SpeechEvent::TtsError(f) => json!({"event": "tts_error", "code": f.code, "message": f.message}),
        };
        conn::send_text(id, &format!("speech:{message}"));
    }
}

/// The reply to a call command (media routes), or `None` when `text` is not one.
fn call(id: ConnectionId, text: &str) -> Option<String> {
    let (command, arg) = text.split_once(':').unwrap_or((text, ""));
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let say = |provider: Option<String>, rest: &str| {
        let (mark, text) = rest.split_once(':').unwrap_or(("", rest));
        media::say(id, text, &media::SayOptions { provider, voice: None, mark: opt(mark) })
    };
    let result = match command {
        "answer" => media::answer(id).map(|()| "answered".to_string()),
        // `transcribe`, `transcribe:<provider>`, `transcribe:<provider>:<keyterm>|<keyterm>...`
        "transcribe" => {
            let (provider, keyterms) = arg.split_once(':').unwrap_or((arg, ""));
            let options = media::TranscribeOptions {
                provider: opt(provider),
                language: None,
                interim_results: true,
                keyterms: keyterms.split('|').filter(|k| !k.is_empty()).map(str::to_string).collect(),
            };
            media::transcribe(id, &options).map(|()| "transcribing".to_string())
        }
        "stop-transcribing" => media::stop_transcribing(id).map(|stopped| format!("stop:{stopped}")),
        "say" => say(None, arg).map(|()| "saying".to_string()),
        "say-with" => {
            let (provider, rest) = arg.split_once(':').unwrap_or((arg, ""));
            say(opt(provider), rest).map(|()| "saying".to_string())
        }
        "clear" => media::clear(id).map(|()| "cleared".to_string()),
        "hangup" => media::hangup(id).map(|()| "hung-up".to_string()),
        _ => return None,
    };
    Some(result.unwrap_or_else(|e| format!("media-error:{e}")))
}

/// The reply to a hostile-plugin command, or `None` when `text` is not one.
fn hostile(text: &str) -> Option<String> {
    let (command, arg) = text.split_once(':')?;
    Some(match command {
        "sql-query" => match store::query(arg, &[]) {
            Ok(rows) => format!("rows:{rows:?}"),
            Err(e) => format!("store-error:{e}"),
        },
        "sql-execute" => match store::execute(arg, &[]) {
            Ok(n) => format!("affected:{n}"),
            Err(e) => format!("store-error:{e}"),
        },
        "sql-batch" => match store::transaction(arg.split("\n---\n").map(|sql| (sql, vec![]))) {
            Ok(results) => {
                let affected: Vec<u64> = results.iter().map(|r| r.affected).collect();
                format!("results:{affected:?}:{:?}", results.last().map(|r| &r.rows))
            }
            Err(e) => format!("batch-error:{}:{}", e.index, e.message),
        },
        "issue" => {
            let (ttl, claims) = arg.split_once(':')?;
            let claims: serde_json::Value = serde_json::from_str(claims).ok()?;
            match tokens::issue(&claims, ttl.parse().ok()?) {
                Ok(token) => format!("token:{token}"),
                Err(e) => format!("issue-error:{e}"),
            }
        }
        "verify" => match auth::verify(arg) {
            Ok(claims) => format!("claims:{claims}"),
            Err(e) => format!("verify-error:{e}"),
        },
        _ => return None,
    })
}

gatewayd_plugin::protocol_plugin!(FaultTest);
