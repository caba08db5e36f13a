//! One connection's WebSocket, shared by its session's reader and writer, and the path the
//! connection's outgoing frames take: encoded straight into the TLS stream, not through
//! tungstenite's sink.
//!
//! Why: at one delivery per write, the sink's plumbing (a copy into tungstenite's write buffer,
//! which then stays at the size of the largest batch in every connection; futures' split lock,
//! which registers a waker on every poll; tokio-tungstenite's waker proxies on every call) was
//! ~9 % of the server's CPU at 100 msg/s (`bench/profile.sh broadcast`). Here a batch of frames
//! is encoded into one per-thread scratch buffer and handed to the TLS stream a record's worth
//! at a time. tungstenite still reads, answers pings and closes. It writes on its own only a
//! pong or its reply to the peer's Close, so: once a ping was read, its pending pong is flushed
//! before our frames (a pong cut in two by a record boundary must not have ours in between),
//! and once the peer's Close was read no data frame is written (nothing may follow a Close).
//! The reader and the writer run in the session's one task; the only other hand on the lock is
//! a fan-out writing through to an idle member ([`Socket::write_now`], see room.rs's
//! `WriteThrough`), which never waits for it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

use crate::room::Outgoing;
use crate::tls_io::{TlsStream, WRITE_CHUNK};

pub type Ws = WebSocketStream<TlsStream>;

thread_local! {
    /// Where a batch's frames are encoded before the TLS stream seals them: one per worker
    /// thread rather than one per connection (an idle connection keeps none). At most a
    /// record's worth.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The socket of one session.
pub struct Socket {
    /// Taken by the session when it ends (the closing handshake's last steps own it).
    ws: Mutex<Option<Ws>>,
    /// A ping was read: tungstenite may hold its pong, to go out before our frames.
    pinged: AtomicBool,
    /// The peer's Close was read: tungstenite has queued its reply; no data may follow it.
    peer_closed: AtomicBool,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").finish_non_exhaustive()
    }
}

