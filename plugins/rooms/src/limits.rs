//! Bounds on what a client may send (issue #15 item 5): length bounds on ids, names and display
//! strings, and a per-connection message rate. Both are set in `[plugins.rooms.config]` (see
//! [`crate::lifecycle::Config`]); `docs/security.md` lists the defaults.
//!
//! The rate is a token bucket ([`Bucket`]) kept in the connection's session state: every
//! WebSocket message costs one token; `message_burst` tokens at most, refilled at
//! `message_rate_per_sec`. A message that finds the bucket empty is dropped and answered with
//! `room:error` `RATE_LIMITED`. Refused messages are counted, the count decaying at a tenth of
//! the message rate; the refusal that takes the count above `max_refused_messages` closes the
//! connection with 1008 instead (a client that keeps sending over its rate, not one burst).
//! The bucket is a pure function of the times it is given (no clock inside), so it is tested
//! with made-up times.

use crate::errors::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What one message does to a connection's [`Bucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle the message.
    Pass,
    /// Over the rate: drop the message, answer `RATE_LIMITED`.
    Refuse,
    /// Over the rate for long: drop the message and close the connection (1008).
    Close,
}

/// The rate settings a [`Bucket`] is checked against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second (> 0).
    pub per_sec: f64,
    /// Tokens held at most (>= 1); a new connection starts full.
    pub burst: f64,
    /// Refused messages (decaying at `per_sec / 10`) tolerated before closing; 0 = never close.
    pub max_refused: f64,
}

/// A connection's token bucket, stored in its session state between events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens left as of `at_ms`; `None` until the first message (then the bucket is full).
    pub tokens: Option<f64>,
    /// Refused messages, decayed, as of `at_ms`.
    pub refused: f64,
    /// Milliseconds since the Unix epoch of the last update.
    pub at_ms: u64,
}

impl Bucket {
    /// Account for one message arriving at `now_ms` (a clock going backwards counts as no
    /// time passing).
    pub fn take(&mut self, rate: &Rate, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        let tokens = gatewayd_plugin::rate::refill(self.tokens, self.at_ms, now_ms, rate.per_sec, rate.burst);
        self.at_ms = self.at_ms.max(now_ms);
        self.refused = (self.refused - elapsed * rate.per_sec / 10.0).max(0.0);
        if tokens >= 1.0 {
            self.tokens = Some(tokens - 1.0);
            return Verdict::Pass;
        }
        self.tokens = Some(tokens);
        self.refused += 1.0;
        if rate.max_refused > 0.0 && self.refused > rate.max_refused { Verdict::Close } else { Verdict::Refuse }
    }
}

/// Length bounds (in bytes of UTF-8 unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Any id a client sends: `roomId`, `agentId`, `participantId`, `agent_id`, `business_id`,
    /// ids in REST paths.
    pub max_id_len: usize,
    /// A room's `name`, in characters.
    pub max_name_chars: usize,
    /// `metadata.display_name`, in characters.
    pub max_display_name_chars: usize,
    /// A participant's `metadata` object, serialized.
    pub max_metadata_bytes: usize,
    /// A room's `settings` object, serialized (after a `PATCH` merge).
    pub max_settings_bytes: usize,
}

impl Bounds {
    /// `id` (named `field` in errors) is at most `max_id_len` bytes; else `INVALID_REQUEST`.
    pub fn id<'a>(&self, field: &str, id: &'a str) -> Result<&'a str, ApiError> {
        if id.len() > self.max_id_len {
            return Err(ApiError::invalid(format!("`{field}` is longer than {} bytes", self.max_id_len)));
        }
        Ok(id)
    }

    /// A room name: at most `max_name_chars` characters.
    pub fn name(&self, name: &str) -> Result<(), ApiError> {
        if name.chars().count() > self.max_name_chars {
            return Err(ApiError::invalid(format!("`name` is longer than {} characters", self.max_name_chars)));
        }
        Ok(())
    }

    /// A participant's metadata: at most `max_metadata_bytes` serialized, and its
    /// `display_name`, when present, a string of at most `max_display_name_chars` characters.
    pub fn metadata(&self, metadata: &Map<String, Value>) -> Result<(), ApiError> {
        match metadata.get("display_name") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.chars().count() <= self.max_display_name_chars => {}
            Some(Value::String(_)) => {
                return Err(ApiError::invalid(format!(
                    "`metadata.display_name` is longer than {} characters",
                    self.max_display_name_chars
                )));
            }
            Some(_) => return Err(ApiError::invalid("`metadata.display_name` must be a string")),
        }
        if serialized_len(metadata) > self.max_metadata_bytes {
            return Err(ApiError::invalid(format!("`metadata` is larger than {} bytes", self.max_metadata_bytes)));
        }
        Ok(())
    }

    /// A room's settings: at most `max_settings_bytes` serialized.
    pub fn settings(&self, settings: &Value) -> Result<(), ApiError> {
        if settings.to_string().len() > self.max_settings_bytes {
            return Err(ApiError::invalid(format!("`settings` is larger than {} bytes", self.max_settings_bytes)));
        }
        Ok(())
    }
}

