//! Wire codecs (DESIGN section 4): G.711 mu-law and A-law (ITU-T G.711), L16 (16-bit linear
//! PCM, little-endian as on the `ivr.md` wire) and Opus (RFC 6716, libopus via `audiopus`).
//!
//! A [`Codec`] turns one 20 ms frame of 16-bit mono samples into wire bytes and back. Every
//! codec runs at the session's rate, so no resampling happens here (see [`super::resample`]).

use super::format::{CodecName, Format};

/// Why a frame could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame is not the size this format's 20 ms frames have (bytes expected, got).
    #[error("frame of {got} bytes; this route's audio format takes {expected}-byte frames")]
    WrongSize { expected: usize, got: usize },
    /// An Opus packet was empty, too long (over 1275 bytes) or corrupt.
    #[error("invalid Opus packet: {0}")]
    Opus(String),
}

/// Encoder and decoder of one session's wire format. Opus keeps state between frames, so a
/// session owns its codec.
pub enum Codec {
    Pcmu,
    Pcma,
    L16,
    Opus { encoder: Box<audiopus::coder::Encoder>, decoder: Box<audiopus::coder::Decoder> },
}

/// Largest Opus packet (RFC 6716 section 3.4, R2).
pub const OPUS_MAX_PACKET: usize = 1275;

impl Codec {
    /// A codec for `format` (the rate was validated by [`Format::new`]).
    pub fn new(format: Format) -> Result<Codec, CodecError> {
        Ok(match format.codec {
            CodecName::Pcmu => Codec::Pcmu,
            CodecName::Pcma => Codec::Pcma,
            CodecName::L16 => Codec::L16,
            CodecName::Opus => {
                use audiopus::{Application, Channels, SampleRate};
                let rate = SampleRate::try_from(format.rate as i32).map_err(|e| CodecError::Opus(e.to_string()))?;
                let encoder = audiopus::coder::Encoder::new(rate, Channels::Mono, Application::Voip)
                    .map_err(|e| CodecError::Opus(e.to_string()))?;
                let decoder =
                    audiopus::coder::Decoder::new(rate, Channels::Mono).map_err(|e| CodecError::Opus(e.to_string()))?;
                Codec::Opus { encoder: Box::new(encoder), decoder: Box::new(decoder) }
            }
        })
    }

    /// Decode one wire frame into `out` (cleared first); `samples` is the frame's sample count
    /// at the session rate. Fixed-size codecs refuse any other size.
    pub fn decode(&mut self, frame: &[u8], samples: usize, out: &mut Vec<i16>) -> Result<(), CodecError> {
        out.clear();
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::L16 => {
                let expected = self.frame_bytes(samples).expect("fixed-size codec");
                if frame.len() != expected {
                    return Err(CodecError::WrongSize { expected, got: frame.len() });
                }
            }
            Codec::Opus { .. } => {}
        }
        match self {
            Codec::Pcmu => out.extend(frame.iter().map(|&b| ulaw_to_linear(b))),
            Codec::Pcma => out.extend(frame.iter().map(|&b| alaw_to_linear(b))),
            Codec::L16 => out.extend(frame.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]))),
            Codec::Opus { decoder, .. } => {
                if frame.is_empty() || frame.len() > OPUS_MAX_PACKET {
                    return Err(CodecError::Opus(format!("{} bytes", frame.len())));
                }
                let packet = audiopus::packet::Packet::try_from(frame).map_err(|e| CodecError::Opus(e.to_string()))?;
                // Room for the longest Opus frame (120 ms) so odd packets decode, then keep 20 ms.
                out.resize(samples * 6, 0);
                let signals =
                    audiopus::MutSignals::try_from(&mut out[..]).map_err(|e| CodecError::Opus(e.to_string()))?;
                let n = decoder.decode(Some(packet), signals, false).map_err(|e| CodecError::Opus(e.to_string()))?;
                out.truncate(n.min(samples));
                out.resize(samples, 0);
            }
        }
        Ok(())
    }

    /// Encode one frame of samples, appending the wire bytes to `out`.
    pub fn encode(&mut self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Codec::Pcmu => out.extend(samples.iter().map(|&s| linear_to_ulaw(s))),
            Codec::Pcma => out.extend(samples.iter().map(|&s| linear_to_alaw(s))),
            Codec::L16 => out.extend(samples.iter().flat_map(|s| s.to_le_bytes())),
            Codec::Opus { encoder, .. } => {
                let start = out.len();
                out.resize(start + OPUS_MAX_PACKET, 0);
                match encoder.encode(samples, &mut out[start..]) {
                    Ok(n) => out.truncate(start + n),
                    Err(e) => {
                        // Only a wrong frame length makes libopus refuse; the engine never
                        // passes one. Send nothing rather than garbage.
                        tracing::warn!(error = %e, "opus encode failed");
                        out.truncate(start);
                    }
                }
            }
        }
    }

    /// Wire size of a frame of `samples` samples, for fixed-size codecs (None for Opus).
    pub fn frame_bytes(&self, samples: usize) -> Option<usize> {
        match self {
            Codec::Pcmu | Codec::Pcma => Some(samples),
            Codec::L16 => Some(samples * 2),
            Codec::Opus { .. } => None,
        }
    }
}

