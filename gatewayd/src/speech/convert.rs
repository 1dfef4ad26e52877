//! Audio conversions between the call (G.711 mu-law, 8000 Hz, mono) and the formats a
//! provider's plan names, with the media engine's codecs ([`crate::media::codec`]) and its
//! streaming resampler ([`crate::media::resample::StreamResampler`]). Mono only.

use super::bindings::types::{AudioEncoding, AudioFormat};
use crate::media::codec::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};
use crate::media::resample::StreamResampler;

/// The call's rate, in Hz.
pub const CALL_RATE: u32 = 8000;

/// Whether the host can produce or take `format`: mono mu-law, A-law or 16-bit PCM, at 8000 to
/// 48000 Hz.
pub fn supported(format: &AudioFormat) -> bool {
    matches!(format.encoding, AudioEncoding::Mulaw | AudioEncoding::Alaw | AudioEncoding::PcmS16le)
        && format.channels == 1
        && (8000..=48000).contains(&format.sample_rate)
}

/// Bytes per sample of a supported encoding.
pub fn sample_bytes(encoding: AudioEncoding) -> usize {
    if encoding == AudioEncoding::PcmS16le { 2 } else { 1 }
}

/// Decoder of a byte stream in a supported format to 16-bit samples at the call's rate.
pub struct ToCall {
    encoding: AudioEncoding,
    /// A byte of a 16-bit sample split across two chunks.
    odd: Option<u8>,
    resampler: Option<StreamResampler>,
    decoded: Vec<i16>,
}

impl ToCall {
    /// A decoder for `format`. Errors: an unsupported format (see [`supported`]).
    pub fn new(format: &AudioFormat) -> Result<ToCall, String> {
        if !supported(format) {
            return Err(format!("unsupported output format {format:?}"));
        }
        let resampler = match format.sample_rate {
            CALL_RATE => None,
            rate => Some(StreamResampler::new(rate, CALL_RATE)?),
        };
        Ok(ToCall { encoding: format.encoding, odd: None, resampler, decoded: Vec::new() })
    }

    /// Decode `bytes`; append the samples (8000 Hz) ready so far to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) {
        self.decoded.clear();
        match self.encoding {
            AudioEncoding::Mulaw => self.decoded.extend(bytes.iter().map(|&b| ulaw_to_linear(b))),
            AudioEncoding::Alaw => self.decoded.extend(bytes.iter().map(|&b| alaw_to_linear(b))),
            _ => {
                let mut rest = bytes;
                if let (Some(first), Some((&second, tail))) = (self.odd, rest.split_first()) {
                    self.decoded.push(i16::from_le_bytes([first, second]));
                    self.odd = None;
                    rest = tail;
                }
                // A split sample's first byte waits for the next non-empty chunk.
                if self.odd.is_none() {
                    let mut pairs = rest.chunks_exact(2);
                    self.decoded.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
                    self.odd = pairs.remainder().first().copied();
                }
            }
        }
        match &mut self.resampler {
            // The rates were accepted when it was built; a failing step loses that chunk only.
            Some(r) => {
                if let Err(e) = r.push(&self.decoded, out) {
                    tracing::debug!(error = %e, "speech audio: a resampler step failed");
                }
            }
            None => out.extend_from_slice(&self.decoded),
        }
    }

    /// End of the stream: the resampler's tail (a trailing odd byte is dropped).
    pub fn finish(&mut self, out: &mut Vec<i16>) {
        if let Some(r) = &mut self.resampler
            && let Err(e) = r.flush(out)
        {
            tracing::debug!(error = %e, "speech audio: the resampler's tail was lost");
        }
    }
}

/// Encoder of call audio (mu-law 8000 Hz bytes) to a supported send format.
pub struct FromCall {
    format: AudioFormat,
    resampler: Option<StreamResampler>,
    samples: Vec<i16>,
    resampled: Vec<i16>,
}

impl FromCall {
    /// An encoder to `format`. Errors: an unsupported format.
    pub fn new(format: &AudioFormat) -> Result<FromCall, String> {
        if !supported(format) {
            return Err(format!("unsupported send format {format:?}"));
        }
        let resampler = match format.sample_rate {
            CALL_RATE => None,
            rate => Some(StreamResampler::new(CALL_RATE, rate)?),
        };
        Ok(FromCall { format: *format, resampler, samples: Vec::new(), resampled: Vec::new() })
    }

    /// Whether call bytes go out unchanged (mu-law 8000 Hz).
    pub fn is_identity(&self) -> bool {
        self.format.encoding == AudioEncoding::Mulaw && self.format.sample_rate == CALL_RATE
    }

    /// Convert `mulaw` (call bytes) and append the encoded bytes ready so far to `out`.
    pub fn push(&mut self, mulaw: &[u8], out: &mut Vec<u8>) {
        if self.is_identity() {
            out.extend_from_slice(mulaw);
            return;
        }
        self.samples.clear();
        self.samples.extend(mulaw.iter().map(|&b| ulaw_to_linear(b)));
        let samples = match &mut self.resampler {
            Some(r) => {
                self.resampled.clear();
                if let Err(e) = r.push(&self.samples, &mut self.resampled) {
                    tracing::debug!(error = %e, "call audio: a resampler step failed");
                }
                &self.resampled
            }
            None => &self.samples,
        };
        match self.format.encoding {
            AudioEncoding::Mulaw => out.extend(samples.iter().map(|&s| linear_to_ulaw(s))),
            AudioEncoding::Alaw => out.extend(samples.iter().map(|&s| linear_to_alaw(s))),
            _ => out.extend(samples.iter().flat_map(|s| s.to_le_bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(rate: u32) -> AudioFormat {
        AudioFormat { encoding: AudioEncoding::PcmS16le, sample_rate: rate, channels: 1 }
    }

    #[test]
    fn streamed_resampling_has_the_clip_length_whatever_the_chunking() {
        let tone: Vec<i16> = (0..24_000).map(|i| ((i as f32 * 0.13).sin() * 8000.0) as i16).collect();
        for chunk in [7usize, 480, 1000, 24_000] {
            let mut r = StreamResampler::new(24_000, 8000).unwrap();
            let mut out = Vec::new();
            for c in tone.chunks(chunk) {
                r.push(c, &mut out).unwrap();
            }
            r.flush(&mut out).unwrap();
            assert_eq!(out.len(), 8000, "chunks of {chunk}");
        }
    }

    #[test]
    fn pcm_split_across_chunks_decodes_whole_samples() {
        let mut d = ToCall::new(&pcm(8000)).unwrap();
        let mut out = Vec::new();
        d.push(&[0x01], &mut out);
        d.push(&[0x02, 0x03, 0x04], &mut out);
        assert_eq!(out, vec![0x0201, 0x0403]);
    }

    #[test]
    fn mulaw_to_linear16_at_16k_doubles_the_length() {
        let mut e = FromCall::new(&pcm(16_000)).unwrap();
        let mut out = Vec::new();
        for _ in 0..50 {
            e.push(&[0xFF; 160], &mut out);
        }
        // One second in; the resampler holds back at most one 20 ms step.
        assert!((31_360..=32_000).contains(&out.len()), "{}", out.len());
    }
}
