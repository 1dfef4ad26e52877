//! Sample-rate conversion with `rubato` (FFT resampler, anti-aliasing filter included).
//!
//! Audio played into a session (prompt files, `play-bytes`) is converted once, whole, to the
//! session's rate before it is queued; frames are never resampled one by one on the hot path.

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

/// Resample a whole mono clip of 16-bit samples from `from` Hz to `to` Hz. The resampler's
/// start-up delay is trimmed, so sample `i` of the input lines up with sample `i * to / from`
/// of the output. Rates must be positive; equal rates return the clip unchanged.
pub fn resample_clip(samples: &[i16], from: u32, to: u32) -> Result<Vec<i16>, String> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let chunk = (from as usize / 50).max(1); // 20 ms chunks
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
        .map_err(|e| format!("resampler {from} -> {to} Hz: {e}"))?;
    let input = vec![samples.iter().map(|&s| s as f32 / 32768.0).collect::<Vec<f32>>()];
    let out_len = resampler.process_all_needed_output_len(samples.len());
    let mut output = vec![vec![0f32; out_len]];
    let in_adapter = SequentialSliceOfVecs::new(&input, 1, samples.len()).map_err(|e| e.to_string())?;
    let mut out_adapter = SequentialSliceOfVecs::new_mut(&mut output, 1, out_len).map_err(|e| e.to_string())?;
    let (_, produced) = resampler
        .process_all_into_buffer(&in_adapter, &mut out_adapter, samples.len(), None)
        .map_err(|e| format!("resampling {from} -> {to} Hz: {e}"))?;
    Ok(output[0][..produced].iter().map(|&s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(freq: f64, rate: u32, seconds: f64) -> Vec<i16> {
        (0..(rate as f64 * seconds) as usize)
            .map(|i| (10000.0 * (2.0 * PI * freq * i as f64 / rate as f64).sin()) as i16)
            .collect()
    }

    /// Amplitude of `freq` in `x` (single-bin DFT over the middle of the clip), relative to 10000.
    fn level(x: &[i16], freq: f64, rate: u32) -> f64 {
        let mid = &x[x.len() / 4..x.len() * 3 / 4];
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in mid.iter().enumerate() {
            let w = 2.0 * PI * freq * i as f64 / rate as f64;
            re += s as f64 * w.cos();
            im += s as f64 * w.sin();
        }
        2.0 * (re * re + im * im).sqrt() / mid.len() as f64 / 10000.0
    }

    #[test]
    fn sweep_passes_the_voice_band_and_stops_above_nyquist() {
        // 8 kHz -> 16 kHz and back: tones across the band keep their level, length scales.
        for freq in [200.0, 500.0, 1000.0, 2000.0, 3000.0, 3400.0] {
            let x = tone(freq, 8000, 0.5);
            let up = resample_clip(&x, 8000, 16000).unwrap();
            assert!((up.len() as i64 - 2 * x.len() as i64).abs() <= 2, "length {}", up.len());
            let g = level(&up, freq, 16000);
            assert!((0.97..=1.03).contains(&g), "{freq} Hz up: gain {g:.3}");
            let down = resample_clip(&up, 16000, 8000).unwrap();
            let g = level(&down, freq, 8000);
            assert!((0.95..=1.05).contains(&g), "{freq} Hz round trip: gain {g:.3}");
        }
        // 48 kHz -> 8 kHz: tones above the new Nyquist (4 kHz) are filtered out, not aliased.
        for freq in [5000.0, 7000.0, 12000.0] {
            let x = tone(freq, 48000, 0.5);
            let down = resample_clip(&x, 48000, 8000).unwrap();
            let alias = (freq % 8000.0).min(8000.0 - freq % 8000.0);
            assert!(level(&down, alias, 8000) < 0.01, "{freq} Hz aliased to {alias} Hz");
        }
        // In-band at 48 -> 8 kHz keeps its level.
        let g = level(&resample_clip(&tone(1000.0, 48000, 0.5), 48000, 8000).unwrap(), 1000.0, 8000);
        assert!((0.97..=1.03).contains(&g), "1 kHz down: gain {g:.3}");
    }
}