fn serialized_len(m: &Map<String, Value>) -> usize {
    serde_json::to_vec(m).map_or(usize::MAX, |v| v.len())
}

pub use gatewayd_plugin::rate::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RATE: Rate = Rate { per_sec: 2.0, burst: 3.0, max_refused: 4.0 };

    #[test]
    fn a_burst_passes_then_the_rate_refills() {
        let mut b = Bucket::default();
        let t0 = 1_000_000;
        for _ in 0..3 {
            assert_eq!(b.take(&RATE, t0), Verdict::Pass);
        }
        assert_eq!(b.take(&RATE, t0), Verdict::Refuse);
        // 2 per second: one token after 500 ms, not before.
        assert_eq!(b.take(&RATE, t0 + 499), Verdict::Refuse);
        // One second after the burst: two tokens.
        assert_eq!(b.take(&RATE, t0 + 1000), Verdict::Pass);
        assert_eq!(b.take(&RATE, t0 + 1000), Verdict::Pass);
        assert_eq!(b.take(&RATE, t0 + 1000), Verdict::Refuse);
        // Refilled to the burst at most, however long the pause.
        let later = t0 + 3_600_000;
        for _ in 0..3 {
            assert_eq!(b.take(&RATE, later), Verdict::Pass);
        }
        assert_eq!(b.take(&RATE, later), Verdict::Refuse);
    }

    #[test]
    fn sustained_excess_closes_and_a_pause_forgives() {
        let mut b = Bucket::default();
        let t0 = 5_000;
        for _ in 0..3 {
            assert_eq!(b.take(&RATE, t0), Verdict::Pass);
        }
        for _ in 0..4 {
            assert_eq!(b.take(&RATE, t0), Verdict::Refuse);
        }
        assert_eq!(b.take(&RATE, t0), Verdict::Close);
        // The refused count decays at a tenth of the rate (0.2 per second): 10 s later it is
        // 2 of 4, so after a new burst two more refusals pass before the close.
        let mut c = Bucket::default();
        for _ in 0..3 {
            c.take(&RATE, t0);
        }
        for _ in 0..4 {
            assert_eq!(c.take(&RATE, t0), Verdict::Refuse);
        }
        let t1 = t0 + 10_000;
        for _ in 0..3 {
            assert_eq!(c.take(&RATE, t1), Verdict::Pass);
        }
        assert_eq!(c.take(&RATE, t1), Verdict::Refuse);
        assert_eq!(c.take(&RATE, t1), Verdict::Refuse);
        assert_eq!(c.take(&RATE, t1), Verdict::Close);
    }

    #[test]
    fn a_clock_going_back_adds_nothing() {
        let mut b = Bucket::default();
        for _ in 0..3 {
            assert_eq!(b.take(&RATE, 10_000), Verdict::Pass);
        }
        assert_eq!(b.take(&RATE, 1_000), Verdict::Refuse);
        assert_eq!(b.at_ms, 10_000);
    }

    #[test]
    fn never_close_with_zero() {
        let rate = Rate { max_refused: 0.0, ..RATE };
        let mut b = Bucket::default();
        for i in 0..100 {
            let v = b.take(&rate, 0);
            assert_eq!(v, if i < 3 { Verdict::Pass } else { Verdict::Refuse });
        }
    }

    #[test]
    fn bounds() {
        let b = Bounds {
            max_id_len: 4,
            max_name_chars: 3,
            max_display_name_chars: 2,
            max_metadata_bytes: 40,
            max_settings_bytes: 25,
        };
        assert!(b.id("roomId", "abcd").is_ok());
        assert_eq!(b.id("roomId", "abcde").unwrap_err().code, crate::errors::INVALID_REQUEST);
        assert!(b.name("äöü").is_ok());
        assert!(b.name("abcd").is_err());
        let meta = |v: Value| v.as_object().unwrap().clone();
        assert!(b.metadata(&meta(json!({"display_name": "ab"}))).is_ok());
        assert!(b.metadata(&meta(json!({"display_name": "abc"}))).is_err());
        assert!(b.metadata(&meta(json!({"display_name": 5}))).is_err());
        assert!(b.metadata(&meta(json!({"x": "0123456789012345678901234567890123456789"}))).is_err());
        assert!(b.settings(&json!({"max_participants": 2})).is_ok());
        assert!(b.settings(&json!({"max_participants": 2, "x": 1})).is_err());
    }
}
