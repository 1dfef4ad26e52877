//! The caller's audio and what the caller heard: WAV files to and from 20 ms mu-law frames at
//! 8 kHz, test tones, the 20 ms send schedule and the inter-arrival figures of received frames.
//! Conversions are the daemon's own (`gatewayd::media`: WAV reading, rubato resampling, G.711).

use super::phone::FRAME_BYTES;
use crate::report::Latencies;
use gatewayd::media::codec::{linear_to_ulaw, ulaw_to_linear};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// One 20 ms frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames per second.
pub const FRAMES_PER_SEC: u64 = 50;
/// The phone's sample rate.
pub const RATE: u32 = 8000;
/// mu-law silence (the code of 0).
pub const MULAW_SILENCE: u8 = 0xFF;
/// A gap between two received frames this long or longer is reported (two frames).
pub const LONG_GAP: Duration = Duration::from_millis(40);

/// A WAV file (any rate, integer or float samples, channels mixed down) as 20 ms mu-law frames
/// at 8 kHz; the last frame is padded with silence.
pub fn wav_to_frames(path: &Path) -> anyhow::Result<Vec<[u8; FRAME_BYTES]>> {
    let clip = gatewayd::media::files::read_wav(path).map_err(|e| anyhow::anyhow!("--wav: {e}"))?;
    let samples = gatewayd::media::resample::resample_clip(&clip.samples, clip.rate, RATE)
        .map_err(|e| anyhow::anyhow!("--wav {}: {e}", path.display()))?;
    Ok(pcm_to_frames(&samples))
}

/// 8 kHz samples as mu-law frames, the last one padded with silence.
pub fn pcm_to_frames(samples: &[i16]) -> Vec<[u8; FRAME_BYTES]> {
    samples
        .chunks(FRAME_BYTES)
        .map(|c| {
            let mut f = [MULAW_SILENCE; FRAME_BYTES];
            for (o, &s) in f.iter_mut().zip(c) {
                *o = linear_to_ulaw(s);
            }
            f
        })
        .collect()
}

/// One second (50 frames) of a sine of `hz` (whole Hz, so the second loops without a click)
/// at a quarter of full scale; `hz` 0 = silence.
pub fn tone_second(hz: u32) -> Vec<[u8; FRAME_BYTES]> {
    let samples: Vec<i16> = (0..RATE)
        .map(|n| {
            if hz == 0 {
                0
            } else {
                (8192.0 * (2.0 * std::f64::consts::PI * hz as f64 * n as f64 / RATE as f64).sin()) as i16
            }
        })
        .collect();
    pcm_to_frames(&samples)
}

/// Write mu-law bytes as a 16-bit PCM WAV file at 8 kHz.
pub fn write_wav(path: &Path, mulaw: &[u8]) -> anyhow::Result<()> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: RATE, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?;
    for &b in mulaw {
        w.write_sample(ulaw_to_linear(b))?;
    }
    w.finalize()?;
    Ok(())
}

/// The send schedule of one stream: frame `k` (from 0) is due at `first + k * 20 ms`, on an
/// absolute clock: a late send does not push the frames after it back.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub first: Instant,
}

impl Schedule {
    pub fn due(&self, k: u64) -> Instant {
        self.first + FRAME * k as u32
    }

    /// The frame index whose slot holds `offset` after the first (`--dtmf-after-ms`, …).
    pub fn frame_at(offset: Duration) -> u64 {
        (offset.as_nanos() / FRAME.as_nanos()) as u64
    }
}

/// How late each send was against its slot: the largest, and how many were over a frame.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Lateness {
    pub max_us: u64,
    pub over_one_frame: u64,
}

impl Lateness {
    pub fn record(&mut self, due: Instant, sent: Instant) {
        let late = sent.saturating_duration_since(due);
        self.max_us = self.max_us.max(late.as_micros() as u64);
        if late > FRAME {
            self.over_one_frame += 1;
        }
    }

    pub fn merge(&mut self, other: &Lateness) {
        self.max_us = self.max_us.max(other.max_us);
        self.over_one_frame += other.over_one_frame;
    }
}

/// Inter-arrival figures of the frames a stream received inside a window.
#[derive(Default)]
pub struct Arrivals {
    /// |gap - 20 ms| between consecutive frames.
    pub jitter: Latencies,
    /// Gaps of [`LONG_GAP`] or more.
    pub long_gaps: u64,
    /// The longest gap.
    pub max_gap: Duration,
    /// Frames in the window.
    pub frames: u64,
    /// Frames per second of the window (second `i` = `[start + i s, start + (i+1) s)`).
    pub per_second: Vec<u64>,
}

impl Arrivals {
    /// Figures of `times` (arrival instants, in order) between `start` and `end`.
    pub fn of(times: &[Instant], start: Instant, end: Instant) -> Arrivals {
        let seconds = end.saturating_duration_since(start).as_secs_f64().ceil() as usize;
        let mut a = Arrivals { per_second: vec![0; seconds], ..Arrivals::default() };
        let mut last: Option<Instant> = None;
        for &t in times.iter().filter(|&&t| t >= start && t < end) {
            a.frames += 1;
            let s = (t - start).as_secs() as usize;
            if let Some(c) = a.per_second.get_mut(s) {
                *c += 1;
            }
            if let Some(l) = last {
                let gap = t - l;
                a.jitter.record(gap.abs_diff(FRAME));
                a.max_gap = a.max_gap.max(gap);
                if gap >= LONG_GAP {
                    a.long_gaps += 1;
                }
            }
            last = Some(t);
        }
        a
    }

