//! Live calls: which media stream connection carries a call now, and the utterances said on it
//! whose mark has not come back yet (what is playing or queued to play). Kept in the host's
//! `kv` under `live/<call_id>` (the dashboard sockets that speak and the stream that reports
//! marks run on different connections), changed only with `kv::update` (compare-and-swap), and
//! removed when the call ends. The decisions are pure ([`Live`], [`barge_in`]); the functions
//! around them read and write `kv`.

use gatewayd_plugin::{ConnectionId, kv};
use serde::{Deserialize, Serialize};

/// An entry outlives any call (Twilio ends calls after at most 4 hours) and is refreshed by
/// every change; a lost one (a trap between start and end) goes away by itself.
const TTL_MS: u32 = 24 * 3600 * 1000;

/// An utterance said with a mark that has not been reported yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Utterance {
    pub mark: String,
    pub text: String,
}

/// A call's current media stream and its pending utterances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Live {
    /// The media stream connection (Twilio's WebSocket) carrying the call.
    pub conn: ConnectionId,
    pub stream_sid: String,
    /// Number of the next mark: marks are unique over the call's life, across streams.
    pub next_mark: u64,
    /// Said, mark not reported, not cleared: in the order they play.
    pub pending: Vec<Utterance>,
}

impl Live {
    /// Stream `conn` takes the call over from `previous` (if any): the previous stream's queue
    /// went with its connection, so nothing is pending; mark numbers go on.
    pub(crate) fn attach(previous: Option<&Live>, conn: ConnectionId, stream_sid: &str) -> Live {
        Live {
            conn,
            stream_sid: stream_sid.to_string(),
            next_mark: previous.map_or(1, |p| p.next_mark),
            pending: Vec::new(),
        }
    }

    /// Queue `text`; returns its mark.
    pub(crate) fn push(&mut self, text: &str) -> String {
        let mark = format!("say-{}", self.next_mark);
        self.next_mark += 1;
        self.pending.push(Utterance { mark: mark.clone(), text: text.to_string() });
        mark
    }

    /// The utterance of a reported mark, removed.
    pub(crate) fn take_mark(&mut self, mark: &str) -> Option<Utterance> {
        let i = self.pending.iter().position(|u| u.mark == mark)?;
        Some(self.pending.remove(i))
    }
}

/// Barge-in (brief, Plugin behaviour 3): does this transcript stop the playback? Only while
/// something plays (`playing`), for a non-empty transcript, interim or final, whose span is at
/// least `min_ms` long; `min_ms` 0 turns barge-in off.
pub(crate) fn barge_in(playing: bool, text: &str, duration_ms: u32, min_ms: u32) -> bool {
    min_ms > 0 && playing && duration_ms >= min_ms && !text.trim().is_empty()
}

fn key(call_id: &str) -> String {
    format!("live/{call_id}")
}

fn decode(v: Option<&str>) -> Option<Live> {
    v.and_then(|s| serde_json::from_str(s).ok())
}

fn encode(live: &Live) -> Option<String> {
    serde_json::to_string(live).ok()
}

/// Read-modify-write the call's entry; `f` returns the new entry (`None`: remove) and a result.
/// `None` when the entry kept changing under us (`kv::UPDATE_ATTEMPTS` times).
fn update<R>(call_id: &str, mut f: impl FnMut(Option<Live>) -> (Option<Live>, R)) -> Option<R> {
    kv::update(&key(call_id), Some(TTL_MS), |current| {
        let (next, result) = f(decode(current));
        // An unchanged entry is written back as it was (kv::update then writes nothing).
        let next = match next {
            Some(n) if decode(current).as_ref() == Some(&n) => current.map(str::to_string),
            Some(n) => encode(&n),
            None => None,
        };
        (next, result)
    })
}

/// The call's live state, if a stream carries it.
pub(crate) fn get(call_id: &str) -> Option<Live> {
    decode(kv::get(&key(call_id)).as_deref())
}

