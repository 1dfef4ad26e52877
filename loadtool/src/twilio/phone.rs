//! Twilio's side of one Media Stream, as a state machine: the messages it sends (sequence
//! numbers, media chunks and timestamps), and what it does with the gateway's audio, `mark`s
//! and `clear`s (research notes section 4.3). Fed messages and 20 ms play-out ticks; returns
//! the messages to send. No sockets, no clock.
//!
//! Marks: Twilio echoes a mark when the audio sent before it has played. In
//! [`MarkMode::Received`] audio counts as played when it arrives (messages arrive in order, so
//! a mark is echoed at once); in [`MarkMode::Played`] the audio waits in a buffer that plays
//! 20 ms per [`Phone::play_frame`], and a mark is echoed when the play-out reaches it. A
//! `clear` drops the buffered audio and echoes every pending mark at once, as Twilio does.

use super::wire::{self, CallIds, FromGateway};
use std::collections::VecDeque;

/// Bytes of mu-law in 20 ms at 8 kHz.
pub const FRAME_BYTES: usize = 160;

/// When a mark is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkMode {
    /// When every media message before it has been received.
    Received,
    /// When the audio before it has been played at real time (20 ms per tick).
    Played,
}

/// What the gateway sent, waiting to be played.
#[derive(Debug)]
enum Queued {
    Audio(VecDeque<u8>),
    Mark(String),
}

/// Counters of one stream.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PhoneStats {
    /// `media` messages the tool sent.
    pub frames_sent: u64,
    /// `dtmf` messages the tool sent.
    pub dtmf_sent: u64,
    /// `media` messages the gateway sent.
    pub frames_received: u64,
    /// mu-law bytes in them.
    pub bytes_received: u64,
    /// Of those, bytes dropped by a `clear` before they played.
    pub bytes_cleared: u64,
    /// `media` payloads not 160 bytes long.
    pub odd_sized_frames: u64,
    pub marks_received: u64,
    /// Mark echoes sent, those of a `clear` included.
    pub marks_echoed: u64,
    /// Mark echoes sent because of a `clear`.
    pub marks_echoed_on_clear: u64,
    pub clears_received: u64,
    /// Gateway messages with another stream's `streamSid` (Twilio: error 31951).
    pub wrong_stream_sid: u64,
    /// Gateway messages with an event Twilio does not take (Twilio: error 31924/31951).
    pub unexpected_events: u64,
    /// Gateway messages that are not a well-formed Twilio message.
    pub invalid_messages: u64,
}

/// Twilio's side of one stream.
pub struct Phone {
    ids: CallIds,
    mode: MarkMode,
    /// The last `sequenceNumber` sent.
    seq: u64,
    /// `media` chunks sent.
    chunk: u64,
    queue: VecDeque<Queued>,
    /// Keep what played (for `--out`).
    keep_heard: bool,
    heard: Vec<u8>,
    pub stats: PhoneStats,
    /// The names of the last few unexpected or invalid messages, for the report.
    pub complaints: Vec<String>,
}

/// Complaints kept per stream.
const MAX_COMPLAINTS: usize = 10;

impl Phone {
    pub fn new(ids: CallIds, mode: MarkMode, keep_heard: bool) -> Phone {
        Phone {
            ids,
            mode,
            seq: 0,
            chunk: 0,
            queue: VecDeque::new(),
            keep_heard,
            heard: Vec::new(),
            stats: PhoneStats::default(),
            complaints: Vec::new(),
        }
    }

