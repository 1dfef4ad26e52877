//! DTMF tones (ITU-T Q.23): each digit is the sum of a low-group and a high-group sine.
//! `send-dtmf` queues them as audio, in band, like a telephone keypad.

use std::f64::consts::PI;

/// Silence between two digits of a string, ms (Q.24 asks for at least 40 ms).
pub const INTER_DIGIT_MS: u32 = 60;
/// Longest tone one digit may have, ms (the `ivr.md` limit for DTMF sent by the server).
pub const MAX_DURATION_MS: u32 = 1000;
/// Shortest tone, ms (Q.24: at least 40 ms to be recognised).
pub const MIN_DURATION_MS: u32 = 40;

/// The (low, high) frequencies of a DTMF digit: `0-9`, `*`, `#`, `A-D`.
pub fn frequencies(digit: char) -> Option<(f64, f64)> {
    let (row, col) = match digit.to_ascii_uppercase() {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some(([697.0, 770.0, 852.0, 941.0][row], [1209.0, 1336.0, 1477.0, 1633.0][col]))
}

/// The tones of `digits`, each `duration_ms` long and followed by [`INTER_DIGIT_MS`] of
/// silence, at `rate` Hz. Errors name the first invalid digit or a duration out of range.
pub fn tones(digits: &str, duration_ms: u32, rate: u32) -> Result<Vec<i16>, String> {
    if !(MIN_DURATION_MS..=MAX_DURATION_MS).contains(&duration_ms) {
        return Err(format!("duration must be {MIN_DURATION_MS}..={MAX_DURATION_MS} ms, not {duration_ms}"));
    }
    if digits.is_empty() {
        return Err("no digits".into());
    }
    let tone_len = (rate as u64 * duration_ms as u64 / 1000) as usize;
    let gap_len = (rate * INTER_DIGIT_MS / 1000) as usize;
    let mut out = Vec::with_capacity(digits.len() * (tone_len + gap_len));
    for d in digits.chars() {
        let (lo, hi) = frequencies(d).ok_or_else(|| format!("`{d}` is not a DTMF digit (0-9, *, #, A-D)"))?;
        out.extend((0..tone_len).map(|i| {
            let t = i as f64 / rate as f64;
            // Each tone at about -9 dBm0-ish: 0.35 of full scale, sum stays below clipping.
            (32767.0 * 0.35 * ((2.0 * PI * lo * t).sin() + (2.0 * PI * hi * t).sin())) as i16
        }));
        out.extend(std::iter::repeat_n(0, gap_len));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goertzel power of `freq` in `x`.
    fn power(x: &[i16], freq: f64, rate: u32) -> f64 {
        let k = 2.0 * (2.0 * PI * freq / rate as f64).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = v as f64 + k * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - k * s1 * s2
    }

    #[test]
    fn each_digit_has_its_two_frequencies_and_no_other() {
        let all = [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0];
        for d in "0123456789*#ABCD".chars() {
            let x = tones(&d.to_string(), 100, 8000).unwrap();
            assert_eq!(x.len(), 800 + 480);
            let (lo, hi) = frequencies(d).unwrap();
            let tone = &x[..800];
            let strongest: Vec<f64> = {
                let mut v: Vec<(f64, f64)> = all.iter().map(|&f| (f, power(tone, f, 8000))).collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                v.iter().take(2).map(|p| p.0).collect()
            };
            assert!(strongest.contains(&lo) && strongest.contains(&hi), "{d}: {strongest:?}");
        }
        assert!(tones("1", 1001, 8000).is_err());
        assert!(tones("E", 100, 8000).unwrap_err().contains("`E`"));
    }
}
