//! `gatewayd:plugin/media`: a plugin's calls on its media routes, checked against the calling
//! plugin and handed to the media engine (`crate::media`); speech on calls (`transcribe`,
//! `say`) to `crate::speech::calls`.

use super::super::bindings::gatewayd::plugin::media;
use super::HostState;
use crate::bus::ConnId;

impl media::Host for HostState {
    fn answer(&mut self, id: ConnId) -> Result<(), String> {
        self.services.media.answer(id, &self.name)
    }

    fn play_file(&mut self, id: ConnId, name: String) -> Result<(), String> {
        self.services.media.play_file(id, &self.name, &name)
    }

    fn play_bytes(&mut self, id: ConnId, audio: Vec<u8>, codec: String, rate: u32) -> Result<(), String> {
        self.services.media.play_bytes(id, &self.name, &audio, &codec, rate)
    }

    fn clear(&mut self, id: ConnId) -> Result<(), String> {
        // Queued utterances go first (so none starts in their place), then the call's audio,
        // which ends the utterance playing and, with it, its vendor request.
        self.services.speech.clear(id);
        self.services.media.clear(id, &self.name)
    }

    fn mark(&mut self, id: ConnId, name: String) -> Result<(), String> {
        self.services.media.mark(id, &self.name, name)
    }

    fn send_dtmf(&mut self, id: ConnId, digits: String, duration_ms: u32) -> Result<(), String> {
        self.services.media.send_dtmf(id, &self.name, &digits, duration_ms)
    }

    fn echo(&mut self, id: ConnId, on: bool) -> Result<(), String> {
        self.services.media.echo(id, &self.name, on)
    }

    fn record(&mut self, id: ConnId, on: bool) -> Result<String, String> {
        self.services.media.record(id, &self.name, on)
    }

    fn hangup(&mut self, id: ConnId) -> Result<(), String> {
        self.services.media.hangup(id, &self.name)
    }

    fn transcribe(&mut self, id: ConnId, options: media::TranscribeOptions) -> Result<(), String> {
        if !self.plugin.upgrade().is_some_and(|p| p.hears_speech()) {
            return Err("transcribe needs the speech-handler export (rebuild the plugin with a current SDK)".into());
        }
        let options = crate::speech::calls::TranscribeOptions {
            provider: options.provider,
            language: options.language,
            interim_results: options.interim_results,
            keyterms: options.keyterms,
        };
        self.services.speech.transcribe(id, &self.name, options)
    }

    fn stop_transcribing(&mut self, id: ConnId) -> Result<bool, String> {
        self.services.speech.stop_transcribing(id, &self.name)
    }

    fn said_audio(&mut self, id: ConnId, mark: String) -> Option<Vec<u8>> {
        self.services.media.said_audio(id, &self.name, &mark)
    }

    fn feed_caller_audio(&mut self, id: ConnId, audio: Vec<u8>, codec: String, rate: u32) -> Result<(), String> {
        self.services.media.feed_caller_audio(id, &self.name, &audio, &codec, rate)
    }

    fn say(&mut self, id: ConnId, text: String, options: media::SayOptions) -> Result<(), String> {
        let options =
            crate::speech::calls::SayOptions { provider: options.provider, voice: options.voice, mark: options.mark };
        self.services.speech.say(id, &self.name, text, options)
    }
}
