//! Sample-rate conversion with `rubato` (FFT resampler, anti-aliasing filter included).
//!
//! Audio played into a session (prompt files, `play-bytes`) is converted once, whole, to the
//! session's rate before it is queued ([`resample_clip`]). Audio that arrives or leaves as a
//! stream (streamed TTS into a call, a call's audio to a recogniser's tap) goes through a
//! [`StreamResampler`], which keeps the filter state between pieces of any length. Neither runs
//! on the media clock: clips are converted by the plugin's call, streams by their producer or
//! consumer.

use rubato::audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Indexing, Resampler};

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
    Ok(output[0][..produced].iter().map(|&s| to_i16(s)).collect())
}

/// Highest rate, Hz, a stream or clip may have.
pub const MAX_RATE: u32 = 192_000;

/// A streaming sample-rate converter of mono 16-bit audio (`rubato`'s FFT resampler, fed in
/// 20 ms chunks of the input rate).
///
/// [`StreamResampler::push`] takes pieces of any length and appends the output that is ready;
/// [`StreamResampler::flush`] ends the stream and appends the tail. The resampler's start-up
/// delay is trimmed, so over a whole stream output sample `i` lines up with input sample
/// `i * from / to`, and a stream of `n` input samples gives `ceil(n * to / from)` output
/// samples. While a stream runs the output lags the input by at most one input chunk (20 ms)
/// plus the filter delay (a few ms). Equal rates pass samples through untouched.
pub struct StreamResampler {
    from: u32,
    to: u32,
    /// None when the rates are equal.
    fft: Option<Fft<f32>>,
    /// Input not yet resampled (fewer samples than a chunk between calls), as f32 in -1..1.
    input: Vec<Vec<f32>>,
    /// Scratch output of one chunk.
    output: Vec<Vec<f32>>,
    /// Output samples of start-up delay still to drop.
    to_trim: usize,
    /// Input samples pushed since the stream began.
    samples_in: u64,
    /// Output samples handed out since the stream began.
    samples_out: u64,
}

impl StreamResampler {
    /// A converter from `from` Hz to `to` Hz (each 1..=[`MAX_RATE`]). Err: a rate out of
    /// range, or the resampler refused the pair.
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, String> {
        for rate in [from, to] {
            if !(1..=MAX_RATE).contains(&rate) {
                return Err(format!("rate {rate} Hz is out of range (1..={MAX_RATE})"));
            }
        }
        let fft = if from == to {
            None
        } else {
            let chunk = (from as usize / 50).max(1); // 20 ms
            Some(
                Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Input)
                    .map_err(|e| format!("resampler {from} -> {to} Hz: {e}"))?,
            )
        };
        let (input, output, to_trim) = match &fft {
            Some(f) => (
                vec![Vec::with_capacity(f.input_frames_max())],
                vec![vec![0.0; f.output_frames_max()]],
                f.output_delay(),
            ),
            None => (vec![Vec::new()], vec![Vec::new()], 0),
        };
        Ok(StreamResampler { from, to, fft, input, output, to_trim, samples_in: 0, samples_out: 0 })
    }

    /// The input rate, Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output rate, Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Take `samples` (any number) and append the output that is ready to `out`.
    pub fn push(&mut self, samples: &[i16], out: &mut Vec<i16>) -> Result<(), String> {
        self.samples_in += samples.len() as u64;
        let Some(mut fft) = self.fft.take() else {
            self.samples_out += samples.len() as u64;
            out.extend_from_slice(samples);
            return Ok(());
        };
        self.input[0].extend(samples.iter().map(|&s| s as f32 / 32768.0));
        let result = self.run_whole_chunks(&mut fft, out);
        self.fft = Some(fft);
        result
    }

    /// Resample every whole chunk of pending input.
    fn run_whole_chunks(&mut self, fft: &mut Fft<f32>, out: &mut Vec<i16>) -> Result<(), String> {
        let chunk = fft.input_frames_next();
        let mut start = 0;
        while self.input[0].len() - start >= chunk {
            let indexing = Indexing::new().input_offset(start);
            let produced = Self::process(fft, &self.input, &mut self.output, Some(&indexing));
            let produced = produced.inspect_err(|_| {
                self.input[0].drain(..start);
            })?;
            start += chunk;
            self.emit(produced, None, out);
        }
        self.input[0].drain(..start);
        Ok(())
    }

    /// End the stream: append the rest of the output (the last partial chunk and the filter's
    /// tail) to `out`. The resampler then starts a new stream.
    pub fn flush(&mut self, out: &mut Vec<i16>) -> Result<(), String> {
        let expected = (self.samples_in * self.to as u64).div_ceil(self.from as u64);
        let mut result = Ok(());
        if let Some(mut fft) = self.fft.take() {
            result = self.run_tail(&mut fft, expected, out);
            fft.reset();
            self.input[0].clear();
            self.to_trim = fft.output_delay();
            self.fft = Some(fft);
        }
        self.samples_in = 0;
        self.samples_out = 0;
        result
    }

    /// Resample the last partial chunk (the pending input) and the filter's tail, up to
    /// `expected` output samples in all.
    fn run_tail(&mut self, fft: &mut Fft<f32>, expected: u64, out: &mut Vec<i16>) -> Result<(), String> {
        // The last partial chunk, then silence until the delayed output has all come out.
        let mut indexing = Indexing::new().partial_len(self.input[0].len());
        // Each round yields about a chunk; the delay is a few chunks at most.
        let mut rounds = 0;
        while self.samples_out < expected {
            rounds += 1;
            if rounds > 64 {
                return Err(format!("resampler {} -> {} Hz: the tail did not come out", self.from, self.to));
            }
            let produced = Self::process(fft, &self.input, &mut self.output, Some(&indexing))?;
            indexing = Indexing::new().partial_len(0);
            self.emit(produced, Some(expected), out);
        }
        Ok(())
    }

    /// Run one chunk; returns the output samples written to `output[0]`.
    fn process(
        fft: &mut Fft<f32>,
        input: &[Vec<f32>],
        output: &mut [Vec<f32>],
        indexing: Option<&Indexing>,
    ) -> Result<usize, String> {
        let in_len = input[0].len();
        let out_len = output[0].len();
        let in_adapter = SequentialSliceOfVecs::new(input, 1, in_len).map_err(|e| e.to_string())?;
        let mut out_adapter = SequentialSliceOfVecs::new_mut(output, 1, out_len).map_err(|e| e.to_string())?;
        let (_, produced) =
            fft.process_into_buffer(&in_adapter, &mut out_adapter, indexing).map_err(|e| format!("resampling: {e}"))?;
        Ok(produced)
    }

    /// Append the first `produced` samples of the scratch output, less the start-up delay still
    /// to trim, up to `limit` samples in all when given.
    fn emit(&mut self, produced: usize, limit: Option<u64>, out: &mut Vec<i16>) {
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        let mut take = produced - skip;
        if let Some(limit) = limit {
            take = take.min(limit.saturating_sub(self.samples_out) as usize);
        }
        out.extend(self.output[0][skip..skip + take].iter().map(|&s| to_i16(s)));
        self.samples_out += take as u64;
    }
}

