//! The WebSocket frame guard: a sans-IO check of a client's byte stream, frame header by frame
//! header, before fastwebsockets parses and buffers it (RFC 6455 section 5).
//!
//! fastwebsockets bounds each frame but not a whole fragmented message, accepts unmasked client
//! frames and control frames over 125 bytes. The guard sees every header as the bytes arrive and
//! refuses, before any payload is buffered:
//! - a frame from the client without a mask (section 5.1: close 1002);
//! - a control frame (close, ping, pong) whose payload is over 125 bytes (section 5.5: 1002);
//! - a data message whose fragments add up to more than the listener's `max_message_bytes`
//!   (1009), counted from the first frame's declared length on, so a flood of 60 KB
//!   continuation frames is refused when the header that crosses the bound arrives.
//!
//! Everything else (opcodes, reserved bits, UTF-8, close codes, fragment order) is left to
//! fastwebsockets. Payload bytes are skipped, never copied.

use thiserror::Error;

/// Why the guard refused a client's stream. Each maps to the close code the daemon sends.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    /// A client frame without the mask bit (RFC 6455 section 5.1): close 1002.
    #[error("client frames must be masked")]
    Unmasked,
    /// A control frame with more than 125 payload bytes (section 5.5): close 1002.
    #[error("control frame payload of {0} bytes (at most 125)")]
    ControlTooLong(u64),
    /// A data message (all its fragments) larger than the limit: close 1009.
    #[error("message of at least {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooBig { size: u64, limit: u64 },
}

impl Violation {
    /// The close code (RFC 6455 section 7.4.1) the daemon answers this violation with.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::Unmasked | Violation::ControlTooLong(_) => 1002,
            Violation::MessageTooBig { .. } => 1009,
        }
    }
}

/// Where the guard is in the stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a frame header: `have` of the bytes in `head` so far.
    Header { head: [u8; 14], have: usize },
    /// Skipping this many payload bytes.
    Payload(u64),
}

/// Checks frame headers of one client connection (server role). Feed it every byte read from
/// the socket, in order, with [`FrameGuard::inspect`].
#[derive(Debug, Clone)]
pub struct FrameGuard {
    state: State,
    /// Largest whole data message accepted, bytes.
    max_message_bytes: u64,
    /// Bytes declared so far by the frames of the data message in progress.
    message_bytes: u64,
    /// Set once a frame was refused: the stream is not parsed past it.
    refused: Option<Violation>,
}

