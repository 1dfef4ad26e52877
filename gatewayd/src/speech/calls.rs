//! Speech on calls (issue #11 item 3): what `media.transcribe`, `media.stop-transcribing` and
//! `media.say` (plugin-api/wit/gatewayd.wit) do for a protocol plugin's call.
//!
//! - Transcription: the call's caller audio, as G.711 mu-law at 8000 Hz (a `pcmu` route's
//!   frames untouched, [`MediaEngine::tap_mulaw`]; any other route's decoded audio at 8000 Hz,
//!   [`MediaEngine::tap`], encoded to mu-law: a phone line's quality), is pumped into an
//!   [`SttStream`] by a task on the main runtime (on the media runtime it queued behind the
//!   calls' sockets on the media thread: docs/benchmarks.md, Speech); the pump only moves
//!   frames between bounded queues (`try_send`: a full queue drops and counts, the call never
//!   waits). The stream's events become [`CallSpeechEvent`]s, delivered
//!   to the plugin in order as media events (`speech-handler.on-speech`).
//! - Speech: `say` queues an utterance (at most [`MAX_QUEUED_SAYS`]); one task per call speaks
//!   them in order, each a [`TtsRequest`] whose audio streams into the call
//!   ([`MediaEngine::open_stream`]) as it arrives, paced by the call's clock. `clear` (barge-in)
//!   drops the queued utterances and the call drops the playing stream; the task sees it and
//!   drops the request, which closes the vendor connection (the vendor's cancel).
//!
//! Calls with speech are registered by the WebSocket server with their route's provider
//! choice ([`Calls::register`]) and forgotten when the connection closes.

use super::metrics::SpeechMetrics;
use super::providers::Providers;
use super::stt::{SttInput, SttOptions, SttStream, SttStreamEvent};
use super::tts::{TtsOptions, TtsOutput, TtsRequest};
use super::{ProviderKind, SpeechFailure};
use crate::bus::ConnId;
use crate::config::SpeechChoice;
use crate::media::{MediaEngine, MediaEvent};
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Utterances of one call waiting to be spoken, besides the one speaking.
pub const MAX_QUEUED_SAYS: usize = 16;
/// Longest `say` text, in bytes.
pub const MAX_SAY_BYTES: usize = 4096;
/// Most keyterms of one transcription.
pub const MAX_KEYTERMS: usize = 100;
/// Longest keyterm, in bytes.
pub const MAX_KEYTERM_BYTES: usize = 128;
/// Caller frames queued between the pump and the stream (5 s of 20 ms frames). The stream
/// drains its input at once, even while (re)connecting, so this only absorbs a busy runtime.
pub const STT_INPUT_FRAMES: usize = 250;
/// Events of one stream queued for the pump (a few per second arrive).
pub const STT_EVENT_QUEUE: usize = 256;

/// A recognised span, as the plugin gets it (`speech-events.transcript`).
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Will not change; false: interim.
    pub is_final: bool,
    /// The last final of an utterance.
    pub speech_final: bool,
    /// 0.0 to 1.0.
    pub confidence: f32,
    /// The language detected, when the provider reports one.
    pub language: Option<String>,
    /// Start, in ms of the transcription's audio.
    pub start_ms: u32,
    /// Length, in ms.
    pub duration_ms: u32,
}

/// What speech on a call reports to its plugin (`speech-events.speech-event`).
#[derive(Debug, Clone, PartialEq)]
pub enum CallSpeechEvent {
    SpeechStarted,
    Transcript(Transcript),
    UtteranceEnd,
    /// Transcription failed and stopped.
    SttError(SpeechFailure),
    /// Transcription ended after `stop-transcribing` (or the call's end).
    Stopped,
    /// An utterance failed.
    TtsError(SpeechFailure),
}

/// How `transcribe` recognises (the WIT record `transcribe-options`, checked).
#[derive(Debug, Clone, Default)]
pub struct TranscribeOptions {
    pub provider: Option<String>,
    pub language: Option<String>,
    pub interim_results: bool,
    pub keyterms: Vec<String>,
}

/// How `say` speaks (the WIT record `say-options`).
#[derive(Debug, Clone, Default)]
pub struct SayOptions {
    pub provider: Option<String>,
    pub voice: Option<String>,
    pub mark: Option<String>,
}