/// A sample in -1..1 as 16-bit, rounded and clipped.
fn to_i16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
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

    /// `x` pushed in pieces of the given sizes (cycled), then flushed.
    fn stream(x: &[i16], from: u32, to: u32, pieces: &[usize]) -> Vec<i16> {
        let mut r = StreamResampler::new(from, to).unwrap();
        let mut out = Vec::new();
        let mut rest = x;
        for &n in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(n.min(rest.len()));
            r.push(piece, &mut out).unwrap();
            rest = tail;
        }
        r.flush(&mut out).unwrap();
        out
    }

    #[test]
    fn streaming_in_odd_pieces_matches_the_rate_ratio_and_keeps_the_level() {
        for (from, to) in [(8000, 16000), (24000, 8000), (16000, 8000), (8000, 24000), (48000, 16000)] {
            let x = tone(1000.0, from, 0.5);
            for pieces in [&[1usize][..], &[7, 333, 50], &[4096], &[160]] {
                if pieces == [1] && from > 8000 {
                    continue; // one sample at a time is slow in debug builds; 8 kHz covers it
                }
                let y = stream(&x, from, to, pieces);
                let expected = (x.len() as u64 * to as u64).div_ceil(from as u64) as usize;
                assert_eq!(y.len(), expected, "{from} -> {to} in pieces {pieces:?}");
                let g = level(&y, 1000.0, to);
                assert!((0.97..=1.03).contains(&g), "{from} -> {to} in pieces {pieces:?}: gain {g:.3}");
            }
        }
    }

    #[test]
    fn a_stream_matches_the_whole_clip_conversion() {
        let x = tone(700.0, 24000, 0.3);
        let whole = resample_clip(&x, 24000, 8000).unwrap();
        let streamed = stream(&x, 24000, 8000, &[1234, 17]);
        assert_eq!(streamed.len(), whole.len());
        let worst = whole.iter().zip(&streamed).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(worst <= 2, "largest difference {worst}");
    }

    #[test]
    fn output_comes_out_while_the_stream_runs_and_flush_restarts_it() {
        let mut r = StreamResampler::new(8000, 16000).unwrap();
        let mut out = Vec::new();
        for _ in 0..10 {
            r.push(&[1000; 160], &mut out).unwrap();
        }
        // At most one input chunk (20 ms) plus the filter delay is held back.
        assert!(out.len() >= 2 * 1600 - 2 * 160 - 512, "{} samples out of 3200 while streaming", out.len());
        r.flush(&mut out).unwrap();
        assert_eq!(out.len(), 3200);
        out.clear();
        r.push(&[0; 80], &mut out).unwrap();
        r.flush(&mut out).unwrap();
        assert_eq!(out, vec![0; 160], "a new stream after flush");
        let mut same = StreamResampler::new(8000, 8000).unwrap();
        same.push(&[1, 2, 3], &mut out).unwrap();
        assert_eq!(&out[160..], [1, 2, 3]);
        assert!(StreamResampler::new(0, 8000).is_err() && StreamResampler::new(8000, 200_000).is_err());
    }
}
