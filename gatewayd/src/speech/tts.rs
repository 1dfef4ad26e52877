//! [`TtsRequest`]: one utterance synthesised by a vendor over HTTP and streamed out as 16-bit
//! PCM at 8000 Hz, mono, as the response body arrives.
//!
//! The plugin's `plan` names the output format and how audio is carried (HTTP mode with the
//! raw body is what this host runs today); `speak` gives the request. The body is decoded
//! (mu-law, A-law or s16le) and resampled to 8000 Hz when needed ([`super::convert`]). A
//! request that fails before any audio was delivered, and that the plugin's `on-close` calls
//! transient, is retried once with the same request; after audio was delivered it never is
//! (the listener already heard the start): the request ends with [`TtsOutput::Failed`].
//! Dropping the [`TtsRequest`] cancels it: the HTTP connection is closed, which the vendor sees
//! as the request cancelled (barge-in).

use super::bindings::tts::exports::gatewayd::plugin::tts as wit;
use super::bindings::types;
use super::convert::ToCall;
use super::provider::{Instance, TTS_WANTED, formats};
use super::{CloseAction, Disconnect, Provider, SpeechFailure, disconnect_of, headers};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use wasmtime::component::ResourceAny;

pub use wit::{TtsEvent, TtsOptions};

/// Attempts per request: the first and one retry.
pub const MAX_ATTEMPTS: u32 = 2;

/// What a request produces, in order: audio, then `Done` or `Failed` last.
#[derive(Debug, Clone, PartialEq)]
pub enum TtsOutput {
    /// Audio: 16-bit PCM samples at 8000 Hz, mono (any length; the player frames it).
    Audio(Vec<i16>),
    /// A plugin event (alignment, a vendor's error message on a stream that goes on).
    Event(TtsEvent),
    /// The utterance was delivered whole.
    Done,
    /// The request failed (after any audio already sent).
    Failed(SpeechFailure),
}

/// A running synthesis request. Dropping it cancels the request at the vendor.
pub struct TtsRequest {
    task: tokio::task::JoinHandle<()>,
    delivered: Arc<AtomicU64>,
}

impl Drop for TtsRequest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TtsRequest {
    /// Speak `text` with `provider` (a TTS provider) and `options`; audio and the last event go
    /// to `output` (the task waits for room in it). Must be called within a tokio runtime.
    pub fn start(
        provider: &Arc<Provider>,
        options: TtsOptions,
        text: String,
        output: mpsc::Sender<TtsOutput>,
    ) -> TtsRequest {
        let delivered = Arc::new(AtomicU64::new(0));
        let mut task = Task { provider: provider.clone(), output, delivered: delivered.clone() };
        let local = provider.is_local();
        let run = async move {
            let last = match task.run(options, text).await {
                Ok(true) => TtsOutput::Done,
                Ok(false) => return,
                Err(failure) => {
                    tracing::warn!(
                        plugin = task.provider.name(),
                        code = failure.code,
                        "text-to-speech request failed: {}",
                        failure.message
                    );
                    TtsOutput::Failed(failure)
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), task.output.send(last)).await;
        };
        // A local engine synthesises on the blocking pool (see `SttStream::start`); such a
        // request ends when its output is dropped rather than by `abort`.
        let task = if local {
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || handle.block_on(run))
        } else {
            tokio::spawn(run)
        };
        TtsRequest { task, delivered }
    }

    /// Samples delivered to the output so far (8000 Hz).
    pub fn delivered_samples(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Whether the request's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The plugin's session resource in its own instance.
struct Session {
    instance: Instance<super::bindings::tts::TtsProvider>,
    handle: ResourceAny,
}

impl Session {
    async fn new(provider: &Arc<Provider>, options: TtsOptions) -> Result<Session, SpeechFailure> {
        let mut instance = provider.tts_instance().await?;
        let wanted = formats(TTS_WANTED);
        instance.refuel_for_constructor();
        let r = instance
            .bindings
            .gatewayd_plugin_tts()
            .tts_session()
            .call_constructor(&mut instance.store, &options, &wanted)
            .await;
        let handle = instance.check(r)?;
        Ok(Session { instance, handle })
    }

    async fn plan(&mut self) -> Result<Result<wit::TtsPlan, types::SpeechError>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_tts().tts_session().call_plan(&mut i.store, self.handle).await;
        i.check(r)
    }

    async fn speak(&mut self, text: &str) -> Result<Result<types::RequestPlan, types::SpeechError>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_tts().tts_session().call_speak(&mut i.store, self.handle, text).await;
        i.check(r)
    }

    async fn on_close(&mut self, reason: Disconnect) -> Result<CloseAction, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_tts().tts_session().call_on_close(&mut i.store, self.handle, &reason).await;
        i.check(r)
    }
    async fn synthesize(&mut self, text: &str) -> Result<Result<(), types::SpeechError>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_tts().tts_session().call_synthesize(&mut i.store, self.handle, text).await;
        i.check(r)
    }

    async fn pull_audio(&mut self, max: u32) -> Result<Result<Option<Vec<i16>>, types::SpeechError>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_tts().tts_session().call_pull_audio(&mut i.store, self.handle, max).await;
        i.check(r)
    }
}

