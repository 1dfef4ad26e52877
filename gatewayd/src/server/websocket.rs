//! One WebSocket connection: a reader that turns frames into plugin events (in order, under the
//! session lock) and a writer that drains the connection's outbound queue.
//!
//! Close handling (RFC 6455 section 7): a client close is echoed and ends the connection; a
//! close requested by the plugin, by a full send queue (1008), by an oversized message (1009)
//! or by invalid UTF-8 (1007) is sent, after which the peer has `CLOSE_GRACE` to answer.

use crate::bus::{Bus, ConnParts, Next, Outbound, Outbox, SessionCell};
use crate::media::{FrameOutcome, MediaEvent};
use crate::plugins::{ConnectInfo, Event, Plugin};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::WriteHalf;
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
pub async fn serve(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    accepted: Accepted,
    plugin: Arc<Plugin>,
    bus: Arc<Bus>,
) {
    let mut ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    ws.set_max_message_size(accepted.max_message_bytes);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let (rd, wr) = ws.split(tokio::io::split);
    let mut rd = fastwebsockets::FragmentCollectorRead::new(rd);

    let outbox = Arc::new(Outbox::new(accepted.send_queue_frames));
    let closing = Arc::new(Notify::new());
    let session = Arc::new(SessionCell::default());
    let id = bus.register(ConnParts { plugin: plugin.name().into(), outbox: outbox.clone(), session: session.clone() });
    let media = accepted.media.map(|format| media_events(id, format, &plugin, &session));
    // A call's writer runs on its media thread, beside the call task that feeds it frames.
    let write = write_loop(wr, outbox.clone(), closing.clone());
    let writer = match &media {
        Some((_, thread)) => thread.spawn(write),
        None => tokio::spawn(write),
    };
    let media = media.map(|(forwarder, _)| forwarder);

    let info = ConnectInfo {
        id,
        route: accepted.route,
        path: accepted.path,
        query: accepted.query,
        claims: accepted.claims,
        remote_addr: accepted.remote_addr,
    };
    // Dispatch futures are boxed: they hold wasmtime call state only while an event runs, so an
    // idle connection's task stays small.
    let code = match Box::pin(plugin.dispatch_in_session(id, &session, Event::Open(info))).await {
        Ok(()) => read_loop(&mut rd, id, &plugin, &session, &outbox, &closing, media.is_some()).await,
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
    let _ = Box::pin(plugin.dispatch_in_session(id, &session, Event::Close(id, code))).await;
    bus.unregister(id);
    outbox.close();
    let _ = writer.await;
}

/// Register a connection of a media route with the media engine and forward its media events
/// to the plugin, in order, as session events. Returns the forwarding task, which ends when the
/// call is unregistered, and the media thread the call runs on.
fn media_events(
    id: u64,
    format: crate::media::format::Format,
    plugin: &Arc<Plugin>,
    session: &Arc<SessionCell>,
) -> (tokio::task::JoinHandle<()>, tokio::runtime::Handle) {
    let (events, mut rx) = mpsc::unbounded_channel();
    let thread = plugin.services().media.register(id, plugin.name(), format, events);
    let (plugin, session) = (plugin.clone(), session.clone());
    let forwarder = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let _ = plugin.dispatch_in_session(id, &session, Event::Media(id, event)).await;
        }
    });
    (forwarder, thread)
}

type Reader = fastwebsockets::FragmentCollectorRead<tokio::io::ReadHalf<TokioIo<Upgraded>>>;

/// Read frames and dispatch them until the connection closes; returns the close code the
/// plugin's `on-close` sees (1006 when the connection dropped without a close frame).
async fn read_loop(
    rd: &mut Reader,
    id: u64,
    plugin: &Arc<Plugin>,
    session: &SessionCell,
    outbox: &Outbox,
    closing: &Notify,
    media: bool,
) -> u16 {
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
                OpCode::Binary if media => {
                    match plugin.services().media.push_frame(id, Bytes::from(Vec::from(frame.payload))) {
                        FrameOutcome::Accepted => continue,
                        FrameOutcome::NotAnswered(data) => Event::Binary(id, Vec::from(data)),
                        FrameOutcome::Rejected(reason) => Event::Media(id, MediaEvent::FrameRejected(reason)),
                    }
                }
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
        let _ = Box::pin(plugin.dispatch_in_session(id, session, event)).await;
    }
}

/// Close with `code` after a protocol violation; returns `code`.
async fn fail(rd: &mut Reader, outbox: &Outbox, code: u16, reason: &str) -> u16 {
    let _ = outbox.push(Outbound::Close(code, reason.to_string()));
    await_close(rd, outbox).await;
    code
}

/// After our close frame went out: wait (bounded) for the peer's close reply.
async fn await_close(rd: &mut Reader, outbox: &Outbox) -> u16 {
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
async fn write_loop(mut wr: WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>, outbox: Arc<Outbox>, closing: Arc<Notify>) {
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
