//! One WebSocket connection: a reader that turns frames into plugin events (in order, under the
//! session lock) and a writer that drains the connection's outbound queue.
//!
//! Close handling (RFC 6455 section 7): a client close is echoed and ends the connection; a
//! close requested by the plugin, by a full send queue (1008), by an oversized message (1009,
//! all fragments counted, refused by the [`FrameGuard`] before they are buffered), by a protocol
//! violation (1002: unmasked frames, control frames over 125 bytes, bad fragments or opcodes),
//! by invalid UTF-8 (1007) or by a client silent for the idle timeout (1001; it is pinged after
//! half of it) is sent, after which the peer has `CLOSE_GRACE` to answer. A frame that cannot
//! be written within the write timeout drops the connection.

use super::guard::{FrameGuard, Violation};
use super::limits::{AddressPermit, CloseReason, EdgeMetrics, Permit};
use crate::bus::{Bus, ConnParts, Next, Outbound, Outbox, SessionCell};
use crate::config::ListenerConfig;
use crate::media::{FrameOutcome, MediaEvent, TextOutcome};
use crate::plugins::{ConnectInfo, Event, Fault, Plugin};
use crate::server::tls::TlsStream;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, Sleep};

/// How long a peer has to answer our close frame before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What the router learned at the upgrade.
pub struct Accepted {
    pub route: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub claims: Option<String>,
    pub remote_addr: String,
    pub limits: Limits,
    /// The route's audio format and speech providers when it is a media route.
    pub media: Option<MediaRoute>,
    /// The connection's place in the edge's counts, held until the socket closes.
    pub held: (Arc<Permit>, Option<AddressPermit>),
    pub edge: Arc<EdgeMetrics>,
}

/// What a media route gives its calls.
#[derive(Debug, Clone)]
pub struct MediaRoute {
    /// The wire audio format.
    pub format: crate::media::format::Format,
    /// How the audio travels on the socket (binary messages or Twilio's JSON).
    pub framing: crate::media::format::Framing,
    /// The route's `speech` choice over `[speech]`.
    pub speech: crate::config::SpeechChoice,
}

/// A listener's bounds on one WebSocket connection (`[listeners.<name>]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message, all fragments together, bytes (1009 beyond).
    pub max_message_bytes: usize,
    /// Outbound frames and bytes queued before the client is dropped as a slow consumer (1008).
    pub send_queue_frames: usize,
    pub send_queue_bytes: usize,
    /// Silence from the client before it is closed (1001); pinged after half of it.
    pub idle_timeout: Duration,
    /// Time one outbound frame may take to reach the socket.
    pub write_timeout: Duration,
}

impl Limits {
    /// The limits a listener's config sets.
    pub fn of(config: &ListenerConfig) -> Limits {
        Limits {
            max_message_bytes: config.max_message_bytes,
            send_queue_frames: config.send_queue_frames,
            send_queue_bytes: config.send_queue_bytes,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
        }
    }
}

/// Serve one upgraded connection until it closes.
///
/// The connection is taken out of hyper's upgrade wrapper. A TCP connection is split into owned
/// halves, so its reader and writer never share a lock; a TLS connection is split with
/// `tokio::io::split` (one TLS session: its halves take a short lock per read or write). A
/// call (a connection of a media route) also moves to the media runtime: its socket is
/// re-registered there, so reading its frames, the media clock's 20 ms ticks and writing its
/// frames never queue behind plugin events or HTTP work on the main runtime. Its plugin events
/// still run on the main runtime. Other connections stay where hyper accepted them.
pub async fn serve(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    accepted: Accepted,
    plugin: Arc<Plugin>,
    bus: Arc<Bus>,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    match detach(ws) {
        Detached::Other(ws) => {
            tracing::debug!("upgraded connection is neither TCP nor TLS: served as it is, on this runtime");
            run(*ws, tokio::io::split, accepted, plugin, bus, None).await
        }
        Detached::Tcp(tcp, buffered) => {
            // Bytes hyper read past the handshake come first.
            let split = move |s: tokio::net::TcpStream| {
                let (r, w) = s.into_split();
                (std::io::Cursor::new(buffered.clone()).chain(r), w)
            };
            if accepted.media.is_none() {
                return run(WebSocket::after_handshake(tcp, Role::Server), split, accepted, plugin, bus, None).await;
            }
            match tcp.into_std() {
                Ok(socket) => run_call(socket, tokio::net::TcpStream::from_std, split, accepted, plugin, bus),
                Err(e) => tracing::warn!(error = %e, "could not deregister a call's socket"),
            }
        }
        Detached::Tls(mut tls, buffered) => {
            let split = move |s: TlsStream| {
                let (r, w) = tokio::io::split(s);
                (std::io::Cursor::new(buffered.clone()).chain(r), w)
            };
            if accepted.media.is_none() {
                return run(WebSocket::after_handshake(*tls, Role::Server), split, accepted, plugin, bus, None).await;
            }
            match tls.get_mut().0.take_socket() {
                Ok(socket) => {
                    let attach = move |socket| tls.get_mut().0.attach(socket).map(|()| *tls);
                    run_call(socket, attach, split, accepted, plugin, bus)
                }
                Err(e) => tracing::warn!(error = %e, "could not deregister a call's socket"),
            }
        }
    }
}

