//! `gatewayd:plugin/media`: a plugin's calls on its media routes, checked against the calling
//! plugin and handed to the media engine (`crate::media`).

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
}