/// A running transcription: dropping `stop` (or sending on it) ends it cleanly.
struct Transcription {
    stop: Option<oneshot::Sender<()>>,
    generation: u64,
}

/// The speech state of one call.
struct CallEntry {
    plugin: Arc<str>,
    route: SpeechChoice,
    transcription: Option<Transcription>,
    says: Option<mpsc::Sender<Say>>,
    /// Bumped by `clear`: utterances queued under an older value are dropped.
    say_generation: Arc<AtomicU64>,
}

/// One queued utterance.
struct Say {
    provider: Arc<super::Provider>,
    options: TtsOptions,
    text: String,
    mark: Option<String>,
    generation: u64,
}

/// Speech of every call. One per daemon.
pub struct Calls {
    providers: Arc<Providers>,
    media: Arc<MediaEngine>,
    metrics: Arc<SpeechMetrics>,
    calls: Arc<DashMap<ConnId, CallEntry>>,
    generations: AtomicU64,
}

impl Calls {
    pub fn new(providers: Arc<Providers>, media: Arc<MediaEngine>, metrics: Arc<SpeechMetrics>) -> Calls {
        Calls { providers, media, metrics, calls: Arc::default(), generations: AtomicU64::new(1) }
    }

    /// Speech for a daemon with `config`: an empty provider registry (providers are loaded with
    /// the plugins) whose outbound TLS trusts the platform's roots and `[network]
    /// extra_ca_file`, with `[speech]`'s defaults. Errors: the CA file, the Wasm engine.
    pub fn from_config(
        config: &crate::config::Config,
        media: Arc<MediaEngine>,
        metrics: Arc<SpeechMetrics>,
    ) -> anyhow::Result<Calls> {
        let providers = Providers::new(provider_tls(config)?)?;
        providers.set_defaults(config.speech.clone());
        Ok(Calls::new(Arc::new(providers), media, metrics))
    }

    /// The provider registry.
    pub fn providers(&self) -> &Arc<Providers> {
        &self.providers
    }

    /// Call `id` of `plugin`, on a media route whose `speech` choice is `route`.
    pub fn register(&self, id: ConnId, plugin: &str, route: SpeechChoice) {
        self.calls.insert(
            id,
            CallEntry {
                plugin: plugin.into(),
                route,
                transcription: None,
                says: None,
                say_generation: Arc::new(AtomicU64::new(0)),
            },
        );
    }

    /// Forget call `id`: its transcription is closed, its queued utterances dropped.
    pub fn unregister(&self, id: ConnId) {
        self.calls.remove(&id);
    }

