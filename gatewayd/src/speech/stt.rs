//! [`SttStream`]: one recognition stream of call audio to a vendor WebSocket.
//!
//! The caller's side is two bounded channels: [`SttInput`] in (20 ms frames of G.711 mu-law at
//! 8000 Hz, 160 bytes each, and `finalize`/`close` commands in order with the audio) and
//! [`SttStreamEvent`] out. The stream's task never makes the call wait: it drains the input
//! at once (the media engine `try_send`s frames), and an event the receiver has no room for is
//! dropped and counted ([`SttStats::dropped_events`]).
//!
//! Per connection: the plugin's `plan` (URL, headers, first messages, keepalive, send format,
//! chunk length), [`crate::net::Outbound::connect_ws`], the on-open messages, any audio
//! buffered while disconnected, then audio in chunks of the plan's `chunk-ms` (transcoded only
//! when the send format is not mu-law 8000 Hz), vendor messages through `on-message`, the
//! keepalive when nothing was sent for its interval. When the connection ends, `on-close`
//! decides: done, reconnect (backoff 100 ms doubling to 5 s; audio arriving meanwhile is
//! buffered, at most [`MAX_BUFFERED_BYTES`], and replayed first), or fail (an error event at
//! once, e.g. a 401 at the upgrade). A vendor that accepts then closes at once
//! [`MAX_QUICK_CLOSES`] times in a row is given up on, as is one that cannot be reached
//! [`MAX_CONNECT_FAILURES`] times in a row.

use super::bindings::stt::exports::gatewayd::plugin::stt as wit;
use super::bindings::types::{self, AudioFraming, WsClose};
use super::convert::{FromCall, supported};
use super::provider::{Instance, QUICK_CLOSE, STT_OFFERED, formats};
use super::socket::{Incoming, Socket};
use super::{CloseAction, Disconnect, Provider, SpeechFailure, disconnect_of, headers};
use base64::Engine as _;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use wasmtime::component::ResourceAny;

pub use wit::{SttEvent, SttOptions, Transcript, Word};

/// Audio kept while disconnected, in call bytes: 10 s of mu-law at 8000 Hz. Older audio is
/// dropped first (and counted) beyond it.
pub const MAX_BUFFERED_BYTES: usize = 80_000;
/// Accept-then-close-at-once in a row after which the stream gives up.
pub const MAX_QUICK_CLOSES: u32 = 3;
/// Failed connection attempts in a row after which the stream gives up.
pub const MAX_CONNECT_FAILURES: u32 = 8;
/// First reconnect delay; it doubles per failure in a row.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After a `close`, how long the vendor may take to send its last results and close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Call bytes per ms (mu-law, 8000 Hz).
const CALL_BYTES_PER_MS: usize = 8;

/// What the call side sends to a stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttInput {
    /// Call audio: G.711 mu-law, 8000 Hz, mono (normally one 20 ms frame, 160 bytes).
    Audio(Bytes),
    /// Ask the vendor for results for all audio so far (end of speech, barge-in).
    Finalize,
    /// End the stream: the vendor sends its last results, then the stream ends. Dropping the
    /// sender does the same.
    Close,
}

/// What a stream reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SttStreamEvent {
    /// Connected to the vendor (`attempt` 1 first, then one more per reconnect).
    Connected {
        /// Connection attempt number.
        attempt: u32,
    },
    /// A recognition event from the plugin.
    Event(SttEvent),
    /// The connection ended and will be retried after `delay_ms`; audio is buffered meanwhile.
    Reconnecting {
        /// Why (the plugin's classification, the vendor's message).
        error: SpeechFailure,
        /// The backoff, in ms.
        delay_ms: u64,
    },
    /// The stream ended normally (after `close`). Last event.
    Ended,
    /// The stream failed (fatal vendor error, plugin fault, given up). Last event.
    Failed(SpeechFailure),
}

/// Counters of one stream (read with `Ordering::Relaxed`).
#[derive(Debug, Default)]
pub struct SttStats {
    /// Call audio received from the input, in bytes.
    pub audio_in_bytes: AtomicU64,
    /// Call audio sent to the vendor (before transcoding), in bytes.
    pub audio_sent_bytes: AtomicU64,
    /// Of those, bytes that were buffered while disconnected and replayed.
    pub replayed_bytes: AtomicU64,
    /// Call audio dropped because the buffer was full while disconnected, in bytes.
    pub dropped_audio_bytes: AtomicU64,
    /// Events dropped because the events channel was full.
    pub dropped_events: AtomicU64,
    /// Reconnections started.
    pub reconnects: AtomicU64,
    /// Keepalive messages sent.
    pub keepalives: AtomicU64,
}

