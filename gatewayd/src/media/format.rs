//! Audio formats and the 20 ms frame (DESIGN section 4).

use serde::Deserialize;
use std::time::Duration;

/// Every frame, in and out, is 20 ms of audio.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames per second (1000 ms / 20 ms).
pub const FRAMES_PER_SECOND: u32 = 50;

/// A wire codec, by its configuration name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// G.711 mu-law, 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law, 8 kHz, one byte per sample.
    Pcma,
    /// 16-bit signed linear PCM, little-endian, 8/16/24/48 kHz.
    L16,
    /// Opus (RFC 6716), one packet per 20 ms frame, 8/12/16/24/48 kHz.
    Opus,
}

impl CodecName {
    /// Parse a configuration / WIT name: `pcmu`, `pcma`, `l16` or `opus`.
    pub fn parse(name: &str) -> Option<CodecName> {
        Some(match name {
            "pcmu" => CodecName::Pcmu,
            "pcma" => CodecName::Pcma,
            "l16" => CodecName::L16,
            "opus" => CodecName::Opus,
            _ => return None,
        })
    }

    /// The configuration / WIT name.
    pub fn name(self) -> &'static str {
        match self {
            CodecName::Pcmu => "pcmu",
            CodecName::Pcma => "pcma",
            CodecName::L16 => "l16",
            CodecName::Opus => "opus",
        }
    }

    /// The sample rates (Hz) this codec runs at.
    pub fn rates(self) -> &'static [u32] {
        match self {
            CodecName::Pcmu | CodecName::Pcma => &[8000],
            CodecName::L16 => &[8000, 16000, 24000, 48000],
            CodecName::Opus => &[8000, 12000, 16000, 24000, 48000],
        }
    }
}

/// How a media route's audio travels on its WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Binary messages of raw audio in the route's codec (ivr.md).
    #[default]
    Binary,
    /// Twilio Media Streams: JSON text messages, base64 mu-law 8 kHz ([`super::twilio`]).
    Twilio,
}

/// A session's audio format: codec and sample rate, mono. Internally audio is 16-bit PCM at
/// this rate in frames of [`FRAME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    pub codec: CodecName,
    /// Samples per second.
    pub rate: u32,
}

impl Format {
    /// A format, or why the codec cannot run at `rate`.
    pub fn new(codec: CodecName, rate: u32) -> Result<Format, String> {
        if codec.rates().contains(&rate) {
            Ok(Format { codec, rate })
        } else {
            Err(format!("{} runs at {:?} Hz, not {rate}", codec.name(), codec.rates()))
        }
    }

    /// Samples in one 20 ms frame (160 at 8 kHz).
    pub fn frame_samples(self) -> usize {
        (self.rate / FRAMES_PER_SECOND) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(Format::new(CodecName::L16, 8000).unwrap().frame_samples(), 160);
        assert_eq!(Format::new(CodecName::L16, 48000).unwrap().frame_samples(), 960);
        assert!(Format::new(CodecName::Pcmu, 16000).is_err());
        assert!(Format::new(CodecName::L16, 44100).is_err());
    }
}