    pub fn ids(&self) -> &CallIds {
        &self.ids
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// `connected` (first message).
    pub fn connected(&self) -> String {
        wire::connected()
    }

    /// `start` with the TwiML's parameters.
    pub fn start(&mut self, parameters: &[(String, String)]) -> String {
        let seq = self.next_seq();
        wire::start(seq, &self.ids, parameters)
    }

    /// `media`: the next 20 ms of the caller's audio. Its timestamp is its place on the 20 ms
    /// grid since the stream began (chunk 1 at 0 ms), which is when the paced sender sends it.
    pub fn media(&mut self, audio: &[u8]) -> String {
        let seq = self.next_seq();
        self.chunk += 1;
        self.stats.frames_sent += 1;
        let timestamp = (self.chunk - 1) * 20;
        wire::media(seq, &self.ids.stream_sid, self.chunk, timestamp, audio)
    }

    /// `dtmf` for `digit`.
    pub fn dtmf(&mut self, digit: char) -> String {
        let seq = self.next_seq();
        self.stats.dtmf_sent += 1;
        wire::dtmf(seq, &self.ids.stream_sid, digit)
    }

    /// `stop` (last message).
    pub fn stop(&mut self) -> String {
        let seq = self.next_seq();
        wire::stop(seq, &self.ids)
    }

    /// Marks received and not echoed yet.
    pub fn pending_marks(&self) -> usize {
        self.queue.iter().filter(|q| matches!(q, Queued::Mark(_))).count()
    }

    /// Audio bytes received and not played yet.
    pub fn buffered_bytes(&self) -> usize {
        self.queue.iter().map(|q| if let Queued::Audio(a) = q { a.len() } else { 0 }).sum()
    }

    /// A message of the gateway; returns the messages to send back (mark echoes).
    pub fn on_message(&mut self, message: FromGateway) -> Vec<String> {
        let sid = match &message {
            FromGateway::Media { stream_sid, .. }
            | FromGateway::Mark { stream_sid, .. }
            | FromGateway::Clear { stream_sid } => stream_sid.as_deref(),
            _ => None,
        };
        if let Some(sid) = sid
            && sid != self.ids.stream_sid
        {
            self.stats.wrong_stream_sid += 1;
            self.complain(format!("streamSid {sid} is not this stream's"));
        }
        let mut out = Vec::new();
        match message {
            FromGateway::Media { audio, .. } => {
                self.stats.frames_received += 1;
                self.stats.bytes_received += audio.len() as u64;
                if audio.len() != FRAME_BYTES {
                    self.stats.odd_sized_frames += 1;
                }
                match self.mode {
                    MarkMode::Received => self.hear(&audio),
                    MarkMode::Played => match self.queue.back_mut() {
                        Some(Queued::Audio(a)) => a.extend(audio),
                        _ => self.queue.push_back(Queued::Audio(audio.into())),
                    },
                }
            }
            FromGateway::Mark { name, .. } => {
                self.stats.marks_received += 1;
                self.queue.push_back(Queued::Mark(name));
                self.settle(&mut out);
            }
            FromGateway::Clear { .. } => {
                self.stats.clears_received += 1;
                for q in std::mem::take(&mut self.queue) {
                    match q {
                        Queued::Audio(a) => self.stats.bytes_cleared += a.len() as u64,
                        Queued::Mark(name) => {
                            self.stats.marks_echoed_on_clear += 1;
                            out.push(self.echo(&name));
                        }
                    }
                }
            }
            FromGateway::Other(event) => {
                self.stats.unexpected_events += 1;
                self.complain(format!("unexpected event `{event}`"));
            }
            FromGateway::Invalid(text) => {
                self.stats.invalid_messages += 1;
                self.complain(format!("invalid message: {text}"));
            }
        }
        out
    }

    /// Play 20 ms of the buffered audio ([`MarkMode::Played`]; nothing in the other mode);
    /// returns the echoes of the marks the play-out reached.
    pub fn play_frame(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut want = FRAME_BYTES;
        while want > 0 {
            let Some(Queued::Audio(a)) = self.queue.front_mut() else { break };
            let n = want.min(a.len());
            let played: Vec<u8> = a.drain(..n).collect();
            want -= n;
            if a.is_empty() {
                self.queue.pop_front();
            }
            self.hear(&played);
        }
        self.settle(&mut out);
        out
    }

    /// Echo the marks at the front of the queue (all audio before them has played).
    fn settle(&mut self, out: &mut Vec<String>) {
        while let Some(Queued::Mark(_)) = self.queue.front() {
            let Some(Queued::Mark(name)) = self.queue.pop_front() else { unreachable!() };
            out.push(self.echo(&name));
        }
    }

    fn echo(&mut self, name: &str) -> String {
        self.stats.marks_echoed += 1;
        let seq = self.next_seq();
        wire::mark(seq, &self.ids.stream_sid, name)
    }

    fn hear(&mut self, audio: &[u8]) {
        if self.keep_heard {
            self.heard.extend_from_slice(audio);
        }
    }

    /// What played so far (kept with `keep_heard`), taken.
    pub fn take_heard(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.heard)
    }