    fn entry(&self, id: ConnId, plugin: &str) -> Result<dashmap::mapref::one::RefMut<'_, ConnId, CallEntry>, String> {
        match self.calls.get_mut(&id) {
            Some(e) if &*e.plugin == plugin => Ok(e),
            _ => Err(format!("connection {id} is not a call on one of this plugin's media routes")),
        }
    }

    /// Start transcribing call `id` of `plugin`. Err: not its answered call, bad options, no
    /// such provider, already transcribing.
    pub fn transcribe(&self, id: ConnId, plugin: &str, options: TranscribeOptions) -> Result<(), String> {
        check_keyterms(&options.keyterms)?;
        if options.language.as_ref().is_some_and(|l| l.is_empty() || l.len() > 35) {
            return Err("language must be a BCP-47 tag of 1 to 35 bytes".into());
        }
        let mut entry = self.entry(id, plugin)?;
        if entry.transcription.is_some() {
            return Err(format!("call {id} is already being transcribed"));
        }
        let provider = self.providers.choose(ProviderKind::Stt, options.provider.as_deref(), &entry.route)?;
        let events_to_plugin = self.media.event_sender(id, plugin)?;
        let tap = match self.media.format(id) {
            Some(f) if f.codec == crate::media::format::CodecName::Pcmu => CallerAudio::Wire(self.media.tap_mulaw(id)?),
            _ => CallerAudio::Pcm(Box::new(self.media.tap(id, 8000)?)),
        };
        let (input_tx, input_rx) = mpsc::channel(STT_INPUT_FRAMES);
        let (events_tx, events_rx) = mpsc::channel(STT_EVENT_QUEUE);
        let stt_options = SttOptions {
            language: options.language,
            model: None,
            interim_results: options.interim_results,
            endpointing_ms: None,
            utterance_end_ms: None,
            keyterms: options.keyterms,
            extra: Vec::new(),
        };
        let stream = SttStream::start(&provider, stt_options, input_rx, events_tx);
        let (stop_tx, stop_rx) = oneshot::channel();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        entry.transcription = Some(Transcription { stop: Some(stop_tx), generation });
        drop(entry);
        let pump = Pump {
            provider: provider.name().to_string(),
            stream,
            tap: Some(tap),
            input: input_tx,
            events: events_rx,
            to_plugin: events_to_plugin,
            metrics: self.metrics.clone(),
            dropped_audio: 0,
        };
        let done = Done { calls: self.calls.clone(), id, generation };
        tokio::spawn(pump.run(stop_rx, done));
        Ok(())
    }

    /// Stop transcribing call `id`: the provider sends its last results, then `stopped`.
    /// Returns false when it was not being transcribed.
    pub fn stop_transcribing(&self, id: ConnId, plugin: &str) -> Result<bool, String> {
        let mut entry = self.entry(id, plugin)?;
        Ok(match entry.transcription.as_mut().and_then(|t| t.stop.take()) {
            Some(stop) => {
                let _ = stop.send(());
                true
            }
            None => false,
        })
    }

    /// Queue `text` to be spoken into call `id` of `plugin`. Err: not its answered call, bad
    /// text, no such provider, [`MAX_QUEUED_SAYS`] already waiting.
    pub fn say(&self, id: ConnId, plugin: &str, text: String, options: SayOptions) -> Result<(), String> {
        if text.trim().is_empty() || text.len() > MAX_SAY_BYTES {
            return Err(format!("text must be 1 to {MAX_SAY_BYTES} bytes, not blank"));
        }
        if options.voice.as_ref().is_some_and(|v| v.is_empty() || v.len() > 256) {
            return Err("voice must be 1 to 256 bytes".into());
        }
        if options.mark.as_ref().is_some_and(|m| m.len() > 256) {
            return Err("mark must be at most 256 bytes".into());
        }
        let mut entry = self.entry(id, plugin)?;
        if self.media.stats(id).is_none() {
            return Err(format!("call {id} is not answered"));
        }
        let provider = self.providers.choose(ProviderKind::Tts, options.provider.as_deref(), &entry.route)?;
        let say = Say {
            provider,
            options: TtsOptions {
                voice: options.voice.unwrap_or_default(),
                model: None,
                language: None,
                speed: None,
                extra: Vec::new(),
            },
            text,
            mark: options.mark,
            generation: entry.say_generation.load(Ordering::Acquire),
        };
        let queue = match &entry.says {
            Some(q) if !q.is_closed() => q.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(MAX_QUEUED_SAYS);
                let speaker = Speaker {
                    id,
                    media: self.media.clone(),
                    to_plugin: self.media.event_sender(id, plugin)?,
                    metrics: self.metrics.clone(),
                    generation: entry.say_generation.clone(),
                };
                tokio::spawn(speaker.run(rx));
                entry.says = Some(tx.clone());
                tx
            }
        };
        queue.try_send(say).map_err(|_| format!("{MAX_QUEUED_SAYS} utterances are already waiting on call {id}"))
    }

    /// Barge-in on call `id`: drop its queued utterances (the caller of this also clears the
    /// call's audio, which ends the one playing and cancels its vendor request).
    pub fn clear(&self, id: ConnId) {
        if let Some(entry) = self.calls.get(&id) {
            entry.say_generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A handle a finished pump uses to forget its transcription (when still the current one).
struct Done {
    calls: Arc<DashMap<ConnId, CallEntry>>,
    id: ConnId,
    generation: u64,
}

impl Done {
    fn done(self) {
        if let Some(mut e) = self.calls.get_mut(&self.id)
            && e.transcription.as_ref().is_some_and(|t| t.generation == self.generation)
        {
            e.transcription = None;
        }
    }
}

/// The TLS client configuration of speech providers' outbound connections: the platform's
/// roots plus `[network] extra_ca_file`.
pub fn provider_tls(config: &crate::config::Config) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(crate::net::tls::client_config(true, config.network.extra_ca_file.as_deref())?)
}

fn check_keyterms(keyterms: &[String]) -> Result<(), String> {
    if keyterms.len() > MAX_KEYTERMS {
        return Err(format!("at most {MAX_KEYTERMS} keyterms"));
    }
    if keyterms.iter().any(|k| k.is_empty() || k.len() > MAX_KEYTERM_BYTES) {
        return Err(format!("a keyterm must be 1 to {MAX_KEYTERM_BYTES} bytes"));
    }
    Ok(())
}

/// Moves a call's audio into its stream and the stream's events to the plugin.
struct Pump {
    provider: String,
    stream: SttStream,
    tap: Option<CallerAudio>,
    input: mpsc::Sender<SttInput>,
    events: mpsc::Receiver<SttStreamEvent>,
    to_plugin: mpsc::UnboundedSender<MediaEvent>,
    metrics: Arc<SpeechMetrics>,
    dropped_audio: u64,
}

impl Pump {
    /// Run until the stream ends; `done` forgets the transcription before its last event
    /// (`stopped`, `stt-error`) is delivered, so the plugin may start another at once.
    async fn run(mut self, mut stop: oneshot::Receiver<()>, done: Done) {
        let mut done = Some(done);
        let _open = self.metrics.opened(&self.provider, "stt");
        let started = std::time::Instant::now();
        let mut stopping = false;
        // `Close` waits for room in the input queue: behind a recogniser that lags (a full
        // queue) it must not be lost, or the stream would never end.
        let mut close_pending = false;
        loop {
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(SttStreamEvent::Event(e)) => {
                        if let Some(e) = to_call_event(e) {
                            self.deliver(e);
                        }
                    }
                    Some(SttStreamEvent::Connected { attempt }) => {
                        if attempt == 1 {
                            self.metrics.connected(&self.provider, started.elapsed());
                        }
                    }
                    Some(SttStreamEvent::Reconnecting { error, .. }) => {
                        self.metrics.reconnect(&self.provider);
                        self.metrics.error(&self.provider, error.code);
                    }
                    Some(SttStreamEvent::Ended) | None => {
                        if let Some(d) = done.take() {
                            d.done();
                        }
                        self.deliver(CallSpeechEvent::Stopped);
                        break;
                    }
                    Some(SttStreamEvent::Failed(failure)) => {
                        self.metrics.error(&self.provider, failure.code);
                        if let Some(d) = done.take() {
                            d.done();
                        }
                        self.deliver(CallSpeechEvent::SttError(failure));
                        break;
                    }
                },
                frame = recv(&mut self.tap), if self.tap.is_some() => match frame {
                    Some(frame) => {
                        let len = frame.len() as u64;
                        if self.input.try_send(SttInput::Audio(frame)).is_err() {
                            self.dropped_audio += len;
                        }
                    }
                    // The call ended: end the stream cleanly.
                    None => {
                        self.tap = None;
                        stopping = true;
                        close_pending = true;
                    }
                },
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    self.tap = None;
                    close_pending = true;
                }
                permit = self.input.reserve(), if close_pending => {
                    close_pending = false;
                    // Err: the stream has already ended; its `Ended` or `Failed` follows.
                    if let Ok(permit) = permit {
                        permit.send(SttInput::Close);
                    }
                }
            }
        }
        let stats = self.stream.stats();
        self.metrics
            .dropped_audio(&self.provider, self.dropped_audio + stats.dropped_audio_bytes.load(Ordering::Relaxed));
        self.metrics.dropped_event("channel_full", stats.dropped_events.load(Ordering::Relaxed));
    }

    fn deliver(&self, event: CallSpeechEvent) {
        let _ = self.to_plugin.send(MediaEvent::Speech(event));
    }
}

