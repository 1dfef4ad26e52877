//! One WebSocket connection: a reader that turns frames into plugin events (in order, under the
//! session lock) and a writer that drains the connection's outbound queue.
//!
//! Close handling (RFC 6455 section 7): a client close is echoed and ends the connection; a
//! close requested by the plugin, by a full send queue (1008), by an oversized message (1009)
//! or by invalid UTF-8 (1007) is sent, after which the peer has `CLOSE_GRACE` to answer.

use crate::bus::{Bus, ConnParts, Next, Outbound, Outbox, SessionCell};
use crate::media::{FrameOutcome, MediaEvent};
use crate::plugins::{ConnectInfo, Event, Fault, Plugin};
use crate::server::tls::TlsStream;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{Notify, mpsc};

/// How long a peer has to answer our close frame before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What the router learned at the upgrade.
pub struct Accepted {
    pub route: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub claims: Option<String>,
    pub remote_addr: String,
    pub max_message_bytes: usize,
    pub send_queue_frames: usize,
    /// The route's audio format when it is a media route.
    pub media: Option<crate::media::format::Format>,
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
    ws.set_max_message_size(accepted.max_message_bytes);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (rd, wr) = ws.split(split);
    let mut rd = fastwebsockets::FragmentCollectorRead::new(rd);

    let outbox = Arc::new(Outbox::new(accepted.send_queue_frames));
    let closing = Arc::new(Notify::new());
    let session = Arc::new(SessionCell::default());
    let id = bus.register(ConnParts { plugin: plugin.name().into(), outbox: outbox.clone(), session: session.clone() });
    // For a call this is the media runtime, beside the clock that feeds the writer frames.
    let writer = tokio::spawn(write_loop(wr, outbox.clone(), closing.clone()));
    let events = Events { plugin: plugin.clone(), session, id, on: events_on };
    let media = accepted.media.map(|format| media_events(id, format, &events));

    let info = ConnectInfo {
        id,
        route: accepted.route,
        path: accepted.path,
        query: accepted.query,
        claims: accepted.claims,
        remote_addr: accepted.remote_addr,
    };
    let code = match events.dispatch(Event::Open(info)).await {
        Ok(()) => read_loop(&mut rd, &events, &outbox, &closing, media.is_some()).await,
        Err(fault) => {
            let _ = outbox.push(Outbound::Close(1011, fault.code().into()));
            await_close(&mut rd, &outbox).await
        }
    };
    if let Some(forwarder) = media {
        // The call's media session ends; let its last events reach the plugin before on-close.
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
}

/// Register a connection of a media route with the media engine and forward its media events
/// to the plugin, in order, as session events. The task ends when the call is unregistered.
fn media_events(id: u64, format: crate::media::format::Format, events: &Events) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    events.plugin.services().media.register(id, events.plugin.name(), format, tx);
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
                    Ok(text) => Event::Text(id, text),
                    Err(_) => return fail(rd, outbox, 1007, "invalid UTF-8").await,
                },
                OpCode::Binary if media => match events.plugin.services().media.push_frame(id, &frame.payload) {
                    FrameOutcome::Accepted => continue,
                    FrameOutcome::NotAnswered => Event::Binary(id, Vec::from(frame.payload)),
                    FrameOutcome::Rejected(reason) => Event::Media(id, MediaEvent::FrameRejected(reason)),
                },
                OpCode::Binary => Event::Binary(id, Vec::from(frame.payload)),
                OpCode::Close => return close_code(&frame.payload),
                _ => continue,
            },
            Err(WebSocketError::FrameTooLarge) => return fail(rd, outbox, 1009, "message too big").await,
            Err(WebSocketError::InvalidUTF8) => return fail(rd, outbox, 1007, "invalid UTF-8").await,
            Err(WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) | WebSocketError::ConnectionClosed) => {
                return 1006;
            }
            Err(e) => return fail(rd, outbox, 1002, &e.to_string()).await,
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
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: WebSocketWrite<W>, outbox: Arc<Outbox>, closing: Arc<Notify>) {
    loop {
        let out = match outbox.next().await {
            Next::Frame(out) => out,
            Next::Overflowed => Outbound::Close(1008, "send queue full".into()),
            Next::Done => break,
        };
        let (result, done) = match &out {
            Outbound::Text(b) => (wr.write_frame(Frame::text(Payload::Borrowed(b))).await, false),
            Outbound::Binary(b) => (wr.write_frame(Frame::binary(Payload::Borrowed(b))).await, false),
            Outbound::Pong(b) => (wr.write_frame(Frame::pong(Payload::Borrowed(b))).await, false),
            Outbound::Close(code, reason) => {
                (wr.write_frame(Frame::close(*code, truncate_reason(reason).as_bytes())).await, true)
            }
        };
        if result.is_err() || done {
            break;
        }
    }
    outbox.close();
    closing.notify_one();
}

/// Close reasons are at most 123 bytes (RFC 6455 section 5.5); cut at a character boundary.
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
