//! Call recording to a WAV file (`hound`): 16-bit PCM, two channels at the session rate,
//! left = what the caller sent, right = what the call sent to the caller, one 20 ms block
//! per slot so both directions stay aligned in time.
//!
//! The media clock never touches the file: at each slot the call hands the block to
//! [`Recorder::write_block`], which only queues it (at most [`RECORD_QUEUE_BLOCKS`]; a block that
//! finds the queue full is dropped and counted by the call). A writer thread of the recording's
//! own writes the blocks and, when the recorder is finished or dropped, writes the header's
//! sizes and closes the file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

/// Blocks (20 ms each, so 5 s) waiting for the writer thread before the call drops them.
pub const RECORD_QUEUE_BLOCKS: usize = 250;

/// Stack of a writer thread, bytes (it only moves samples into a buffered file).
const WRITER_STACK: usize = 256 * 1024;

type Wav = hound::WavWriter<BufWriter<File>>;

/// An open recording, fed by the call. The file is complete once the writer thread is done
/// (see [`Recorder::finish`]).
pub struct Recorder {
    /// Interleaved blocks (caller, call, caller, call, ...).
    blocks: SyncSender<Vec<i16>>,
    path: PathBuf,
    writer: JoinHandle<RecordingSummary>,
}

/// What a writer thread did, when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSummary {
    /// Blocks written to the file.
    pub blocks: u64,
    /// The file could not be written or finalised (logged).
    pub failed: bool,
}

impl Recorder {
    /// Create `path` for a call at `rate` Hz (the header is written now) and start its writer
    /// thread. Err: the path and why it could not be created, or no thread.
    pub fn create(path: &Path, rate: u32) -> Result<Recorder, String> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = hound::WavWriter::create(path, spec).map_err(|e| format!("{}: {e}", path.display()))?;
        let (blocks, rx) = mpsc::sync_channel(RECORD_QUEUE_BLOCKS);
        let file = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("gatewayd-rec".into())
            .stack_size(WRITER_STACK)
            .spawn(move || write_all(wav, rx, &file))
            .map_err(|e| format!("{}: recording thread: {e}", path.display()))?;
        Ok(Recorder { blocks, path: path.to_path_buf(), writer })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue one block: `inbound` and `outbound` are the block's samples of each direction; a
    /// shorter side is padded with silence up to `frame` samples. Never waits: false when the
    /// queue was full (or the writer has stopped) and the block was dropped.
    pub fn write_block(&mut self, inbound: &[i16], outbound: &[i16], frame: usize) -> bool {
        let mut block = Vec::with_capacity(frame * 2);
        for i in 0..frame {
            block.push(inbound.get(i).copied().unwrap_or(0));
            block.push(outbound.get(i).copied().unwrap_or(0));
        }
        match self.blocks.try_send(block) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// No more blocks: the writer thread writes what is queued, finalises the file and ends.
    /// Join the handle to wait for the complete file (nothing on a media thread should).
    pub fn finish(self) -> JoinHandle<RecordingSummary> {
        drop(self.blocks);
        self.writer
    }
}

/// The writer thread: write every block until the recorder is gone, then finalise.
fn write_all(mut wav: Wav, blocks: mpsc::Receiver<Vec<i16>>, path: &Path) -> RecordingSummary {
    let mut summary = RecordingSummary { blocks: 0, failed: false };
    for block in blocks {
        if summary.failed {
            continue; // keep taking blocks so the call never sees a full queue for this
        }
        if let Err(error) = block.iter().try_for_each(|&s| wav.write_sample(s)) {
            tracing::warn!(file = %path.display(), %error, "recording write failed; recording stopped");
            summary.failed = true;
        } else {
            summary.blocks += 1;
        }
    }
    if let Err(error) = wav.finalize() {
        tracing::warn!(file = %path.display(), %error, "finalising recording failed");
        summary.failed = true;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-rec-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read(path: &Path) -> Vec<i16> {
        let mut reader = hound::WavReader::open(path).unwrap();
        assert_eq!((reader.spec().channels, reader.spec().sample_rate), (2, 8000));
        reader.samples::<i16>().map(Result::unwrap).collect()
    }

    #[test]
    fn blocks_go_through_the_queue_interleaved_and_padded() {
        let dir = temp_dir();
        let path = dir.join("call.wav");
        let mut r = Recorder::create(&path, 8000).unwrap();
        assert!(r.write_block(&[1, 2, 3, 4], &[9], 4));
        assert!(r.write_block(&[], &[5, 6, 7, 8], 4));
        let summary = r.finish().join().unwrap();
        assert_eq!(summary, RecordingSummary { blocks: 2, failed: false });
        assert_eq!(read(&path), [1, 9, 2, 0, 3, 0, 4, 0, 0, 5, 0, 6, 0, 7, 0, 8]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_queue_drops_blocks_without_waiting() {
        let dir = temp_dir();
        let path = dir.join("call.wav");
        // A writer that cannot run yet: its file is behind a queue that is filled directly.
        let (blocks, rx) = mpsc::sync_channel(RECORD_QUEUE_BLOCKS);
        let (go, wait) = mpsc::channel::<()>();
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = hound::WavWriter::create(&path, spec).unwrap();
        let file = path.clone();
        let writer = std::thread::spawn(move || {
            let _ = wait.recv();
            write_all(wav, rx, &file)
        });
        let mut r = Recorder { blocks, path: path.clone(), writer };
        let accepted = (0..RECORD_QUEUE_BLOCKS + 30).filter(|&n| r.write_block(&[n as i16; 2], &[0; 2], 2)).count();
        assert_eq!(accepted, RECORD_QUEUE_BLOCKS, "the excess is dropped at once");
        go.send(()).unwrap();
        let summary = r.finish().join().unwrap();
        assert_eq!(summary.blocks, RECORD_QUEUE_BLOCKS as u64);
        let samples = read(&path);
        assert_eq!(samples.len(), RECORD_QUEUE_BLOCKS * 4);
        assert_eq!(
            &samples[samples.len() - 4..],
            [RECORD_QUEUE_BLOCKS as i16 - 1, 0, RECORD_QUEUE_BLOCKS as i16 - 1, 0]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