/// mu-law: bias added before the segment search (ITU-T G.711, 0x84 = 33 << 2).
const ULAW_BIAS: i32 = 0x84;
/// mu-law: largest magnitude that encodes without overflow after the bias.
const ULAW_CLIP: i32 = 32635;

/// Encode a 16-bit sample as G.711 mu-law (ITU-T G.711 section 3, table 2a).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut x = sample as i32;
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    let x = x.min(ULAW_CLIP) + ULAW_BIAS;
    let exponent = 31 - ((x >> 7) as u32).leading_zeros() as i32;
    let mantissa = (x >> (exponent + 3)) & 0x0F;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// Decode a G.711 mu-law byte to a 16-bit sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

/// Encode a 16-bit sample as G.711 A-law (ITU-T G.711 section 2, table 1a; even bits inverted).
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut value = (sample as i32) >> 3; // 13-bit
    let mask: u8 = if value >= 0 {
        0xD5
    } else {
        value = -value - 1;
        0x55
    };
    // Segment: the position of the highest bit above the 5-bit first segment.
    let segment = (32 - ((value as u32) >> 5).leading_zeros()) as i32;
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if segment < 2 { 1 } else { segment };
    let code = ((segment << 4) | ((value >> shift) & 0x0F)) as u8;
    code ^ mask
}