/// Run a call on the media runtime: `attach` registers its `socket` (deregistered from this
/// runtime) there and gives the stream to serve.
fn run_call<S, R, W>(
    socket: std::net::TcpStream,
    attach: impl FnOnce(std::net::TcpStream) -> std::io::Result<S> + Send + 'static,
    split: impl Fn(S) -> (R, W) + Send + 'static,
    accepted: Accepted,
    plugin: Arc<Plugin>,
    bus: Arc<Bus>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let events_on = Some(tokio::runtime::Handle::current());
    plugin.services().media.runtime().spawn(async move {
        match attach(socket) {
            Ok(stream) => {
                run(WebSocket::after_handshake(stream, Role::Server), split, accepted, plugin, bus, events_on).await
            }
            Err(e) => tracing::warn!(error = %e, "could not move a call to its media thread"),
        }
    });
}

type Upgrade = WebSocket<TokioIo<Upgraded>>;

/// An upgraded connection taken out of hyper's wrapper, with the bytes hyper had already read
/// past the handshake (decrypted, for TLS).
enum Detached {
    Tcp(tokio::net::TcpStream, Bytes),
    Tls(Box<TlsStream>, Bytes),
    /// Neither: handed back as it was.
    Other(Box<Upgrade>),
}

fn detach(ws: Upgrade) -> Detached {
    let upgraded = ws.into_inner().into_inner();
    let upgraded = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => return Detached::Tcp(parts.io.into_inner(), parts.read_buf),
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<TlsStream>>() {
        Ok(parts) => Detached::Tls(Box::new(parts.io.into_inner()), parts.read_buf),
        Err(upgraded) => Detached::Other(Box::new(WebSocket::after_handshake(TokioIo::new(upgraded), Role::Server))),
    }
}

/// Runs a connection's plugin events, in order.
#[derive(Clone)]
struct Events {
    plugin: Arc<Plugin>,
    session: Arc<SessionCell>,
    id: u64,
    /// Set when the connection runs on the media runtime: its events run on this (the main)
    /// runtime instead, so a slow event never delays a frame.
    on: Option<tokio::runtime::Handle>,
}

impl Events {
    async fn dispatch(&self, event: Event) -> Result<(), Fault> {
        match &self.on {
            // Dispatch futures are boxed: they hold wasmtime call state only while an event
            // runs, so an idle connection's task stays small.
            None => Box::pin(self.plugin.dispatch_in_session(self.id, &self.session, event)).await,
            Some(main) => {
                let this = self.clone();
                let run = async move { this.plugin.dispatch_in_session(this.id, &this.session, event).await };
                main.spawn(run).await.unwrap_or_else(|e| Err(Fault::Trap(format!("event task failed: {e}"))))
            }
        }
    }
}