/// A running recognition stream. Dropping it stops the task at once (the vendor socket is
/// closed without a `close` command); send [`SttInput::Close`] for a clean end.
pub struct SttStream {
    task: tokio::task::JoinHandle<()>,
    stats: Arc<SttStats>,
}

impl Drop for SttStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SttStream {
    /// Start recognising the audio from `input` with `provider` (an STT provider) and
    /// `options`; events go to `events`. Must be called within a tokio runtime. Failures are
    /// reported as a last [`SttStreamEvent::Failed`].
    pub fn start(
        provider: &Arc<Provider>,
        options: SttOptions,
        input: mpsc::Receiver<SttInput>,
        events: mpsc::Sender<SttStreamEvent>,
    ) -> SttStream {
        let stats = Arc::new(SttStats::default());
        let mut task = Task {
            provider: provider.clone(),
            input,
            input_open: true,
            events,
            stats: stats.clone(),
            pending: VecDeque::new(),
            finalize_pending: false,
        };
        let local = provider.is_local();
        let run = async move {
            let last = match task.run(options).await {
                Ok(()) => SttStreamEvent::Ended,
                Err(failure) => {
                    tracing::warn!(
                        plugin = task.provider.name(),
                        code = failure.code,
                        "speech-to-text stream failed: {}",
                        failure.message
                    );
                    SttStreamEvent::Failed(failure)
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), task.events.send(last)).await;
        };
        // A local engine decodes on the blocking pool: the whole stream runs on a thread of its
        // own (parked while it waits for audio), so no decode holds a runtime worker. Such a
        // stream ends when its input closes (the pump dropped) rather than by `abort`.
        let task = if local {
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || handle.block_on(run))
        } else {
            tokio::spawn(run)
        };
        SttStream { task, stats }
    }

    /// The stream's counters.
    pub fn stats(&self) -> &Arc<SttStats> {
        &self.stats
    }

    /// Whether the stream's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The plugin's session resource in its own instance.
struct Session {
    instance: Instance<super::bindings::stt::SttProvider>,
    handle: ResourceAny,
}

impl Session {
    async fn new(provider: &Arc<Provider>, options: SttOptions) -> Result<Session, SpeechFailure> {
        let mut instance = provider.stt_instance().await?;
        let offered = formats(STT_OFFERED);
        instance.refuel_for_constructor();
        let r = instance
            .bindings
            .gatewayd_plugin_stt()
            .stt_session()
            .call_constructor(&mut instance.store, &options, &offered)
            .await;
        let handle = instance.check(r)?;
        Ok(Session { instance, handle })
    }

    async fn plan(&mut self) -> Result<Result<wit::SttPlan, types::SpeechError>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_stt().stt_session().call_plan(&mut i.store, self.handle).await;
        i.check(r)
    }

    async fn on_message(&mut self, message: types::WsMessage) -> Result<Vec<SttEvent>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r =
            i.bindings.gatewayd_plugin_stt().stt_session().call_on_message(&mut i.store, self.handle, &message).await;
        i.check(r)
    }

    async fn command(&mut self, command: wit::SttCommand) -> Result<wit::CommandOutput, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_stt().stt_session().call_command(&mut i.store, self.handle, command).await;
        i.check(r)
    }

    async fn on_close(&mut self, reason: Disconnect) -> Result<CloseAction, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r = i.bindings.gatewayd_plugin_stt().stt_session().call_on_close(&mut i.store, self.handle, &reason).await;
        i.check(r)
    }

    async fn push_audio(
        &mut self,
        samples: &[i16],
    ) -> Result<Result<Vec<SttEvent>, types::SpeechError>, SpeechFailure> {
        let i = &mut self.instance;
        i.refuel();
        let r =
            i.bindings.gatewayd_plugin_stt().stt_session().call_push_audio(&mut i.store, self.handle, samples).await;
        i.check(r)
    }
}