    fn complain(&mut self, what: String) {
        if self.complaints.len() < MAX_COMPLAINTS {
            self.complaints.push(what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn phone(mode: MarkMode) -> Phone {
        Phone::new(CallIds { account_sid: "AC1".into(), call_sid: "CA1".into(), stream_sid: "MZ1".into() }, mode, true)
    }

    fn audio(byte: u8, n: usize) -> FromGateway {
        FromGateway::Media { stream_sid: Some("MZ1".into()), audio: vec![byte; n] }
    }

    fn mark(name: &str) -> FromGateway {
        FromGateway::Mark { stream_sid: Some("MZ1".into()), name: name.into() }
    }

    /// (sequenceNumber, mark name) of echoes.
    fn echoes(out: &[String]) -> Vec<(u64, String)> {
        out.iter()
            .map(|m| {
                let v: Value = serde_json::from_str(m).unwrap();
                assert_eq!(v["event"], "mark");
                assert_eq!(v["streamSid"], "MZ1");
                (v["sequenceNumber"].as_str().unwrap().parse().unwrap(), v["mark"]["name"].as_str().unwrap().into())
            })
            .collect()
    }

    #[test]
    fn sequence_numbers_chunks_and_timestamps_count_up_from_twilios_origins() {
        let mut p = phone(MarkMode::Received);
        let v: Value = serde_json::from_str(&p.start(&[])).unwrap();
        assert_eq!(v["sequenceNumber"], "1");
        for k in 0..3u64 {
            let v: Value = serde_json::from_str(&p.media(&[0xFF; FRAME_BYTES])).unwrap();
            assert_eq!(v["sequenceNumber"], (k + 2).to_string());
            assert_eq!(v["media"]["chunk"], (k + 1).to_string());
            assert_eq!(v["media"]["timestamp"], (k * 20).to_string());
        }
        let v: Value = serde_json::from_str(&p.dtmf('5')).unwrap();
        assert_eq!(v["sequenceNumber"], "5");
        // Echoes take sequence numbers too; the next chunk keeps its own count.
        assert_eq!(echoes(&p.on_message(mark("a"))), vec![(6, "a".into())]);
        let v: Value = serde_json::from_str(&p.media(&[0xFF; FRAME_BYTES])).unwrap();
        assert_eq!((v["sequenceNumber"].as_str(), v["media"]["chunk"].as_str()), (Some("7"), Some("4")));
        let v: Value = serde_json::from_str(&p.stop()).unwrap();
        assert_eq!(v["sequenceNumber"], "8");
        assert_eq!((p.stats.frames_sent, p.stats.dtmf_sent), (4, 1));
    }

    #[test]
    fn received_mode_hears_audio_on_arrival_and_echoes_marks_at_once() {
        let mut p = phone(MarkMode::Received);
        assert!(p.on_message(audio(1, 160)).is_empty());
        assert!(p.on_message(audio(2, 160)).is_empty());
        assert_eq!(echoes(&p.on_message(mark("m1"))), vec![(1, "m1".into())]);
        assert_eq!(p.pending_marks(), 0);
        // Nothing is buffered, so a clear drops nothing and echoes nothing.
        assert!(p.on_message(FromGateway::Clear { stream_sid: Some("MZ1".into()) }).is_empty());
        assert!(p.play_frame().is_empty());
        let heard = p.take_heard();
        assert_eq!(heard.len(), 320);
        assert_eq!((heard[0], heard[319]), (1, 2));
        assert_eq!((p.stats.frames_received, p.stats.marks_echoed, p.stats.clears_received), (2, 1, 1));
        assert_eq!(p.stats.bytes_cleared, 0);
    }

    #[test]
    fn played_mode_echoes_a_mark_when_the_audio_before_it_has_played() {
        let mut p = phone(MarkMode::Played);
        // A mark with nothing before it is echoed at once.
        assert_eq!(echoes(&p.on_message(mark("m0"))), vec![(1, "m0".into())]);
        p.on_message(audio(1, 160));
        p.on_message(audio(2, 100));
        assert!(p.on_message(mark("m1")).is_empty());
        p.on_message(audio(3, 160));
        assert!(p.on_message(mark("m2")).is_empty());
        assert_eq!((p.pending_marks(), p.buffered_bytes()), (2, 420));
        // Tick 1 plays frame 1; tick 2 plays the 100 bytes and reaches m1.
        assert!(p.play_frame().is_empty());
        assert_eq!(echoes(&p.play_frame()), vec![(2, "m1".into())]);
        // Tick 3 plays audio 3; m2 is reached.
        assert_eq!(echoes(&p.play_frame()), vec![(3, "m2".into())]);
        assert!(p.play_frame().is_empty());
        let heard = p.take_heard();
        assert_eq!(heard.len(), 420);
        assert_eq!((heard[159], heard[160], heard[259], heard[260]), (1, 2, 2, 3));
        assert_eq!(p.stats.marks_echoed, 3);
    }

    #[test]
    fn a_clear_drops_unplayed_audio_and_echoes_pending_marks_in_order() {
        let mut p = phone(MarkMode::Played);
        p.on_message(audio(1, 160));
        p.on_message(mark("a"));
        p.on_message(audio(2, 480));
        p.on_message(mark("b"));
        p.on_message(audio(3, 160));
        assert!(p.play_frame().len() == 1); // plays frame 1, reaches a
        assert_eq!(p.play_frame().len(), 0); // plays 160 of audio 2
        let out = p.on_message(FromGateway::Clear { stream_sid: Some("MZ1".into()) });
        assert_eq!(echoes(&out), vec![(2, "b".into())]);
        assert_eq!((p.pending_marks(), p.buffered_bytes()), (0, 0));
        assert_eq!(p.stats.bytes_cleared, 320 + 160);
        assert_eq!((p.stats.marks_echoed, p.stats.marks_echoed_on_clear, p.stats.clears_received), (2, 1, 1));
        // After the clear, new audio and marks play as usual.
        p.on_message(audio(4, 160));
        p.on_message(mark("c"));
        assert_eq!(echoes(&p.play_frame()), vec![(3, "c".into())]);
        assert_eq!(p.take_heard().len(), 160 * 3);
    }

    #[test]
    fn another_streams_sid_and_junk_are_counted_not_fatal() {
        let mut p = phone(MarkMode::Received);
        p.on_message(FromGateway::Media { stream_sid: Some("MZ2".into()), audio: vec![0; 80] });
        p.on_message(wire::parse_from_gateway("garbage"));
        p.on_message(wire::parse_from_gateway(r#"{"event":"hello","streamSid":"MZ1"}"#));
        assert_eq!(
            (p.stats.wrong_stream_sid, p.stats.invalid_messages, p.stats.unexpected_events, p.stats.odd_sized_frames),
            (1, 1, 1, 1)
        );
        assert_eq!(p.complaints.len(), 3);
        assert_eq!(p.stats.frames_received, 1);
    }
}