/// Stream `conn` now carries the call. Returns the connection it replaced, if another.
pub(crate) fn attach(call_id: &str, conn: ConnectionId, stream_sid: &str) -> Option<ConnectionId> {
    update(call_id, |current| {
        let replaced = current.as_ref().map(|c| c.conn).filter(|&c| c != conn);
        (Some(Live::attach(current.as_ref(), conn, stream_sid)), replaced)
    })
    .flatten()
}

/// Queue `text` on the call's stream. Returns the stream connection and the mark to say it
/// with; `None` when no stream carries the call.
pub(crate) fn queue(call_id: &str, text: &str) -> Option<(ConnectionId, String)> {
    update(call_id, |current| match current {
        Some(mut live) => {
            let mark = live.push(text);
            let conn = live.conn;
            (Some(live), Some((conn, mark)))
        }
        None => (None, None),
    })
    .flatten()
}

/// Forget a queued utterance (its `say` was refused).
pub(crate) fn forget(call_id: &str, mark: &str) {
    update(call_id, |current| match current {
        Some(mut live) => {
            live.take_mark(mark);
            (Some(live), ())
        }
        None => (None, ()),
    });
}

/// Stream `conn` reported `mark`: the utterance it ended, removed.
pub(crate) fn played(call_id: &str, conn: ConnectionId, mark: &str) -> Option<Utterance> {
    update(call_id, |current| match current {
        Some(mut live) if live.conn == conn => {
            let utterance = live.take_mark(mark);
            (Some(live), utterance)
        }
        other => (other, None),
    })
    .flatten()
}

/// Barge-in on stream `conn`: when `decide(playing)` says so, everything pending is dropped
/// and returned (the caller then clears the playback, once: nothing is pending afterwards).
pub(crate) fn barge(call_id: &str, conn: ConnectionId, decide: impl Fn(bool) -> bool) -> Vec<Utterance> {
    update(call_id, |current| match current {
        Some(mut live) if live.conn == conn && decide(!live.pending.is_empty()) => {
            let dropped = std::mem::take(&mut live.pending);
            (Some(live), dropped)
        }
        other => (other, Vec::new()),
    })
    .unwrap_or_default()
}

/// What [`detach`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detached {
    /// The stream carried the call: the entry is removed, the call ends with the stream.
    Current,
    /// Another stream carries the call now: nothing changed.
    Replaced,
    /// No entry: the call already ended (or its entry was lost).
    Absent,
}

/// Stream `conn` is going away: remove the call's entry if `conn` still carries it.
pub(crate) fn detach(call_id: &str, conn: ConnectionId) -> Detached {
    update(call_id, |current| match current {
        Some(live) if live.conn == conn => (None, Detached::Current),
        Some(live) => (Some(live), Detached::Replaced),
        None => (None, Detached::Absent),
    })
    // Under such contention that the entry could not be read steadily: end nothing.
    .unwrap_or(Detached::Replaced)
}

/// The call ended: remove its entry, returning it.
pub(crate) fn take(call_id: &str) -> Option<Live> {
    kv::take(&key(call_id)).and_then(|s| serde_json::from_str(&s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_unique_over_the_call_and_a_new_stream_starts_with_nothing_pending() {
        let mut first = Live::attach(None, 1, "MZ1");
        assert_eq!(first.push("Welcome"), "say-1");
        assert_eq!(first.push("How can I help?"), "say-2");
        let second = Live::attach(Some(&first), 2, "MZ2");
        assert_eq!((second.conn, second.next_mark, second.pending.len()), (2, 3, 0));
        assert_eq!(first.take_mark("say-2").map(|u| u.text).as_deref(), Some("How can I help?"));
        assert_eq!(first.take_mark("say-2"), None);
        assert_eq!(first.pending.len(), 1);
    }

    #[test]
    fn barge_in_needs_playback_speech_and_enough_of_it() {
        assert!(barge_in(true, "wait", 300, 300));
        assert!(barge_in(true, "wait", 1200, 300));
        assert!(!barge_in(true, "wait", 299, 300), "too short");
        assert!(!barge_in(false, "wait", 1200, 300), "nothing playing");
        assert!(!barge_in(true, "  ", 1200, 300), "empty transcript");
        assert!(!barge_in(true, "wait", 1200, 0), "barge-in off");
    }
}
