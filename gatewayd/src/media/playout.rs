//! The play queue (sans-IO): audio waiting to be sent, with marks between clips.
//!
//! The pacing task asks for one frame per 20 ms tick ([`PlayQueue::next_frame`]) and, after
//! that frame has been handed to the connection, for what was reached ([`PlayQueue::reached`]):
//! marks whose preceding audio has all been sent, and `Finished` when the queue ran dry after
//! playing. [`PlayQueue::clear`] empties it at once (barge-in); cleared marks are dropped, since
//! the audio before them will never be sent.

use std::collections::VecDeque;
use std::sync::Arc;

enum Item {
    /// A clip at the session rate and how far it has been played.
    Audio {
        samples: Arc<[i16]>,
        pos: usize,
    },
    Mark(String),
}

/// What the queue reached after a frame was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    /// All audio queued before this mark has been sent.
    Mark(String),
    /// The queue ran out of audio (reported once per run of playback).
    Finished,
}

/// Queued outgoing audio for one call.
pub struct PlayQueue {
    items: VecDeque<Item>,
    frame_samples: usize,
    /// Audio was sent since the queue was last empty.
    playing: bool,
}

impl PlayQueue {
    /// An empty queue producing frames of `frame_samples` samples.
    pub fn new(frame_samples: usize) -> PlayQueue {
        PlayQueue { items: VecDeque::new(), frame_samples, playing: false }
    }

    /// Queue a clip (samples at the session rate) behind everything already queued.
    pub fn push_audio(&mut self, samples: Arc<[i16]>) {
        if !samples.is_empty() {
            self.items.push_back(Item::Audio { samples, pos: 0 });
        }
    }

    /// Queue a mark: it is reached once everything queued before it has been sent.
    pub fn push_mark(&mut self, name: String) {
        self.items.push_back(Item::Mark(name));
    }

    /// Drop everything queued; returns how many samples were discarded.
    pub fn clear(&mut self) -> usize {
        let dropped = self
            .items
            .drain(..)
            .map(|i| match i {
                Item::Audio { samples, pos } => samples.len() - pos,
                Item::Mark(_) => 0,
            })
            .sum();
        self.playing = false;
        dropped
    }

    /// Samples of audio still queued.
    pub fn queued_samples(&self) -> usize {
        self.items.iter().map(|i| if let Item::Audio { samples, pos } = i { samples.len() - pos } else { 0 }).sum()
    }

    /// Fill `out` with the next frame (consecutive clips join without a gap; a mark or the end
    /// of the queue pads the rest of the frame with silence). False when no audio is queued
    /// before the next mark, and then `out` is left empty.
    pub fn next_frame(&mut self, out: &mut Vec<i16>) -> bool {
        out.clear();
        while out.len() < self.frame_samples {
            let Some(Item::Audio { samples, pos }) = self.items.front_mut() else { break };
            let take = (self.frame_samples - out.len()).min(samples.len() - *pos);
            out.extend_from_slice(&samples[*pos..*pos + take]);
            *pos += take;
            if *pos == samples.len() {
                self.items.pop_front();
            }
        }
        if out.is_empty() {
            return false;
        }
        out.resize(self.frame_samples, 0);
        self.playing = true;
        true
    }

    /// Marks now at the head of the queue (their audio has been sent), then `Finished` if the
    /// queue has just run dry after playing. Call after each sent frame (or each idle tick).
    pub fn reached(&mut self, into: &mut Vec<Reached>) {
        while let Some(Item::Mark(_)) = self.items.front() {
            if let Some(Item::Mark(name)) = self.items.pop_front() {
                into.push(Reached::Mark(name));
            }
        }
        if self.items.is_empty() && self.playing {
            self.playing = false;
            into.push(Reached::Finished);
        }
    }
}

impl super::mixer::Source for PlayQueue {
    fn next_frame(&mut self, out: &mut Vec<i16>) -> bool {
        PlayQueue::next_frame(self, out)
    }

    fn reached(&mut self, into: &mut Vec<Reached>) {
        PlayQueue::reached(self, into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(n: usize, v: i16) -> Arc<[i16]> {
        vec![v; n].into()
    }

    /// Run one tick: the frame sent (if any) and what was reached after it.
    fn tick(q: &mut PlayQueue) -> (Option<Vec<i16>>, Vec<Reached>) {
        let mut f = Vec::new();
        let sent = q.next_frame(&mut f).then_some(f);
        let mut r = Vec::new();
        q.reached(&mut r);
        (sent, r)
    }

    #[test]
    fn a_mark_is_reached_only_after_its_audio_was_sent() {
        let mut q = PlayQueue::new(4);
        q.push_audio(clip(10, 1));
        q.push_mark("a".into());
        q.push_audio(clip(4, 2));
        assert_eq!(tick(&mut q), (Some(vec![1; 4]), vec![]));
        assert_eq!(tick(&mut q), (Some(vec![1; 4]), vec![]));
        // The last 2 samples of the first clip, padded: the mark stops the frame.
        assert_eq!(tick(&mut q), (Some(vec![1, 1, 0, 0]), vec![Reached::Mark("a".into())]));
        assert_eq!(tick(&mut q), (Some(vec![2; 4]), vec![Reached::Finished]));
        assert_eq!(tick(&mut q), (None, vec![]));
    }

    #[test]
    fn clips_join_without_gaps() {
        let mut q = PlayQueue::new(4);
        q.push_audio(clip(3, 1));
        q.push_audio(clip(3, 2));
        assert_eq!(tick(&mut q).0, Some(vec![1, 1, 1, 2]));
        assert_eq!(tick(&mut q), (Some(vec![2, 2, 0, 0]), vec![Reached::Finished]));
    }

    #[test]
    fn clear_drops_audio_and_marks_at_once() {
        let mut q = PlayQueue::new(4);
        q.push_audio(clip(100, 1));
        q.push_mark("end".into());
        assert!(tick(&mut q).0.is_some());
        assert_eq!(q.clear(), 96);
        assert_eq!(q.queued_samples(), 0);
        assert_eq!(tick(&mut q), (None, vec![]));
    }

    #[test]
    fn a_mark_on_an_empty_queue_is_reached_at_the_next_tick() {
        let mut q = PlayQueue::new(4);
        q.push_mark("now".into());
        assert_eq!(tick(&mut q), (None, vec![Reached::Mark("now".into())]));
    }
}