/// How a connection (or an attempt at one) ended.
enum End {
    /// The vendor refused, closed or dropped it.
    Vendor { reason: Disconnect, accepted: bool, got_message: bool, lived: Duration },
    /// We ended it: `close` done (or timed out), or nobody listens to events any more.
    Ours,
    /// The plugin failed.
    Fatal(SpeechFailure),
}

struct Task {
    provider: Arc<Provider>,
    input: mpsc::Receiver<SttInput>,
    input_open: bool,
    events: mpsc::Sender<SttStreamEvent>,
    stats: Arc<SttStats>,
    /// Call audio not yet sent: a partial chunk while connected, everything while not.
    pending: VecDeque<u8>,
    /// A `finalize` arrived while disconnected: send it after the replay.
    finalize_pending: bool,
}

/// What input handling decided while not connected.
enum Idle {
    Continue,
    Close,
}

impl Task {
    async fn run(&mut self, options: SttOptions) -> Result<(), SpeechFailure> {
        let mut session = Session::new(&self.provider, options).await?;
        let (mut attempt, mut retries, mut quick_closes, mut failures) = (0u32, 0u32, 0u32, 0u32);
        loop {
            attempt += 1;
            let plan = match session.plan().await?.map_err(SpeechFailure::from)? {
                wit::SttPlan::Websocket(plan) => plan,
                wit::SttPlan::InProcess(plan) => return self.run_local(&mut session, plan).await,
            };
            let end = match self.connect_and_stream(&mut session, &plan, attempt).await? {
                Some(end) => end,
                None => return Ok(()),
            };
            let (reason, accepted, got_message, lived) = match end {
                End::Ours => return Ok(()),
                End::Fatal(f) => return Err(f),
                End::Vendor { reason, accepted, got_message, lived } => (reason, accepted, got_message, lived),
            };
            let error = match session.on_close(reason).await? {
                CloseAction::Done => return Ok(()),
                CloseAction::Fail(e) => return Err(e.into()),
                CloseAction::Reconnect(e) => SpeechFailure::from(e),
            };
            let healthy = accepted && (got_message || lived >= QUICK_CLOSE);
            if healthy {
                (retries, quick_closes, failures) = (0, 0, 0);
            } else if accepted {
                quick_closes += 1;
                retries += 1;
            } else {
                failures += 1;
                retries += 1;
            }
            if quick_closes >= MAX_QUICK_CLOSES {
                return Err(SpeechFailure::new(
                    "gave_up",
                    format!("the vendor accepted then closed at once {quick_closes} times in a row; last: {error}"),
                ));
            }
            if failures >= MAX_CONNECT_FAILURES {
                return Err(SpeechFailure::new(
                    "gave_up",
                    format!("{failures} connection attempts in a row failed; last: {error}"),
                ));
            }
            let delay = backoff(retries);
            tracing::info!(
                plugin = self.provider.name(),
                code = error.code,
                delay_ms = delay.as_millis() as u64,
                "speech-to-text stream reconnecting: {}",
                error.message
            );
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.emit(SttStreamEvent::Reconnecting { error, delay_ms: delay.as_millis() as u64 });
            let until = Instant::now() + delay;
            loop {
                tokio::select! {
                    biased;
                    input = self.input.recv(), if self.input_open => {
                        if let Idle::Close = self.idle_input(input) {
                            return Ok(());
                        }
                    }
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
    }

    /// In-process recognition (a local engine, issue #12): call audio converted to the plan's
    /// PCM format (8000 Hz mu-law decoded and resampled, e.g. to 16000 Hz) and handed to
    /// `push-audio` in batches of the plan's `batch-ms` (100 to 1000 ms); `finalize` and `close`
    /// first hand over what is left (padded with silence to 100 ms), then run the command.
    /// Events go out as the plugin returns them. A plugin error or fault ends the stream.
    async fn run_local(&mut self, session: &mut Session, plan: wit::InProcessStt) -> Result<(), SpeechFailure> {
        let format = types::AudioFormat { encoding: types::AudioEncoding::PcmS16le, ..plan.format };
        if !supported(&format) || format.channels != 1 {
            return Err(SpeechFailure::unsupported(format!("the plan's format {format:?} is not one the host offers")));
        }
        let mut convert = FromCall::new(&format).map_err(SpeechFailure::unsupported)?;
        let per_ms = format.sample_rate as usize / 1000;
        let batch = plan.batch_ms.clamp(100, 1000) as usize * per_ms;
        let (mut samples, mut bytes) = (Vec::<i16>::with_capacity(batch * 2), Vec::new());
        self.emit(SttStreamEvent::Connected { attempt: 1 });
        loop {
            let command = match self.input.recv().await {
                Some(SttInput::Audio(frame)) => {
                    self.stats.audio_in_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    bytes.clear();
                    convert.push(&frame, &mut bytes);
                    samples.extend(bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
                    self.stats.audio_sent_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                    while samples.len() >= batch {
                        let rest = samples.split_off(batch);
                        let events = session.push_audio(&samples).await?.map_err(SpeechFailure::from)?;
                        samples = rest;
                        if !self.emit_all(events) {
                            return Ok(());
                        }
                    }
                    continue;
                }
                Some(SttInput::Finalize) => wit::SttCommand::Finalize,
                Some(SttInput::Close) | None => wit::SttCommand::Close,
            };
            if !samples.is_empty() {
                samples.resize(samples.len().max(100 * per_ms), 0);
                let events = session.push_audio(&samples).await?.map_err(SpeechFailure::from)?;
                samples.clear();
                if !self.emit_all(events) {
                    return Ok(());
                }
            }
            let output = session.command(command).await?;
            if !self.emit_all(output.events) || command == wit::SttCommand::Close {
                return Ok(());
            }
        }
    }

    /// Connect as `plan` says (draining the input meanwhile) and stream until the connection
    /// ends. `None`: a `close` came before the connection opened.
    async fn connect_and_stream(
        &mut self,
        session: &mut Session,
        plan: &wit::WsStt,
        attempt: u32,
    ) -> Result<Option<End>, SpeechFailure> {
        if !supported(&plan.send_format) {
            return Err(SpeechFailure::unsupported(format!(
                "the plan's send format {:?} is not one the host offered",
                plan.send_format
            )));
        }
        let mut convert = FromCall::new(&plan.send_format).map_err(SpeechFailure::unsupported)?;
        let ws_plan = crate::net::WsPlan {
            url: plan.connection.url.clone(),
            headers: headers(plan.connection.headers.clone()),
            subprotocols: plan.connection.subprotocols.clone(),
        };
        let provider = self.provider.clone();
        let connect = provider.outbound().connect_ws(ws_plan);
        tokio::pin!(connect);
        let connected = loop {
            tokio::select! {
                biased;
                input = self.input.recv(), if self.input_open => {
                    if let Idle::Close = self.idle_input(input) {
                        return Ok(None);
                    }
                }
                result = &mut connect => break result,
            }
        };
        let conn = match connected {
            Ok(conn) => conn,
            // The plan names a host the capability does not allow: no retry can succeed.
            Err(
                e @ (crate::net::OutboundError::NotAllowed { .. } | crate::net::OutboundError::PrivateAddress { .. }),
            ) => {
                return Ok(Some(End::Fatal(SpeechFailure::new("config", e.to_string()))));
            }
            Err(e) => {
                let reason = disconnect_of(&e, None);
                return Ok(Some(End::Vendor { reason, accepted: false, got_message: false, lived: Duration::ZERO }));
            }
        };
        self.emit(SttStreamEvent::Connected { attempt });
        let write_timeout = Duration::from_millis(self.provider.idle_timeout_ms());
        let mut socket = Socket::new(conn, write_timeout);
        Ok(Some(self.stream(session, &mut socket, plan, &mut convert).await))
    }

    /// Input while not connected: audio is buffered, `finalize` remembered.
    fn idle_input(&mut self, input: Option<SttInput>) -> Idle {
        match input {
            Some(SttInput::Audio(frame)) => {
                self.buffer(&frame);
                Idle::Continue
            }
            Some(SttInput::Finalize) => {
                self.finalize_pending = true;
                Idle::Continue
            }
            Some(SttInput::Close) => Idle::Close,
            None => {
                self.input_open = false;
                Idle::Close
            }
        }
    }

    /// Add call audio to `pending`, dropping the oldest beyond [`MAX_BUFFERED_BYTES`].
    fn buffer(&mut self, frame: &[u8]) {
        self.stats.audio_in_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        self.pending.extend(frame);
        let over = self.pending.len().saturating_sub(MAX_BUFFERED_BYTES);
        if over > 0 {
            self.pending.drain(..over);
            self.stats.dropped_audio_bytes.fetch_add(over as u64, Ordering::Relaxed);
        }
    }

    /// Report `event`; a full channel drops it (counted). `false`: the receiver is gone.
    fn emit(&self, event: SttStreamEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped_events.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Report the plugin's events. `false`: the receiver is gone.
    fn emit_all(&self, events: Vec<SttEvent>) -> bool {
        events.into_iter().all(|e| self.emit(SttStreamEvent::Event(e)))
    }

    /// The open connection's loop.
    async fn stream(
        &mut self,
        session: &mut Session,
        socket: &mut Socket,
        plan: &wit::WsStt,
        convert: &mut FromCall,
    ) -> End {
        let opened = Instant::now();
        let mut got_message = false;
        let vendor = |reason, got_message| End::Vendor { reason, accepted: true, got_message, lived: opened.elapsed() };
        let chunk_bytes = plan.chunk_ms.clamp(20, 250) as usize * CALL_BYTES_PER_MS;
        let keepalive = plan.connection.keepalive.as_ref().filter(|k| k.interval_ms > 0);
        let interval = keepalive.map(|k| Duration::from_millis(k.interval_ms.max(100) as u64));
        let mut last_sent = Instant::now();
        let mut last_keepalive = Instant::now();
        let mut closing: Option<Instant> = None;

        for message in &plan.connection.on_open {
            if let Err(e) = send_message(socket, message).await {
                return vendor(ended(socket, e).await, got_message);
            }
        }
        let backlog = self.pending.len();
        if let Err(e) = self.send_chunks(socket, plan, convert, chunk_bytes, true).await {
            return vendor(ended(socket, e).await, got_message);
        }
        self.stats.replayed_bytes.fetch_add((backlog - backlog.min(self.pending.len())) as u64, Ordering::Relaxed);
        if backlog > 0 {
            last_sent = Instant::now();
        }
        if std::mem::take(&mut self.finalize_pending) {
            match self.command(session, socket, plan, convert, wit::SttCommand::Finalize).await {
                Ok(true) => {}
                Ok(false) => return End::Ours,
                Err(Ok(e)) => return vendor(ended(socket, e).await, got_message),
                Err(Err(f)) => return End::Fatal(f),
            }
        }

        loop {
            let keepalive_at = interval.map(|i| {
                let base = if keepalive.is_some_and(|k| k.while_streaming) {
                    last_keepalive
                } else {
                    last_sent.max(last_keepalive)
                };
                base + i
            });
            tokio::select! {
                biased;
                incoming = socket.recv() => {
                    let message = match incoming {
                        Some(Incoming::Text(text)) => types::WsMessage::Text(text),
                        Some(Incoming::Binary(data)) => types::WsMessage::Binary(data.to_vec()),
                        Some(Incoming::Ping(payload)) => {
                            if let Err(e) = socket.pong(&payload).await {
                                return vendor(ended(socket, e).await, got_message);
                            }
                            continue;
                        }
                        Some(Incoming::Closed { code, reason }) => {
                            let _ = socket.close(if code == 1005 { 1000 } else { code }, "").await;
                            return vendor(Disconnect::Closed(WsClose { code, reason: cut(reason, 123) }), got_message);
                        }
                        Some(Incoming::Dropped(why)) => return vendor(Disconnect::Dropped(why), got_message),
                        None => return vendor(Disconnect::Dropped("the connection ended".into()), got_message),
                    };
                    got_message = true;
                    match session.on_message(message).await {
                        Ok(events) => {
                            if !self.emit_all(events) {
                                return End::Ours;
                            }
                        }
                        Err(f) => return End::Fatal(f),
                    }
                }
                input = self.input.recv(), if self.input_open && closing.is_none() => {
                    let command = match input {
                        Some(SttInput::Audio(frame)) => {
                            self.buffer(&frame);
                            match self.send_chunks(socket, plan, convert, chunk_bytes, false).await {
                                Ok(true) => last_sent = Instant::now(),
                                Ok(false) => {}
                                Err(e) => return vendor(ended(socket, e).await, got_message),
                            }
                            continue;
                        }
                        Some(SttInput::Finalize) => wit::SttCommand::Finalize,
                        Some(SttInput::Close) => wit::SttCommand::Close,
                        None => {
                            self.input_open = false;
                            wit::SttCommand::Close
                        }
                    };
                    if command == wit::SttCommand::Close {
                        closing = Some(Instant::now() + CLOSE_WAIT);
                    }
                    match self.command(session, socket, plan, convert, command).await {
                        Ok(true) => last_sent = Instant::now(),
                        Ok(false) => return End::Ours,
                        Err(Ok(e)) => return vendor(ended(socket, e).await, got_message),
                        Err(Err(f)) => return End::Fatal(f),
                    }
                }
                _ = sleep_until(keepalive_at), if keepalive_at.is_some() && closing.is_none() => {
                    let Some(k) = keepalive else { continue };
                    if let Err(e) = send_message(socket, &k.message).await {
                        return vendor(ended(socket, e).await, got_message);
                    }
                    self.stats.keepalives.fetch_add(1, Ordering::Relaxed);
                    last_keepalive = Instant::now();
                }
                _ = sleep_until(closing), if closing.is_some() => return End::Ours,
            }
        }
    }

    /// Flush the partial chunk, then run `command` and send its messages. `Ok(false)`: nobody
    /// listens to events any more. `Err(Ok(_))`: a send failed; `Err(Err(_))`: the plugin did.
    async fn command(
        &mut self,
        session: &mut Session,
        socket: &mut Socket,
        plan: &wit::WsStt,
        convert: &mut FromCall,
        command: wit::SttCommand,
    ) -> Result<bool, Result<String, SpeechFailure>> {
        self.send_chunks(socket, plan, convert, usize::MAX, true).await.map_err(Ok)?;
        let output = session.command(command).await.map_err(Err)?;
        for message in &output.send {
            send_message(socket, message).await.map_err(Ok)?;
        }
        Ok(self.emit_all(output.events))
    }

    /// Send `pending` in chunks of `chunk_bytes` (call bytes); with `all`, the last partial
    /// chunk too. `Ok(true)` when something was sent.
    async fn send_chunks(
        &mut self,
        socket: &mut Socket,
        plan: &wit::WsStt,
        convert: &mut FromCall,
        chunk_bytes: usize,
        all: bool,
    ) -> Result<bool, String> {
        let mut sent = false;
        let mut encoded = Vec::new();
        while !self.pending.is_empty() && (all || self.pending.len() >= chunk_bytes) {
            let n = self.pending.len().min(chunk_bytes);
            let chunk: Vec<u8> = self.pending.iter().take(n).copied().collect();
            encoded.clear();
            convert.push(&chunk, &mut encoded);
            if !encoded.is_empty() {
                match &plan.framing {
                    AudioFraming::Binary => socket.send_binary(&encoded).await?,
                    AudioFraming::Base64Text(wrap) => {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(&encoded);
                        socket.send_text(&format!("{}{b64}{}", wrap.prefix, wrap.suffix)).await?
                    }
                }
            }
            self.pending.drain(..n);
            self.stats.audio_sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
            sent = true;
        }
        Ok(sent)
    }
}

/// Send a plugin's message.
async fn send_message(socket: &mut Socket, message: &types::WsMessage) -> Result<(), String> {
    match message {
        types::WsMessage::Text(text) => socket.send_text(text).await,
        types::WsMessage::Binary(data) => socket.send_binary(data).await,
    }
}

/// Why the connection ended after a failed write: the vendor's close or drop if the reader
/// saw one within a second, else the write error.
async fn ended(socket: &mut Socket, write_error: String) -> Disconnect {
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, socket.recv()).await {
        match incoming {
            Incoming::Closed { code, reason } => return Disconnect::Closed(WsClose { code, reason: cut(reason, 123) }),
            Incoming::Dropped(why) => return Disconnect::Dropped(why),
            _ => {}
        }
    }
    Disconnect::Dropped(write_error)
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The delay before reconnect attempt `retries` (1 first): 100 ms doubling, at most 5 s.
fn backoff(retries: u32) -> Duration {
    let factor = 1u32 << retries.saturating_sub(1).min(10);
    (BACKOFF_MIN * factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_5_s() {
        let delays: Vec<u64> = (0..10).map(|r| backoff(r).as_millis() as u64).collect();
        assert_eq!(delays, [100, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn cut_respects_characters() {
        assert_eq!(cut("héllo".into(), 2), "h");
        assert_eq!(cut("abc".into(), 123), "abc");
    }
}