/// The connection's life: register it, dispatch `open`, read until it closes, dispatch
/// `close`, unregister. Plugin events run on `events_on` when given (see [`Events::on`]).
async fn run<S, R, W>(
    mut ws: WebSocket<S>,
    split: impl Fn(S) -> (R, W),
    accepted: Accepted,
    plugin: Arc<Plugin>,
    bus: Arc<Bus>,
    events_on: Option<tokio::runtime::Handle>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = accepted.limits;
    let outbox = Arc::new(Outbox::new(limits.send_queue_frames, limits.send_queue_bytes));
    // fastwebsockets refuses frames of at least this size; the guard enforces the real bound
    // (whole messages) first.
    ws.set_max_message_size(limits.max_message_bytes.saturating_add(1));
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (rd, wr) = ws.split(|s| {
        let (r, w) = split(s);
        (Guarded::new(r, &limits, outbox.clone()), w)
    });
    let mut rd = fastwebsockets::FragmentCollectorRead::new(rd);

    let closing = Arc::new(Notify::new());
    let session = Arc::new(SessionCell::default());
    let id = bus.register(ConnParts { plugin: plugin.name().into(), outbox: outbox.clone(), session: session.clone() });
    // For a call this is the media runtime, beside the clock that feeds the writer frames.
    let writer =
        tokio::spawn(write_loop(wr, outbox.clone(), closing.clone(), limits.write_timeout, accepted.edge.clone()));
    let events = Events { plugin: plugin.clone(), session, id, on: events_on };
    let media = accepted.media.map(|route| media_events(id, route, &events));

    let info = ConnectInfo {
        id,
        route: accepted.route,
        path: accepted.path,
        query: accepted.query,
        claims: accepted.claims,
        remote_addr: accepted.remote_addr,
    };
    let code = match events.dispatch(Event::Open(info)).await {
        Ok(()) => read_loop(&mut rd, &events, &outbox, &closing, media.is_some(), &accepted.edge).await,
        Err(fault) => {
            let _ = outbox.push(Outbound::Close(1011, fault.code().into()));
            await_close(&mut rd, &outbox).await
        }
    };
    if let Some(forwarder) = media {
        // The call's media session ends; let its last events reach the plugin before on-close.
        plugin.services().speech.unregister(id);
        plugin.services().media.unregister(id);
        let abort = forwarder.abort_handle();
        if tokio::time::timeout(CLOSE_GRACE, forwarder).await.is_err() {
            abort.abort();
        }
    }
    let _ = events.dispatch(Event::Close(id, code)).await;
    bus.unregister(id);
    outbox.close();
    let _ = writer.await;
    drop(accepted.held);
}

/// Register a connection of a media route with the media engine and forward its media events
/// to the plugin, in order, as session events. The task ends when the call is unregistered.
fn media_events(id: u64, route: MediaRoute, events: &Events) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let services = events.plugin.services();
    services.media.register(id, events.plugin.name(), route.format, route.framing, tx);
    services.speech.register(id, events.plugin.name(), route.speech);
    let events = events.clone();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let _ = events.dispatch(Event::Media(id, event)).await;
        }
    })
}

type Reader<R> = fastwebsockets::FragmentCollectorRead<R>;

/// Read frames and dispatch them until the connection closes; returns the close code the
/// plugin's `on-close` sees (1006 when the connection dropped without a close frame).
async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut Reader<R>,
    events: &Events,
    outbox: &Outbox,
    closing: &Notify,
    media: bool,
    edge: &EdgeMetrics,
) -> u16 {
    let id = events.id;
    let mut obligated = obligated_sender(outbox);
    loop {
        let frame = tokio::select! {
            biased;
            _ = closing.notified() => return await_close(rd, outbox).await,
            frame = rd.read_frame(&mut obligated) => frame,
        };
        let event = match frame {
            Ok(frame) => match frame.opcode {
                // FragmentCollectorRead guarantees complete, valid UTF-8 text messages.
                OpCode::Text => match String::from_utf8(Vec::from(frame.payload)) {
                    Ok(text) if media => match events.plugin.services().media.push_text(id, &text) {
                        TextOutcome::Plugin => Event::Text(id, text),
                        TextOutcome::Taken => continue,
                        TextOutcome::Rejected(reason) => Event::Media(id, MediaEvent::FrameRejected(reason)),
                    },
                    Ok(text) => Event::Text(id, text),
                    Err(_) => return fail(rd, outbox, 1007, "invalid UTF-8").await,
                },
                OpCode::Binary if media => match events.plugin.services().media.push_frame(id, &frame.payload) {
                    FrameOutcome::Accepted | FrameOutcome::RejectedQuietly => continue,
                    FrameOutcome::NotAnswered => Event::Binary(id, Vec::from(frame.payload)),
                    FrameOutcome::Rejected(reason) => Event::Media(id, MediaEvent::FrameRejected(reason)),
                },
                OpCode::Binary => Event::Binary(id, Vec::from(frame.payload)),
                OpCode::Close => return close_code(&frame.payload),
                _ => continue,
            },
            Err(e) => {
                let (code, reason, why) = match &e {
                    WebSocketError::IoError(io) => match Refused::of(io) {
                        Some(Refused::Frame(v)) => (
                            v.close_code(),
                            v.to_string(),
                            if v.close_code() == 1009 { CloseReason::MessageTooBig } else { CloseReason::Protocol },
                        ),
                        Some(Refused::Idle) => (1001, "idle timeout".to_string(), CloseReason::Idle),
                        None => return 1006,
                    },
                    WebSocketError::FrameTooLarge => (1009, "message too big".into(), CloseReason::MessageTooBig),
                    WebSocketError::InvalidUTF8 => (1007, "invalid UTF-8".into(), CloseReason::Protocol),
                    WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => return 1006,
                    other => (1002, other.to_string(), CloseReason::Protocol),
                };
                edge.closed(why);
                return fail(rd, outbox, code, &reason).await;
            }
        };
        // A fault is reported to the client by dispatch_in_session; the connection goes on.
        let _ = events.dispatch(event).await;
    }
}