/// A call's caller audio for a recogniser.
enum CallerAudio {
    /// A `pcmu` route's frames as received.
    Wire(mpsc::Receiver<Bytes>),
    /// Any other route's decoded audio at 8000 Hz, to be encoded to mu-law.
    Pcm(Box<crate::media::tap::PcmTap>),
}

impl CallerAudio {
    /// The next 20 ms frame as G.711 mu-law at 8000 Hz; `None` once the call has ended.
    async fn recv(&mut self) -> Option<Bytes> {
        match self {
            CallerAudio::Wire(rx) => rx.recv().await,
            CallerAudio::Pcm(tap) => {
                let samples = tap.recv().await?;
                Some(samples.iter().map(|&s| crate::media::codec::linear_to_ulaw(s)).collect::<Vec<u8>>().into())
            }
        }
    }
}

async fn recv(tap: &mut Option<CallerAudio>) -> Option<Bytes> {
    match tap {
        Some(t) => t.recv().await,
        None => std::future::pending().await,
    }
}

/// The plugin's view of a provider event; `None` for accounting the plugin does not see.
fn to_call_event(event: super::stt::SttEvent) -> Option<CallSpeechEvent> {
    use super::stt::SttEvent;
    let transcript = |t: super::stt::Transcript, is_final: bool| Transcript {
        text: t.text,
        is_final,
        speech_final: t.speech_final,
        confidence: t.confidence,
        language: t.languages.into_iter().next(),
        start_ms: t.start_ms,
        duration_ms: t.duration_ms,
    };
    Some(match event {
        SttEvent::SpeechStarted(_) => CallSpeechEvent::SpeechStarted,
        SttEvent::Interim(t) => CallSpeechEvent::Transcript(transcript(t, false)),
        SttEvent::Final(t) => CallSpeechEvent::Transcript(transcript(t, true)),
        SttEvent::UtteranceEnd(_) => CallSpeechEvent::UtteranceEnd,
        SttEvent::Metadata(_) => return None,
        // A vendor error message on a stream that goes on: logged, not the plugin's business
        // (a fatal one ends the stream and arrives as `stt-error`).
        SttEvent::Error(e) => {
            tracing::info!(kind = super::kind_code(e.kind), "speech-to-text vendor error: {}", e.message);
            return None;
        }
    })
}