struct Task {
    provider: Arc<Provider>,
    output: mpsc::Sender<TtsOutput>,
    delivered: Arc<AtomicU64>,
}

/// How one attempt ended, when not with the whole body.
enum Failed {
    /// The vendor refused or the connection broke.
    Vendor(Disconnect),
    /// Nobody reads the output any more: stop quietly.
    Gone,
}

impl Task {
    /// `Ok(true)`: delivered whole; `Ok(false)`: the output was dropped.
    async fn run(&mut self, options: TtsOptions, text: String) -> Result<bool, SpeechFailure> {
        let mut session = Session::new(&self.provider, options).await?;
        let http = match session.plan().await?.map_err(SpeechFailure::from)? {
            wit::TtsPlan::Http(http) => http,
            wit::TtsPlan::InProcess(plan) => return self.run_local(&mut session, plan, &text).await,
            wit::TtsPlan::Websocket(_) => {
                return Err(SpeechFailure::unsupported("WebSocket synthesis is not supported by this host yet"));
            }
        };
        if !matches!(http.extract, types::AudioExtract::RawBody) {
            return Err(SpeechFailure::unsupported("only a raw audio body is supported by this host yet"));
        }
        let request = session.speak(&text).await?.map_err(SpeechFailure::from)?;
        let plan = crate::net::HttpPlan {
            method: request.method,
            url: request.url,
            headers: headers(request.headers),
            body: request.body,
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let mut convert = ToCall::new(&http.output).map_err(SpeechFailure::unsupported)?;
            let reason = match self.attempt(plan.clone(), &mut convert).await {
                Ok(()) => return Ok(true),
                Err(Failed::Gone) => return Ok(false),
                Err(Failed::Vendor(reason)) => reason,
            };
            match session.on_close(reason).await? {
                CloseAction::Done => return Ok(true),
                CloseAction::Fail(e) => return Err(e.into()),
                CloseAction::Reconnect(e) => {
                    let e = SpeechFailure::from(e);
                    if self.delivered.load(Ordering::Relaxed) > 0 || attempt == MAX_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::info!(
                        plugin = self.provider.name(),
                        code = e.code,
                        "text-to-speech request retried: {}",
                        e.message
                    );
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// In-process synthesis (a local engine, issue #12): `synthesize`, then `pull-audio` 100 ms
    /// at a time, converted to 8000 Hz as it comes; the engine synthesises as it is pulled and
    /// the output channel's room paces the pulls, so the first audio plays before the rest is
    /// synthesised. `Ok(false)`: the output was dropped (barge-in), nothing more is pulled.
    async fn run_local(
        &mut self,
        session: &mut Session,
        plan: wit::InProcessTts,
        text: &str,
    ) -> Result<bool, SpeechFailure> {
        let format = types::AudioFormat { encoding: types::AudioEncoding::PcmS16le, ..plan.output };
        let mut convert = ToCall::new(&format).map_err(SpeechFailure::unsupported)?;
        let pull = (format.sample_rate / 10).max(1);
        session.synthesize(text).await?.map_err(SpeechFailure::from)?;
        let (mut bytes, mut samples) = (Vec::new(), Vec::new());
        loop {
            let Some(pulled) = session.pull_audio(pull).await?.map_err(SpeechFailure::from)? else {
                convert.finish(&mut samples);
                return Ok(self.deliver(&mut samples).await.is_ok());
            };
            if pulled.len() > pull as usize {
                return Err(SpeechFailure::new("protocol", format!("pull-audio returned more than {pull} samples")));
            }
            bytes.clear();
            bytes.extend(pulled.iter().flat_map(|s| s.to_le_bytes()));
            convert.push(&bytes, &mut samples);
            if self.deliver(&mut samples).await.is_err() {
                return Ok(false);
            }
        }
    }

    /// One request: stream its body through `convert` into the output.
    async fn attempt(&mut self, plan: crate::net::HttpPlan, convert: &mut ToCall) -> Result<(), Failed> {
        let mut response = match self.provider.outbound().request(plan).await {
            Ok(response) => response,
            Err(e) => return Err(Failed::Vendor(disconnect_of(&e, None))),
        };
        if response.status >= 400 {
            let content_type =
                response.headers.get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
            let e = match response.error_for_status().await {
                Ok(_) => unreachable!("status >= 400"),
                Err(e) => e,
            };
            return Err(Failed::Vendor(disconnect_of(&e, content_type)));
        }
        let mut samples = Vec::new();
        loop {
            samples.clear();
            match response.body.next_chunk().await {
                Some(Ok(bytes)) => convert.push(&bytes, &mut samples),
                Some(Err(e)) => return Err(Failed::Vendor(Disconnect::Dropped(e.to_string()))),
                None => {
                    convert.finish(&mut samples);
                    self.deliver(&mut samples).await?;
                    return Ok(());
                }
            }
            self.deliver(&mut samples).await?;
        }
    }

    async fn deliver(&mut self, samples: &mut Vec<i16>) -> Result<(), Failed> {
        if samples.is_empty() {
            return Ok(());
        }
        let n = samples.len() as u64;
        self.output.send(TtsOutput::Audio(std::mem::take(samples))).await.map_err(|_| Failed::Gone)?;
        self.delivered.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}