/// Close with `code` after a protocol violation; returns `code`.
async fn fail<R: AsyncRead + Unpin>(rd: &mut Reader<R>, outbox: &Outbox, code: u16, reason: &str) -> u16 {
    let _ = outbox.push(Outbound::Close(code, reason.to_string()));
    await_close(rd, outbox).await;
    code
}

/// After our close frame went out: wait (bounded) for the peer's close reply.
async fn await_close<R: AsyncRead + Unpin>(rd: &mut Reader<R>, outbox: &Outbox) -> u16 {
    let mut obligated = obligated_sender(outbox);
    let wait = async {
        loop {
            match rd.read_frame(&mut obligated).await {
                Ok(f) if f.opcode == OpCode::Close => return close_code(&f.payload),
                Ok(_) => continue,
                Err(_) => return 1006,
            }
        }
    };
    tokio::time::timeout(CLOSE_GRACE, wait).await.unwrap_or(1006)
}

/// Frames fastwebsockets must send in reply (pong, close echo) go through the writer.
fn obligated_sender(
    outbox: &Outbox,
) -> impl FnMut(Frame<'_>) -> futures_util::future::Ready<Result<(), &'static str>> + '_ {
    move |frame: Frame<'_>| {
        let out = match frame.opcode {
            OpCode::Close => {
                let code = close_code(&frame.payload);
                let reason =
                    frame.payload.get(2..).map(|r| String::from_utf8_lossy(r).into_owned()).unwrap_or_default();
                Outbound::Close(if code == 1005 { 1000 } else { code }, reason)
            }
            _ => Outbound::Pong(Bytes::copy_from_slice(&frame.payload)),
        };
        // A refused push means the connection is already closing.
        let _ = outbox.push(out);
        futures_util::future::ready(Ok(()))
    }
}

fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

/// Drain the outbound queue onto the socket. Ends after sending a close frame, on a write
/// error, or when every sender is gone.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: WebSocketWrite<W>,
    outbox: Arc<Outbox>,
    closing: Arc<Notify>,
    write_timeout: Duration,
    edge: Arc<EdgeMetrics>,
) {
    loop {
        let out = match outbox.next().await {
            Next::Frame(out) => out,
            Next::Overflowed => {
                edge.closed(CloseReason::SlowConsumer);
                Outbound::Close(1008, "send queue full".into())
            }
            Next::Done => break,
        };
        let done = matches!(out, Outbound::Close(..));
        let frame = match &out {
            Outbound::Text(b) => Frame::text(Payload::Borrowed(b)),
            Outbound::Binary(b) => Frame::binary(Payload::Borrowed(b)),
            Outbound::Pong(b) => Frame::pong(Payload::Borrowed(b)),
            Outbound::Ping(b) => Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b)),
            Outbound::Close(code, reason) => Frame::close(*code, truncate_reason(reason).as_bytes()),
        };
        match tokio::time::timeout(write_timeout, wr.write_frame(frame)).await {
            Ok(Ok(())) if !done => {}
            Ok(_) => break,
            Err(_) => {
                edge.closed(CloseReason::WriteTimeout);
                break;
            }
        }
    }
    outbox.close();
    closing.notify_one();
}