impl FrameGuard {
    /// A guard for a new connection whose messages may hold at most `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> FrameGuard {
        FrameGuard {
            state: State::Header { head: [0; 14], have: 0 },
            max_message_bytes: max_message_bytes as u64,
            message_bytes: 0,
            refused: None,
        }
    }

    /// Inspect the next bytes of the stream. `Ok(())` when all of them may go on to the parser;
    /// `Err((n, violation))` when the frame whose header starts at offset `n` of `bytes` is
    /// refused: the first `n` bytes (whole frames and payload before it) may still be parsed, the
    /// rest must not. After an error the guard stays refused: every later call returns the same
    /// violation at offset 0.
    pub fn inspect(&mut self, bytes: &[u8]) -> Result<(), (usize, Violation)> {
        if let Some(v) = &self.refused {
            return Err((0, v.clone()));
        }
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                State::Payload(left) => {
                    let take = (*left).min((bytes.len() - at) as u64);
                    *left -= take;
                    at += take as usize;
                    if *left == 0 {
                        self.state = State::Header { head: [0; 14], have: 0 };
                    }
                }
                State::Header { head, have } => {
                    let start = at as isize - *have as isize;
                    head[*have] = bytes[at];
                    *have += 1;
                    at += 1;
                    let needed = header_len(&head[..*have]);
                    if *have < needed {
                        continue;
                    }
                    let header = *head;
                    match self.check(&header[..needed]) {
                        Ok(0) => self.state = State::Header { head: [0; 14], have: 0 },
                        Ok(payload) => self.state = State::Payload(payload),
                        Err(v) => {
                            // The header may have started in an earlier call: nothing of this
                            // call from its start on passes.
                            let offset = start.max(0) as usize;
                            self.refuse(v.clone());
                            return Err((offset, v));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Stay refused: any later bytes are refused at offset 0 with `v`.
    fn refuse(&mut self, v: Violation) {
        self.refused = Some(v);
    }

    /// Check one complete header; returns its payload length.
    fn check(&mut self, header: &[u8]) -> Result<u64, Violation> {
        let opcode = header[0] & 0x0f;
        let fin = header[0] & 0x80 != 0;
        let masked = header[1] & 0x80 != 0;
        let len = match header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().expect("8 length bytes")),
            n => u64::from(n),
        };
        if !masked {
            return Err(Violation::Unmasked);
        }
        if opcode & 0x08 != 0 {
            // Control frame: not part of the data message in progress.
            if len > 125 {
                return Err(Violation::ControlTooLong(len));
            }
            return Ok(len);
        }
        // Data frame: 0 continues the message in progress, 1 (text) and 2 (binary) start one.
        // Other opcodes and out-of-order fragments are the parser's to refuse.
        self.message_bytes = if opcode == 0 { self.message_bytes.saturating_add(len) } else { len };
        if self.message_bytes > self.max_message_bytes {
            return Err(Violation::MessageTooBig { size: self.message_bytes, limit: self.max_message_bytes });
        }
        if fin {
            self.message_bytes = 0;
        }
        Ok(len)
    }
}

/// Length of the header that starts with `head` (2 to 14 bytes); 2 until the second byte is in.
fn header_len(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let extended = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame header: `fin`, `opcode`, payload `len`, masked or not (mask key 1,2,3,4).
    fn header(fin: bool, opcode: u8, len: u64, masked: bool) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => h.push(m | len as u8),
            126..=65535 => {
                h.push(m | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(m | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, len as u64, true);
        f.extend(std::iter::repeat_n(0x55, len));
        f
    }

    #[test]
    fn whole_frames_and_fragmented_messages_within_the_limit_pass() {
        let mut g = FrameGuard::new(1000);
        let mut stream = frame(true, 1, 1000);
        stream.extend(frame(false, 2, 400));
        stream.extend(frame(true, 9, 125)); // a ping between fragments
        stream.extend(frame(true, 0, 600));
        stream.extend(frame(true, 1, 0));
        assert_eq!(g.inspect(&stream), Ok(()));
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_verdict() {
        let mut stream = frame(true, 1, 300);
        stream.extend(frame(false, 2, 70_000));
        stream.extend(frame(true, 0, 70_000));
        let offending = stream.len();
        stream.extend(frame(true, 1, 10));
        for chunk in [1, 2, 3, 7, 13, 4096] {
            let mut g = FrameGuard::new(200_000);
            for (i, piece) in stream.chunks(chunk).enumerate() {
                assert_eq!(g.inspect(piece), Ok(()), "chunk size {chunk}, piece {i}");
            }
        }
        for chunk in [1, 5, 1000] {
            let mut g = FrameGuard::new(100_000);
            let mut passed = 0;
            let mut verdict = None;
            for piece in stream.chunks(chunk) {
                match g.inspect(piece) {
                    Ok(()) => passed += piece.len(),
                    Err((n, v)) => {
                        passed += n;
                        verdict = Some(v);
                        break;
                    }
                }
            }
            assert_eq!(verdict, Some(Violation::MessageTooBig { size: 140_000, limit: 100_000 }), "chunk {chunk}");
            // Everything before the third frame's header passes; of that header at most the
            // bytes that arrived before it was complete (the parser waits for the rest), never
            // anything after it.
            let third_header = (2 + 2 + 4 + 300) + (2 + 8 + 4 + 70_000);
            assert!((third_header..third_header + 14).contains(&passed), "chunk {chunk}: {passed}");
            assert!(passed < offending);
        }
    }

    #[test]
    fn a_flood_of_continuation_frames_is_refused_at_the_header_that_crosses_the_limit() {
        let mut g = FrameGuard::new(65_536);
        assert_eq!(g.inspect(&frame(false, 2, 60_000)), Ok(()));
        let next = header(false, 0, 60_000, true);
        assert_eq!(g.inspect(&next), Err((0, Violation::MessageTooBig { size: 120_000, limit: 65_536 })));
        // Refused for good.
        assert_eq!(g.inspect(&[0u8; 10]).map_err(|(n, v)| (n, v.close_code())), Err((0, 1009)));
    }

    #[test]
    fn a_single_frame_over_the_limit_is_refused_before_its_payload() {
        let mut g = FrameGuard::new(100);
        let mut bytes = frame(true, 1, 10);
        let at = bytes.len();
        bytes.extend(header(true, 2, 101, true));
        assert_eq!(g.inspect(&bytes), Err((at, Violation::MessageTooBig { size: 101, limit: 100 })));
        let mut g = FrameGuard::new(100);
        assert_eq!(g.inspect(&header(true, 2, u64::MAX, true)).map(|_| ()).unwrap_err().1.close_code(), 1009);
    }

    #[test]
    fn unmasked_client_frames_are_a_protocol_error() {
        let mut g = FrameGuard::new(1000);
        let mut bytes = frame(true, 1, 5);
        bytes.extend(header(true, 1, 5, false));
        assert_eq!(g.inspect(&bytes), Err((11, Violation::Unmasked)));
        assert_eq!(Violation::Unmasked.close_code(), 1002);
    }

    #[test]
    fn control_frames_over_125_bytes_are_a_protocol_error() {
        // Autobahn 7.3.6: a close frame with a 124-byte reason (126-byte payload).
        let mut g = FrameGuard::new(1 << 20);
        assert_eq!(g.inspect(&header(true, 8, 126, true)), Err((0, Violation::ControlTooLong(126))));
        let mut g = FrameGuard::new(1 << 20);
        assert_eq!(g.inspect(&header(true, 10, 200, true)).unwrap_err().1.close_code(), 1002);
        let mut g = FrameGuard::new(1 << 20);
        assert_eq!(g.inspect(&frame(true, 8, 125)), Ok(()));
    }

    #[test]
    fn a_header_split_across_reads_is_refused_at_the_start_of_the_next_read() {
        let mut g = FrameGuard::new(1000);
        let h = header(true, 2, 5000, true);
        assert_eq!(g.inspect(&h[..3]), Ok(()));
        assert_eq!(g.inspect(&h[3..]), Err((0, Violation::MessageTooBig { size: 5000, limit: 1000 })));
    }
}