/// Speaks a call's utterances one after another.
struct Speaker {
    id: ConnId,
    media: Arc<MediaEngine>,
    to_plugin: mpsc::UnboundedSender<MediaEvent>,
    metrics: Arc<SpeechMetrics>,
    generation: Arc<AtomicU64>,
}

impl Speaker {
    async fn run(self, mut says: mpsc::Receiver<Say>) {
        while let Some(say) = says.recv().await {
            if say.generation != self.generation.load(Ordering::Acquire) {
                continue;
            }
            // TTS output is 16-bit PCM at 8000 Hz (speech::tts); the stream converts it.
            let Ok(writer) = self.media.open_stream(self.id, "l16", 8000, say.mark.clone()) else {
                break;
            };
            if say.generation != self.generation.load(Ordering::Acquire) {
                continue;
            }
            self.speak(say, writer).await;
        }
    }

    async fn speak(&self, say: Say, mut writer: crate::media::stream_source::StreamWriter) {
        let provider = say.provider.name().to_string();
        let _open = self.metrics.opened(&provider, "tts");
        let started = std::time::Instant::now();
        let (tx, mut rx) = mpsc::channel(8);
        let request = TtsRequest::start(&say.provider, say.options, say.text, tx);
        let mut first = true;
        loop {
            let output = tokio::select! {
                output = rx.recv() => output,
                // Cleared (barge-in) or hung up: dropping the request cancels it at the vendor.
                _ = writer.closed() => break,
            };
            match output {
                Some(TtsOutput::Audio(samples)) => {
                    if std::mem::take(&mut first) {
                        self.metrics.first_audio(&provider, started.elapsed());
                    }
                    if writer.write(&samples).await.is_err() {
                        break;
                    }
                }
                Some(TtsOutput::Event(_)) => {}
                Some(TtsOutput::Done) | None => {
                    let _ = writer.finish().await;
                    break;
                }
                Some(TtsOutput::Failed(failure)) => {
                    self.metrics.error(&provider, failure.code);
                    let _ = self.to_plugin.send(MediaEvent::Speech(CallSpeechEvent::TtsError(failure)));
                    let _ = writer.finish().await;
                    break;
                }
            }
        }
        drop(request);
    }
}