/// Close reasons are at most 123 bytes (RFC 6455 section 5.5); cut at a character boundary.
/// Complete the handshake of `req` and close at once with `code` and `reason` (a refused token
/// on a route with `refused_token_close`): a browser sees the code, which it cannot for an HTTP
/// refusal. The client's close is awaited for at most a second; `held` (the connection's
/// place in the edge's counts) is kept until then.
pub fn refuse_after_upgrade(
    req: &mut hyper::Request<hyper::body::Incoming>,
    code: u16,
    reason: String,
    held: impl Send + 'static,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(parts) => parts,
        Err(e) => return super::json_error(hyper::StatusCode::BAD_REQUEST, "bad_handshake", &e.to_string()),
    };
    tokio::spawn(async move {
        let _held = held;
        let Ok(mut ws) = upgrade.await else { return };
        ws.set_auto_close(false);
        let close = Frame::close(code, truncate_reason(&reason).as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            ws.write_frame(close).await?;
            // Until the client's close (or anything else ends it).
            while ws.read_frame().await?.opcode != OpCode::Close {}
            Ok::<_, WebSocketError>(())
        })
        .await;
    });
    let (parts, _) = response.into_parts();
    hyper::Response::from_parts(parts, http_body_util::Full::default())
}

fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Why [`Guarded`] ended a client's stream, carried inside the `io::Error` fastwebsockets
/// hands back.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// The frame guard refused a frame header.
    #[error("{0}")]
    Frame(Violation),
    /// Nothing arrived for the idle timeout, a ping included.
    #[error("idle timeout")]
    Idle,
}

impl Refused {
    fn of(e: &std::io::Error) -> Option<&Refused> {
        e.get_ref()?.downcast_ref::<Refused>()
    }

    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

/// The read half of a client socket behind the [`FrameGuard`] and the idle timer: bytes reach
/// fastwebsockets only once the guard passed their frame headers; a client silent for half the
/// idle timeout gets a ping, silent for all of it ends the stream.
struct Guarded<R> {
    inner: R,
    guard: FrameGuard,
    /// The refusal to report on the next read, after the bytes before it were handed on.
    pending: Option<Refused>,
    /// Fires at the next idle check; reset lazily (a read only records the time).
    timer: Pin<Box<Sleep>>,
    last_read: Instant,
    idle_timeout: Duration,
    pinged: bool,
    outbox: Arc<Outbox>,
}

impl<R> Guarded<R> {
    fn new(inner: R, limits: &Limits, outbox: Arc<Outbox>) -> Guarded<R> {
        let now = Instant::now();
        Guarded {
            inner,
            guard: FrameGuard::new(limits.max_message_bytes),
            pending: None,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout / 2)),
            last_read: now,
            idle_timeout: limits.idle_timeout,
            pinged: false,
            outbox,
        }
    }

    /// Poll the idle timer: `Ready` with the error when the client is gone.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Refused> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let half = self.idle_timeout / 2;
            if now < self.last_read + half {
                // Bytes arrived since the timer was set: check again half a timeout after them.
                self.pinged = false;
                self.timer.as_mut().reset(self.last_read + half);
            } else if !self.pinged {
                self.pinged = true;
                let _ = self.outbox.push(Outbound::Ping(Bytes::new()));
                // The client has the other half of the timeout to answer.
                self.timer.as_mut().reset(now + half);
            } else {
                return Poll::Ready(Refused::Idle);
            }
        }
        Poll::Pending
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Guarded<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(refused) = this.pending.take() {
            return Poll::Ready(Err(refused.into_io()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.last_read = Instant::now();
                this.pinged = false;
                if let Err((passed, violation)) = this.guard.inspect(new) {
                    buf.set_filled(before + passed);
                    if passed == 0 {
                        return Poll::Ready(Err(Refused::Frame(violation).into_io()));
                    }
                    this.pending = Some(Refused::Frame(violation));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Ready(refused) => Poll::Ready(Err(refused.into_io())),
                Poll::Pending => Poll::Pending,
            },
            error => error,
        }
    }
}