impl Socket {
    pub fn new(ws: Ws) -> Self {
        Socket {
            ws: Mutex::new(Some(ws)),
            pinged: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Ws>> {
        // Nothing panics while holding it; if something did, the socket is still whole.
        self.ws.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The socket, for the end of the session; from then on nothing else writes to it.
    pub fn take(&self) -> Option<Ws> {
        self.lock().take()
    }

    /// Run `f` on the socket, or report it closed once the session has taken it.
    fn with<T>(&self, f: impl FnOnce(&mut Ws) -> Poll<Result<T, Error>>) -> Poll<Result<T, Error>> {
        match self.lock().as_mut() {
            Some(ws) => f(ws),
            None => Poll::Ready(Err(Error::AlreadyClosed)),
        }
    }

    /// The next message from the peer (tungstenite answers pings and Close on its own).
    pub async fn next(&self) -> Option<Result<Message, Error>> {
        let msg = std::future::poll_fn(|cx| match self.lock().as_mut() {
            Some(ws) => ws.poll_next_unpin(cx),
            None => Poll::Ready(None),
        })
        .await;
        match &msg {
            Some(Ok(Message::Ping(_))) => self.pinged.store(true, Ordering::Relaxed),
            Some(Ok(Message::Close(_))) => self.peer_closed.store(true, Ordering::Relaxed),
            _ => {}
        }
        msg
    }

    /// Write the frames at the front of `items` (up to a Close, which is left there) into the
    /// TLS stream, which sends them as it goes; `partial` bytes of the first were written
    /// already. `written` is told each frame's length once it is all written. Ready once no
    /// frame is left to write; a flush must follow.
    pub fn poll_frames(
        &self,
        cx: &mut Context<'_>,
        items: &mut VecDeque<Outgoing>,
        partial: &mut usize,
        written: impl FnMut(usize),
    ) -> Poll<Result<(), Error>> {
        self.with(|ws| self.poll_frames_in(ws, cx, items, partial, written))
    }

    /// Write `items` now, from a task that is not the session's: true once every frame was
    /// written and flushed. False when anything is left (the socket is full, in use, closed or
    /// failed, or a Close is next): the caller hands what is left, `partial` included, to the
    /// session's writer, and wakes it; the writer's own poll then registers its waker where
    /// the one used here (a no-op) was left.
    pub fn write_now(
        &self,
        items: &mut VecDeque<Outgoing>,
        partial: &mut usize,
        written: impl FnMut(usize),
    ) -> bool {
        let Ok(mut guard) = self.ws.try_lock() else {
            return false;
        };
        let Some(ws) = guard.as_mut() else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            self.poll_frames_in(ws, &mut cx, items, partial, written),
            Poll::Ready(Ok(()))
        ) && items.is_empty()
            && matches!(
                Pin::new(ws.get_mut()).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            )
    }

    fn poll_frames_in(
        &self,
        ws: &mut Ws,
        cx: &mut Context<'_>,
        items: &mut VecDeque<Outgoing>,
        partial: &mut usize,
        mut written: impl FnMut(usize),
    ) -> Poll<Result<(), Error>> {
        if self.peer_closed.load(Ordering::Relaxed)
            && matches!(items.front(), Some(Outgoing::Frame(_)))
        {
            return Poll::Ready(Err(Error::Protocol(ProtocolError::SendAfterClosing)));
        }
        ready!(self.poll_flush_own(ws, cx))?;
        SCRATCH.with_borrow_mut(|scratch| loop {
            scratch.clear();
            fill(scratch, items, *partial);
            if scratch.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(ws.get_mut()).poll_write(cx, scratch))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            advance(items, partial, n, &mut written);
        })
    }

    /// Everything written so far onto the wire. Through tungstenite only when it may hold
    /// something of its own (a pong, a Close reply): its flush registers wakers on every call,
    /// 2.5 % of the CPU at one delivery per write.
    pub async fn flush(&self) -> Result<(), Error> {
        std::future::poll_fn(|cx| {
            self.with(|ws| {
                if ready!(self.poll_flush_own(ws, cx))? {
                    return Poll::Ready(Ok(()));
                }
                Pin::new(ws.get_mut()).poll_flush(cx).map_err(Error::from)
            })
        })
        .await
    }

    /// What tungstenite may hold of its own (a pong, its Close reply) sent through its flush,
    /// which flushes the TLS stream too: Ready(true) once done, Ready(false) if it holds none.
    fn poll_flush_own(&self, ws: &mut Ws, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        if !self.pinged.load(Ordering::Relaxed) && !self.peer_closed.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(false));
        }
        ready!(ws.poll_flush_unpin(cx))?;
        self.pinged.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(true))
    }

    /// As [`Socket::flush`], always through tungstenite.
    async fn flush_all(&self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.with(|ws| ws.poll_flush_unpin(cx))).await
    }

    /// Send one message through tungstenite (the Close: tungstenite keeps the closing state).
    /// Flushed even when tungstenite refuses it: after the peer's Close, ours is refused and
    /// the flush is what sends tungstenite's reply.
    pub async fn send(&self, msg: Message) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.with(|ws| ws.poll_ready_unpin(cx))).await?;
        let sent = match self.lock().as_mut() {
            Some(ws) => ws.start_send_unpin(msg),
            None => Err(Error::AlreadyClosed),
        };
        let flushed = self.flush_all().await;
        sent.and(flushed)
    }
}

/// A frame's header (a server's: final, unmasked) and payload.
fn parts(m: &Message) -> ([u8; 14], usize, Cow<'_, [u8]>) {
    let data = |opcode| FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let (header, payload): (FrameHeader, Cow<'_, [u8]>) = match m {
        Message::Text(t) => (data(OpCode::Data(Data::Text)), Cow::Borrowed(t.as_bytes())),
        Message::Binary(b) => (data(OpCode::Data(Data::Binary)), Cow::Borrowed(b)),
        Message::Ping(p) => (data(OpCode::Control(Control::Ping)), Cow::Borrowed(p)),
        Message::Pong(p) => (data(OpCode::Control(Control::Pong)), Cow::Borrowed(p)),
        // Not queued by this server (a Close goes through `Socket::send`); encoded all the same.
        Message::Close(c) => {
            let f = Frame::close(c.clone());
            (f.header().clone(), Cow::Owned(f.into_payload().to_vec()))
        }
        Message::Frame(f) => (f.header().clone(), Cow::Borrowed(f.payload())),
    };
    let mut bytes = [0u8; 14];
    let mut out = &mut bytes[..];
    // Cannot fail: the longest header is 14 bytes.
    let _ = header.format(payload.len() as u64, &mut out);
    let n = 14 - out.len();
    (bytes, n, payload)
}

