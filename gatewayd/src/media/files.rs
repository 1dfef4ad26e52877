//! Audio files a plugin may play (`[plugins.<name>.media] files`), read once at start-up and
//! converted on first use to each session rate that asks for them.

use super::resample::resample_clip;
use dashmap::DashMap;
use std::path::Path;
use std::sync::Arc;

/// A decoded clip: mono 16-bit samples at `rate` Hz.
#[derive(Debug, Clone)]
pub struct Clip {
    pub rate: u32,
    pub samples: Arc<[i16]>,
}

/// Read a WAV file as mono 16-bit PCM (see [`decode_wav`]). Err: the path and why.
pub fn read_wav(path: &Path) -> Result<Clip, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_wav(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Decode WAV bytes as mono 16-bit PCM. Integer PCM of 8 to 32 bits and 32-bit float are
/// accepted; several channels are mixed down. Err: not WAV, an unsupported format or a
/// truncated body.
pub fn decode_wav<R: std::io::Read>(reader: R) -> Result<Clip, String> {
    let mut reader = hound::WavReader::new(reader).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<i32> = match spec.sample_format {
        hound::SampleFormat::Int => {
            let shift = spec.bits_per_sample.saturating_sub(16) as u32;
            let up = 16u32.saturating_sub(spec.bits_per_sample as u32);
            reader.samples::<i32>().map(|s| s.map(|v| (v >> shift) << up)).collect::<Result<_, _>>()
        }
        hound::SampleFormat::Float => {
            reader.samples::<f32>().map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i32)).collect::<Result<_, _>>()
        }
    }
    .map_err(|e| e.to_string())?;
    let samples: Arc<[i16]> = interleaved
        .chunks(channels)
        .map(|c| (c.iter().sum::<i32>() / c.len() as i32).clamp(i16::MIN as i32, i16::MAX as i32) as i16)
        .collect();
    Ok(Clip { rate: spec.sample_rate, samples })
}

/// Named clips of every plugin, with a cache of their conversions to session rates.
#[derive(Default)]
pub struct FileLibrary {
    /// (plugin, name) -> the clip as read.
    originals: DashMap<(String, String), Clip>,
    /// (plugin, name, rate) -> the clip at that rate.
    converted: DashMap<(String, String, u32), Arc<[i16]>>,
}

impl FileLibrary {
    /// Read `file` as `plugin`'s clip `name`.
    pub fn load(&self, plugin: &str, name: &str, file: &Path) -> Result<(), String> {
        let clip = read_wav(file)?;
        self.originals.insert((plugin.to_string(), name.to_string()), clip);
        Ok(())
    }

    /// `plugin`'s clip `name` at `rate` Hz, or why not.
    pub fn get(&self, plugin: &str, name: &str, rate: u32) -> Result<Arc<[i16]>, String> {
        let key = (plugin.to_string(), name.to_string(), rate);
        if let Some(c) = self.converted.get(&key) {
            return Ok(c.clone());
        }
        let clip = self
            .originals
            .get(&(key.0.clone(), key.1.clone()))
            .map(|c| c.clone())
            .ok_or_else(|| format!("no audio file named `{name}` in [plugins.{plugin}.media.files]"))?;
        let samples: Arc<[i16]> = resample_clip(&clip.samples, clip.rate, rate)?.into();
        self.converted.insert(key, samples.clone());
        Ok(samples)
    }
}
