//! Call recording to a WAV file (`hound`): 16-bit PCM, two channels at the session rate,
//! left = what the caller sent, right = what the call sent to the caller, one 20 ms block
//! per pacing tick so both directions stay aligned in time.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// An open recording. Finalised (header sizes written) by [`Recorder::finish`] or on drop.
pub struct Recorder {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    path: PathBuf,
}

impl Recorder {
    /// Create `path` for a call at `rate` Hz.
    pub fn create(path: &Path, rate: u32) -> Result<Recorder, String> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Recorder { writer: Some(writer), path: path.to_path_buf() })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one block: `inbound` and `outbound` are the block's samples of each direction;
    /// a shorter side is padded with silence up to `frame` samples.
    pub fn write_block(&mut self, inbound: &[i16], outbound: &[i16], frame: usize) {
        let Some(w) = self.writer.as_mut() else { return };
        for i in 0..frame {
            let a = inbound.get(i).copied().unwrap_or(0);
            let b = outbound.get(i).copied().unwrap_or(0);
            if w.write_sample(a).and_then(|_| w.write_sample(b)).is_err() {
                tracing::warn!(file = %self.path.display(), "recording write failed; recording stopped");
                self.writer = None;
                return;
            }
        }
    }

    /// Write the header's sizes and close the file.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if let Some(w) = self.writer.take()
            && let Err(e) = w.finalize()
        {
            tracing::warn!(file = %self.path.display(), error = %e, "finalising recording failed");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_interleaved_and_padded() {
        let dir = std::env::temp_dir().join(format!("gw-rec-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("call.wav");
        let mut r = Recorder::create(&path, 8000).unwrap();
        r.write_block(&[1, 2, 3, 4], &[9], 4);
        r.finish();
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().channels, 2);
        let s: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, [1, 9, 2, 0, 3, 0, 4, 0]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