/// Encode the frames at the front of `items` into `scratch`, skipping the first `skip` bytes
/// (written before), up to a Close or a record's worth.
fn fill(scratch: &mut Vec<u8>, items: &VecDeque<Outgoing>, mut skip: usize) {
    for it in items {
        let Outgoing::Frame(m) = it else { return };
        let (header, hlen, payload) = parts(m);
        for part in [&header[..hlen], &payload[..]] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let take = (part.len() - skip).min(WRITE_CHUNK - scratch.len());
            scratch.extend_from_slice(&part[skip..skip + take]);
            skip = 0;
            if scratch.len() == WRITE_CHUNK {
                return;
            }
        }
    }
}

/// `n` more bytes were written: drop the frames they completed, keep the offset into the next.
fn advance(
    items: &mut VecDeque<Outgoing>,
    partial: &mut usize,
    mut n: usize,
    written: &mut impl FnMut(usize),
) {
    while n > 0 {
        let Some(Outgoing::Frame(m)) = items.front() else {
            return;
        };
        let (_, hlen, payload) = parts(m);
        let left = hlen + payload.len() - *partial;
        if n < left {
            *partial += n;
            return;
        }
        n -= left;
        *partial = 0;
        written(m.len());
        items.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    fn encoded(m: &Message) -> Vec<u8> {
        let (h, n, p) = parts(m);
        [&h[..n], &p[..]].concat()
    }

    /// What tungstenite itself would put on the wire for `m`, as a server.
    fn tungstenite_encoded(m: Message) -> Vec<u8> {
        let f = match m {
            Message::Text(t) => Frame::message(t, OpCode::Data(Data::Text), true),
            Message::Binary(b) => Frame::message(b, OpCode::Data(Data::Binary), true),
            Message::Ping(p) => Frame::ping(p),
            Message::Pong(p) => Frame::pong(p),
            Message::Close(c) => Frame::close(c),
            Message::Frame(f) => f,
        };
        let mut out = Vec::new();
        f.format(&mut out).unwrap();
        out
    }

    #[test]
    fn frames_are_encoded_as_tungstenite_would() {
        let big = "x".repeat(70_000);
        for m in [
            Message::text("hi"),
            Message::text("y".repeat(125)),
            Message::text("y".repeat(126)),
            Message::text("z".repeat(65_535)),
            Message::text(big),
            Message::binary(vec![1, 2, 3]),
            Message::Ping(Default::default()),
            Message::Pong(vec![9; 4].into()),
            Message::Close(Some(CloseFrame {
                code: 1000.into(),
                reason: "bye".into(),
            })),
        ] {
            assert_eq!(encoded(&m), tungstenite_encoded(m.clone()), "{m:?}");
        }
    }

    /// Written a few bytes at a time, or a record at a time, the bytes that leave are the
    /// frames in order, each counted once it is all out, and a Close is left in the queue.
    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let msgs = [
            Message::text("a".repeat(10)),
            Message::text("b".repeat(40_000)),
            Message::text("c"),
        ];
        let want: Vec<u8> = msgs.iter().flat_map(encoded).collect();
        for step in [1, 7, 4096, WRITE_CHUNK] {
            let mut items: VecDeque<Outgoing> = msgs.iter().cloned().map(Outgoing::Frame).collect();
            items.push_back(Outgoing::Close(1000.into(), "x".into()));
            let (mut partial, mut out, mut done) = (0, Vec::new(), Vec::new());
            loop {
                let mut scratch = Vec::new();
                fill(&mut scratch, &items, partial);
                assert!(scratch.len() <= WRITE_CHUNK);
                if scratch.is_empty() {
                    break;
                }
                let n = step.min(scratch.len());
                out.extend_from_slice(&scratch[..n]);
                advance(&mut items, &mut partial, n, &mut |len| done.push(len));
            }
            assert_eq!(out, want, "step {step}");
            assert_eq!(done, vec![10, 40_000, 1], "step {step}");
            assert!(matches!(items.front(), Some(Outgoing::Close(..))));
            assert_eq!(items.len(), 1);
        }
    }
}
