//! A vendor WebSocket split for a stream's event loop: a reader task turns frames into whole
//! messages on a bounded channel (receiving from it is cancel-safe, unlike reading the socket
//! inside `select!`), and the loop writes through the write half, each write bounded in time.

use crate::net::{MAX_WS_MESSAGE_BYTES, StreamPermit, WsConnection};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

/// Messages the reader may run ahead of the loop by.
const INCOMING_CAPACITY: usize = 64;

type Io = TokioIo<Upgraded>;

/// What the reader saw.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A whole text message.
    Text(String),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping to answer with this payload.
    Ping(Bytes),
    /// The vendor's close frame (1005 when it had no code).
    Closed { code: u16, reason: String },
    /// The connection broke (no close frame): the reason.
    Dropped(String),
}

/// An open vendor WebSocket: the write half and the reader's channel. Dropping it stops the
/// reader and closes the socket.
pub(super) struct Socket {
    writer: WebSocketWrite<WriteHalf<Io>>,
    incoming: mpsc::Receiver<Incoming>,
    reader: tokio::task::JoinHandle<()>,
    write_timeout: Duration,
    _permit: StreamPermit,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Socket {
    /// Split `conn`; writes wait at most `write_timeout` each.
    pub fn new(conn: WsConnection, write_timeout: Duration) -> Socket {
        let (ws, permit) = conn.into_parts();
        let (read, writer) = ws.split(tokio::io::split);
        let (tx, incoming) = mpsc::channel(INCOMING_CAPACITY);
        let reader = tokio::spawn(read_loop(read, tx));
        Socket { writer, incoming, reader, write_timeout, _permit: permit }
    }

    /// The next thing the reader saw; `None` once it stopped (after `Closed` or `Dropped`).
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Send a text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.write(Frame::text(Payload::Borrowed(text.as_bytes()))).await
    }

    /// Send a binary message.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), String> {
        self.write(Frame::binary(Payload::Borrowed(data))).await
    }

    /// Answer a ping.
    pub async fn pong(&mut self, payload: &[u8]) -> Result<(), String> {
        self.write(Frame::pong(Payload::Borrowed(payload))).await
    }

    /// Send a close frame (`code`, `reason` of at most 123 bytes).
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), String> {
        self.write(Frame::close(code, reason.as_bytes())).await
    }

    async fn write(&mut self, frame: Frame<'_>) -> Result<(), String> {
        match tokio::time::timeout(self.write_timeout, self.writer.write_frame(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("WebSocket write: {e}")),
            Err(_) => Err(format!("WebSocket write made no progress for {} ms", self.write_timeout.as_millis())),
        }
    }
}

/// Read frames into whole messages (bounded by [`MAX_WS_MESSAGE_BYTES`]) until the socket
/// closes or breaks, or the loop goes away.
async fn read_loop(mut read: WebSocketRead<ReadHalf<Io>>, tx: mpsc::Sender<Incoming>) {
    let mut partial: Option<(OpCode, Vec<u8>)> = None;
    loop {
        // Pings and closes are answered by the loop (`Incoming::Ping`, `Closed`), not here.
        let mut obligated = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
        let frame = match read.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(e) => {
                let _ = tx.send(Incoming::Dropped(format!("WebSocket read: {e}"))).await;
                return;
            }
        };
        let message = match (frame.opcode, &mut partial) {
            (OpCode::Text | OpCode::Binary, None) if frame.fin => Some((frame.opcode, frame.payload.to_vec())),
            (OpCode::Text | OpCode::Binary, None) => {
                partial = Some((frame.opcode, frame.payload.to_vec()));
                None
            }
            (OpCode::Continuation, Some((opcode, bytes))) => {
                if bytes.len() + frame.payload.len() > MAX_WS_MESSAGE_BYTES {
                    let _ =
                        tx.send(Incoming::Dropped(format!("message larger than {MAX_WS_MESSAGE_BYTES} bytes"))).await;
                    return;
                }
                bytes.extend_from_slice(&frame.payload);
                if frame.fin { Some((*opcode, std::mem::take(bytes))).inspect(|_| partial = None) } else { None }
            }
            (OpCode::Ping, _) => {
                if tx.send(Incoming::Ping(Bytes::copy_from_slice(&frame.payload))).await.is_err() {
                    return;
                }
                None
            }
            (OpCode::Pong, _) => None,
            (OpCode::Close, _) => {
                let p = &frame.payload[..];
                let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                let _ = tx.send(Incoming::Closed { code, reason }).await;
                return;
            }
            _ => {
                let _ = tx.send(Incoming::Dropped("WebSocket fragments out of order".into())).await;
                return;
            }
        };
        let Some((opcode, bytes)) = message else { continue };
        let incoming = if opcode == OpCode::Text {
            match String::from_utf8(bytes) {
                Ok(text) => Incoming::Text(text),
                Err(_) => Incoming::Dropped("text message is not UTF-8".into()),
            }
        } else {
            Incoming::Binary(bytes.into())
        };
        let stop = matches!(incoming, Incoming::Dropped(_));
        if tx.send(incoming).await.is_err() || stop {
            return;
        }
    }
}