/// Decode a G.711 A-law byte to a 16-bit sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let segment = ((a & 0x70) >> 4) as i32;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (segment - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::format::Format;

    /// ITU-T G.711 table 2 (mu-law) reconstruction values written independently of the codec:
    /// segment s, step q -> ((2q + 33) << s) - 33 in 14-bit units, times 4 for 16-bit samples.
    fn itu_ulaw(code: u8) -> i16 {
        let u = !code;
        let (s, q) = (((u >> 4) & 7) as i32, (u & 15) as i32);
        let m = (((2 * q + 33) << s) - 33) * 4;
        (if u & 0x80 != 0 { -m } else { m }) as i16
    }

    /// ITU-T G.711 table 1 (A-law): segment 0 -> 2q + 1, segment s -> (2q + 33) << (s - 1), in
    /// 13-bit units, times 8 for 16-bit samples; even bits inverted on the line.
    fn itu_alaw(code: u8) -> i16 {
        let a = code ^ 0x55;
        let (s, q) = (((a >> 4) & 7) as i32, (a & 15) as i32);
        let m = if s == 0 { 2 * q + 1 } else { (2 * q + 33) << (s - 1) } * 8;
        (if a & 0x80 != 0 { m } else { -m }) as i16
    }

    #[test]
    fn ulaw_matches_the_g711_table_for_every_code() {
        for code in 0..=255u8 {
            assert_eq!(ulaw_to_linear(code), itu_ulaw(code), "code {code:#04x}");
            // Encoding the reconstruction value gives the code back (0x7F is -0, coded 0xFF).
            let back = linear_to_ulaw(ulaw_to_linear(code));
            assert_eq!(back, if code == 0x7F { 0xFF } else { code }, "code {code:#04x}");
        }
        // Known points: silence, full scale, the Sun/ITU reference encoder's outputs.
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
    }

    #[test]
    fn alaw_matches_the_g711_table_for_every_code() {
        for code in 0..=255u8 {
            assert_eq!(alaw_to_linear(code), itu_alaw(code), "code {code:#04x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code, "code {code:#04x}");
        }
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn g711_quantisation_error_stays_within_one_step() {
        // Every 16-bit input decodes to within one step of its segment (mu-law clips at 32635).
        for x in (i16::MIN as i32..=i16::MAX as i32).step_by(7) {
            let x = x as i16;
            let u = ulaw_to_linear(linear_to_ulaw(x)) as i32;
            let step_u = 8 << ((!linear_to_ulaw(x) >> 4) & 7);
            assert!((u - x as i32).abs() <= step_u.max(4 * 33), "ulaw {x} -> {u}");
            let a = alaw_to_linear(linear_to_alaw(x)) as i32;
            let seg = ((linear_to_alaw(x) ^ 0x55) >> 4) & 7;
            let step_a = if seg == 0 { 16 } else { 16 << (seg - 1) };
            assert!((a - x as i32).abs() <= step_a, "alaw {x} -> {a}");
        }
    }

    #[test]
    fn l16_is_little_endian_and_checks_the_size() {
        let mut c = Codec::new(Format::new(CodecName::L16, 8000).unwrap()).unwrap();
        let mut wire = Vec::new();
        c.encode(&[1, -2, 0x1234], &mut wire);
        assert_eq!(wire, [1, 0, 0xFE, 0xFF, 0x34, 0x12]);
        let mut pcm = Vec::new();
        c.decode(&wire, 3, &mut pcm).unwrap();
        assert_eq!(pcm, [1, -2, 0x1234]);
        assert_eq!(c.decode(&wire[..4], 3, &mut pcm), Err(CodecError::WrongSize { expected: 6, got: 4 }));
    }

    /// Signal-to-noise ratio of `out` against `reference`, in dB.
    fn snr_db(reference: &[i16], out: &[i16]) -> f64 {
        let signal: f64 = reference.iter().map(|&s| (s as f64).powi(2)).sum();
        let noise: f64 = reference.iter().zip(out).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        10.0 * (signal / noise).log10()
    }

    #[test]
    fn opus_round_trip_keeps_a_voice_band_tone() {
        for rate in [8000u32, 16000, 48000] {
            let format = Format::new(CodecName::Opus, rate).unwrap();
            let n = format.frame_samples();
            let mut c = Codec::new(format).unwrap();
            let tone: Vec<i16> = (0..rate as usize)
                .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin()) as i16)
                .collect();
            let (mut decoded, mut packet, mut pcm) = (Vec::new(), Vec::new(), Vec::new());
            for frame in tone.chunks_exact(n) {
                packet.clear();
                c.encode(frame, &mut packet);
                assert!(!packet.is_empty() && packet.len() <= OPUS_MAX_PACKET);
                c.decode(&packet, n, &mut pcm).unwrap();
                decoded.extend_from_slice(&pcm);
            }
            // Opus delays its output (lookahead); align on the best lag before measuring.
            let skip = n * 10; // let the encoder settle
            let best = (0..rate as usize / 100)
                .map(|lag| (lag, snr_db(&tone[skip..tone.len() - lag], &decoded[skip + lag..])))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert!(best.1 > 15.0, "opus at {rate} Hz: SNR {:.1} dB at lag {}", best.1, best.0);
        }
        let mut c = Codec::new(Format::new(CodecName::Opus, 8000).unwrap()).unwrap();
        assert!(matches!(c.decode(&[], 160, &mut Vec::new()), Err(CodecError::Opus(_))));
    }
}