    /// Add another stream's figures (per-second counts added slot by slot).
    pub fn merge(&mut self, other: &Arrivals) {
        self.jitter.merge(&other.jitter);
        self.long_gaps += other.long_gaps;
        self.max_gap = self.max_gap.max(other.max_gap);
        self.frames += other.frames;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (s, o) in self.per_second.iter_mut().zip(&other.per_second) {
            *s += o;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_becomes_mulaw_frames_padded_with_silence() {
        let frames = pcm_to_frames(&[0i16; 170]);
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().flatten().all(|&b| b == MULAW_SILENCE));
        let frames = pcm_to_frames(&[8000, -8000]);
        assert_eq!(frames.len(), 1);
        // G.711 round trip within a quantisation step.
        assert!((ulaw_to_linear(frames[0][0]) - 8000).abs() < 300);
        assert!((ulaw_to_linear(frames[0][1]) + 8000).abs() < 300);
        assert!(pcm_to_frames(&[]).is_empty());
    }

    #[test]
    fn wav_files_of_any_rate_become_8_khz_frames_and_heard_audio_is_written_back() {
        let dir = gatewayd_e2e::tempdir::TempDir::new("loadtool-twilio-wav");
        // 0.5 s of a 400 Hz tone at 16 kHz, stereo.
        let input = dir.path().join("in.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&input, spec).unwrap();
        for n in 0..8000 {
            let s = (8000.0 * (2.0 * std::f64::consts::PI * 400.0 * n as f64 / 16000.0).sin()) as i16;
            w.write_sample(s).unwrap();
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let frames = wav_to_frames(&input).unwrap();
        assert_eq!(frames.len(), 25, "0.5 s = 25 frames of 20 ms");
        // The tone survives: after start-up, the decoded peak is near the input's.
        let pcm: Vec<i16> = frames.iter().flatten().map(|&b| ulaw_to_linear(b)).collect();
        let peak = pcm[800..3200].iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((7000..9000).contains(&peak), "peak {peak}");

        let out = dir.path().join("out.wav");
        let bytes: Vec<u8> = frames.iter().flatten().copied().collect();
        write_wav(&out, &bytes).unwrap();
        let r = hound::WavReader::open(&out).unwrap();
        assert_eq!(
            r.spec(),
            hound::WavSpec {
                channels: 1,
                sample_rate: 8000,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int
            }
        );
        let back: Vec<i16> = r.into_samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back, pcm);
        assert!(wav_to_frames(&dir.path().join("missing.wav")).is_err());
    }

    #[test]
    fn a_tone_second_loops_without_a_step_and_zero_hz_is_silence() {
        assert!(tone_second(0).iter().flatten().all(|&b| b == MULAW_SILENCE));
        let t = tone_second(400);
        assert_eq!(t.len(), 50);
        let pcm: Vec<i16> = t.iter().flatten().map(|&b| ulaw_to_linear(b)).collect();
        // The last sample leads into the first one as any two neighbours do.
        let step = (pcm[pcm.len() - 1] as i32 - pcm[0] as i32).abs();
        let max_step = pcm.windows(2).map(|w| (w[1] as i32 - w[0] as i32).abs()).max().unwrap();
        assert!(step <= max_step + 300, "{step} vs {max_step}");
    }

    #[test]
    fn the_schedule_is_absolute_and_lateness_is_measured_against_it() {
        let first = Instant::now();
        let s = Schedule { first };
        assert_eq!(s.due(0), first);
        assert_eq!(s.due(50), first + Duration::from_secs(1));
        assert_eq!(Schedule::frame_at(Duration::from_millis(1000)), 50);
        assert_eq!(Schedule::frame_at(Duration::from_millis(1019)), 50);
        let mut l = Lateness::default();
        l.record(s.due(1), s.due(1) + Duration::from_millis(3));
        // A stalled sender is late for every frame it missed (the slots stay put), and early
        // counts as on time.
        l.record(s.due(2), s.due(2) + Duration::from_millis(45));
        l.record(s.due(3), s.due(2) + Duration::from_millis(45));
        l.record(s.due(4), s.due(2) + Duration::from_millis(45));
        l.record(s.due(5), s.due(4));
        assert_eq!((l.max_us, l.over_one_frame), (45_000, 2));
    }

    #[test]
    fn arrivals_give_jitter_long_gaps_and_per_second_counts_inside_the_window() {
        let start = Instant::now();
        let ms = |m: u64| start + Duration::from_millis(m);
        // Before the window, then 20 ms apart, one 25 ms gap, one 60 ms gap, one in second 1.
        let times = [start - Duration::from_millis(5), ms(0), ms(20), ms(40), ms(65), ms(125), ms(1000), ms(2500)];
        let a = Arrivals::of(&times, start, ms(2000));
        assert_eq!(a.frames, 6);
        assert_eq!(a.per_second, vec![5, 1]);
        assert_eq!(a.long_gaps, 2, "60 ms and 875 ms");
        assert_eq!(a.max_gap, Duration::from_millis(875));
        // |gaps - 20|: 0, 0, 5, 40, 855 ms.
        let mut all = Arrivals::default();
        all.merge(&a);
        all.merge(&Arrivals::of(&[ms(0), ms(21)], start, ms(3000)));
        assert_eq!(all.frames, 8);
        assert_eq!(all.per_second, vec![7, 1, 0]);
        assert_eq!(all.long_gaps, 2);
    }
}
