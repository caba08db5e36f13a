//! One live WebSocket connection: a reader and a writer, joined at the connection's outbox, and
//! the closing handshake that ends it.
//!
//! Reader: frame (size already capped by the WebSocket layer) -> JSON -> rate -> the engine's
//! `post` (length, sanitise, store, fan-out). Writer: drain everything queued, write it (through
//! socket.rs, which shares the socket between the two), flush once; close the socket with the
//! right RFC 6455 code. tungstenite only reports a protocol error, so sending
//! the Close frame with its code is done here. The socket sits in the outbox, where the store's
//! fan-out writes straight to it while the writer holds nothing (room.rs's `WriteThrough`);
//! whatever it cannot write whole it hands back to the writer, which takes it first.
//!
//! Closing (RFC 6455 section 7.1.1): whoever decides first (the reader on a bad frame or a
//! flood, the writer on a slow consumer or shutdown) starts one deadline of
//! `server.close_grace_ms`. Until it passes the writer sends what was queued (the error frames
//! that explain the close) and then the Close frame, while the reader reads and discards until
//! the peer's Close. Only then is TLS close_notify sent and the socket shut: dropping a socket
//! with unread input makes the kernel answer with a reset, and the peer then loses every frame
//! it had not read yet, our Close included. A peer that never stops sending is cut at the
//! deadline, never before.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info};

use crate::engine::{refuse, Member, Moderator};
use crate::handshake::Admitted;
use crate::limits::{ConnGuard, Verdict};
use crate::moderation::Action;
use crate::protocol::{close, ClientFrame, ErrorCode, ServerFrame, MAX_ID_CHARS};
use crate::room::{poll_until, Outbox, OutboxReader, Outgoing};
use crate::socket::{Socket, Ws};
use crate::Shared;

/// How long TLS close_notify may take once the closing handshake is over or cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// Why a session ended, for its log line.
#[derive(Debug, Clone)]
struct Ending {
    code: CloseCode,
    reason: Cow<'static, str>,
}

/// The closing handshake's one deadline, started by whichever side decides to close first.
struct Closing {
    grace: Duration,
    started: OnceLock<(Ending, tokio::time::Instant)>,
    /// The session's task, woken when closing begins: the deadline must run even when
    /// nothing else wakes the session (a peer that neither reads nor writes). A tokio
    /// `Notify` here took a lock on every poll of the session, so on every delivery.
    began: AtomicWaker,
    /// Set once the writer has sent (or tried to send) the Close.
    sent: AtomicBool,
    sent_notify: Notify,
}

impl Closing {
    /// Start closing with `ending` unless closing already began; returns the deadline.
    fn begin(&self, ending: Ending) -> tokio::time::Instant {
        let (first, deadline) = self.started.get_or_init(|| {
            debug!(
                "closing with {} ({})",
                u16::from(ending.code),
                &ending.reason
            );
            self.began.wake();
            (ending, tokio::time::Instant::now() + self.grace)
        });
        let _ = first;
        *deadline
    }

    fn mark_sent(&self) {
        self.sent.store(true, Ordering::Release);
        self.sent_notify.notify_one();
    }

    /// Resolves once the writer has sent the Close.
    async fn close_sent(&self) {
        while !self.sent.load(Ordering::Acquire) {
            self.sent_notify.notified().await;
        }
    }

    /// Resolves when closing has begun and its deadline has passed.
    async fn expired(&self) {
        let deadline =
            std::future::poll_fn(|cx| poll_until(&self.began, cx, || self.deadline())).await;
        // Boxed: only a closing connection needs this timer, and inline it would take its
        // space in every connection's future.
        Box::pin(tokio::time::sleep_until(deadline)).await
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.started.get().map(|(_, d)| *d)
    }

    fn ending(&self) -> Option<Ending> {
        self.started.get().map(|(e, _)| e.clone())
    }
}

/// How the reader stopped.
enum ReadEnd {
    /// The peer's Close arrived (or, once ours was out, the stream ended): nothing more to read.
    Done,
    /// The stream ended or failed without the peer's Close: the peer is gone (RFC 6455's
    /// 1006), so nothing is sent to it, neither a Close nor TLS's close_notify.
    Lost,
    /// A frame could not be parsed, so the stream is no longer in step with the peer's
    /// framing (part of a frame may still be unread): the rest is discarded as raw bytes.
    OutOfStep,
}

/// Serve one upgraded connection until it closes. The room is joined and the socket split
/// here, before the future is made: that future is what every connection holds for its whole
/// life (it is most of an idle connection's memory), and what it captured and moved out of
/// would keep its space there. `guard` keeps the connection counted against the caps.
pub fn run(
    shared: Arc<Shared>,
    ws: Ws,
    admitted: Admitted,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
) -> impl std::future::Future<Output = ()> + Send {
    let started = Instant::now();
    let Admitted {
        identity,
        reservation,
        resume,
        user_slot,
        ..
    } = admitted;
    let (member, rx) = shared.engine.join(reservation, identity, resume);
    // Shutdown reaches writers through their outboxes (Rooms::stop_all); one that joined
    // after its room was told finds the flag already up.
    if *shared.shutdown.borrow() {
        member.outbox.stop();
    }
    // Into the outbox, on the heap: a fan-out writes through to it (room.rs's WriteThrough).
    member.outbox.attach(ws);
    // An async block rather than an async fn: a fn's arguments are moved into locals of its
    // own and would take their space twice; a block's captures are used where they lie.
    async move {
        // Held for as long as the session lives: counts the connection against its user and
        // against the server's caps.
        let _held = (&user_slot, &guard);
        info!(
            %peer,
            user = member.membership.user(),
            room = %member.membership.room.name,
            "connection opened"
        );
        shared.metrics.connections_open.inc();

        let closing = Closing {
            grace: Duration::from_millis(shared.config.server.close_grace_ms),
            started: OnceLock::new(),
            began: AtomicWaker::new(),
            sent: AtomicBool::new(false),
            sent_notify: Notify::new(),
        };
        let socket = member.outbox.socket();
        let (failed, out_of_step) = {
            let outbox = &member.outbox;
            let writer = write_loop(socket, rx, outbox, &closing);
            let conn = Conn {
                shared: &shared,
                closing: &closing,
                member: &member,
            };
            let reader = read_loop(socket, conn);
            tokio::pin!(writer);
            tokio::pin!(reader);
            let mut reader = WokenOnly::new(reader);
            let within =
                |d: Option<tokio::time::Instant>| d.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                // The writer before the reader: on the first poll the 101, held in the TLS
                // stream (tls_io's Cork), then leaves with the welcome in one write; a reader
                // polled first would send it alone (reading sends waiting output). With nothing
                // queued (echo mode has no welcome), the reader's first poll is what sends it.
                biased;
                // A peer that neither reads our Close nor answers it is cut here.
                _ = closing.expired() => (false, false),
                // The writer ends once it has sent a Close (or cannot write): let the reader
                // discard input until the peer's Close or the deadline.
                sent = &mut writer => {
                    if sent {
                        let _ = tokio::time::timeout_at(within(closing.deadline()), &mut reader).await;
                    }
                    (!sent, false)
                }
                // Nothing can reach a peer that is gone (no Close, no close_notify): it ends
                // as failed, logged as 1006.
                read = &mut reader => if matches!(read, ReadEnd::Lost) {
                    (true, false)
                } else {
                    // The peer closed, or the reader asked for a Close: the writer sends what is
                    // queued, then the Close, within the deadline. After the peer's Close it only
                    // flushes tungstenite's reply.
                    let deadline = closing.begin(Ending { code: CloseCode::Normal, reason: "client closed".into() });
                    outbox.close(CloseCode::Normal, "client closed");
                    let sent = tokio::time::timeout_at(deadline, &mut writer).await;
                    (sent == Ok(false), matches!(read, ReadEnd::OutOfStep))
                }
            }
        };
        let ending = closing.ending().unwrap_or(Ending {
            code: CloseCode::Abnormal,
            reason: "connection lost".into(),
        });
        // Taken only now, so they are not kept for the connection's life.
        let room = member.membership.room.clone();
        let user = member.membership.user().to_string();
        // Taken before the member leaves the room: from here on no write-through reaches it.
        let ws = socket.take();
        drop(member);
        // Boxed: its state (the socket, a drain buffer, timers) would otherwise sit in every
        // session's future for the connection's whole life. Made in a statement of its own: a
        // temporary of the await's statement would keep its space there (a reunited socket in
        // an `if let` around the await once took 1.5 KiB).
        let finishing = Box::pin(finish(ws, closing.deadline(), failed, out_of_step));
        finishing.await;
        shared.metrics.connections_open.dec();
        if ending.code == close::TRY_AGAIN_LATER {
            shared.metrics.slow_consumers_closed.inc();
        }
        info!(
            %peer,
            user = %user,
            room = %room.name,
            code = u16::from(ending.code),
            reason = ending.reason.as_ref(),
            duration_ms = started.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}

/// A future polled only when its own waker fired. The session's task wakes for every frame
/// its writer is given, and `select!` would then poll the reader too, down through the
/// WebSocket and TLS layers to the socket, for nothing (~6 % of the CPU at 100 msg/s).
struct WokenOnly<'a, F> {
    inner: Pin<&'a mut F>,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future> WokenOnly<'a, F> {
    fn new(inner: Pin<&'a mut F>) -> Self {
        // Set: the first poll must reach the future.
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        WokenOnly { inner, flag, waker }
    }
}

impl<F: Future> Future for WokenOnly<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.flag.task.register(cx.waker());
        // Cleared before polling: a wake-up during the poll sets it again.
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// The end of the closing handshake on the socket itself: after a frame we could not parse,
/// discard raw input until the peer stops or the deadline; then send TLS close_notify and shut
/// the socket, briefly, so a peer that does not read cannot hold it.
async fn finish(
    ws: Option<Ws>,
    deadline: Option<tokio::time::Instant>,
    failed: bool,
    out_of_step: bool,
) {
    let Some(mut ws) = ws.filter(|_| !failed) else {
        return;
    };
    let io = ws.get_mut();
    if let (true, Some(deadline)) = (out_of_step, deadline) {
        // On the heap and only here: an array would sit in every session's future, idle or
        // not (it cost 4 KiB per connection, measured by bench/run.sh idle).
        let mut scratch = vec![0u8; 4096];
        let drain = async { while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout_at(deadline, drain).await;
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, io.shutdown()).await;
}

/// Read frames until the peer's Close, or until this side decides to close; then, when the
/// stream is still in step, keep reading and discarding until the peer's Close arrives (the
/// caller bounds that by the closing deadline).
async fn read_loop(socket: &Socket, conn: Conn<'_>) -> ReadEnd {
    let Conn {
        member, closing, ..
    } = conn;
    let outbox = &member.outbox;
    let close_with = |code: CloseCode, reason: Cow<'static, str>| {
        outbox.close(code, reason.clone());
        closing.begin(Ending { code, reason });
    };
    match serve_frames(socket, conn).await {
        Served::PeerClosed => return ReadEnd::Done,
        Served::Lost => return ReadEnd::Lost,
        Served::Close(ending) => close_with(ending.code, ending.reason),
        Served::BadFrame(ending) => {
            close_with(ending.code, ending.reason);
            return ReadEnd::OutOfStep;
        }
        // The frame was read whole (a protocol or UTF-8 error), so the next one can still be
        // found and the peer's Close recognised.
        Served::BadMessage(ending) => close_with(ending.code, ending.reason),
        Served::WriterClosing => {}
    }
    // Read on only once the Close is out: frames already buffered would otherwise be read,
    // and pings answered, ahead of it. A peer that does not read holds the Close, and so this
    // wait, until the caller's deadline.
    closing.close_sent().await;
    // Closing: discard until the peer's Close. Input is still capped per frame by the
    // WebSocket layer, and the caller's deadline bounds the time.
    loop {
        match socket.next().await {
            Some(Ok(Message::Close(_))) | None => return ReadEnd::Done,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return match error_ending(&e) {
                    Some(_) => ReadEnd::OutOfStep,
                    None => ReadEnd::Done,
                }
            }
        }
    }
}

/// What the reader works with: the connection's place in the server.
#[derive(Clone, Copy)]
struct Conn<'a> {
    shared: &'a Shared,
    closing: &'a Closing,
    member: &'a Member,
}

/// What the reader's one timer is set for.
#[derive(Clone, Copy)]
enum Timer {
    Ping,
    Idle,
    Expiry,
}

/// How serving frames stopped.
enum Served {
    /// The peer's Close.
    PeerClosed,
    /// The stream ended or failed without a Close.
    Lost,
    /// This side must close, the stream still in step with the peer.
    Close(Ending),
    /// A frame broke the protocol or a limit; the stream is out of step.
    BadFrame(Ending),
    /// A frame broke the protocol or was not UTF-8, but was read whole: still in step.
    BadMessage(Ending),
    /// The writer began closing (slow consumer, shutdown).
    WriterClosing,
}

/// The chat: each frame through the pipeline, until one of the reasons in [`Served`].
async fn serve_frames(socket: &Socket, conn: Conn<'_>) -> Served {
    let Conn {
        shared,
        closing,
        member,
    } = conn;
    let outbox = &member.outbox;
    let user = member.membership.user();
    let echo = shared.config.server.echo_mode;
    let mut limiter = shared.limits.connection();
    // Read from the config where used rather than kept: every byte here is in every
    // connection's future.
    let idle = || Duration::from_millis(shared.config.server.idle_timeout_ms);
    let ping_every = || Duration::from_millis(shared.config.server.ping_interval_ms);
    // Pings ride on the reader's one timer (with the idle timeout and the token's expiry): a
    // timer is ~0.1 KiB in every connection.
    let mut next_ping = tokio::time::Instant::now() + ping_every();
    let mut last_heard = tokio::time::Instant::now();
    // A signed token's expiry, turned into a deadline on the runtime's clock. It shares the
    // idle timeout's timer: one timer fewer in every connection's future.
    let expires = member.expires_at.map(|exp| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
    });
    let close = |code, reason: &'static str| {
        Served::Close(Ending {
            code,
            reason: reason.into(),
        })
    };
    loop {
        if closing.deadline().is_some() {
            return Served::WriterClosing;
        }
        // Any frame, a pong included, proves the peer alive; silence past `idle` does not.
        let (at, timer) = {
            let idle_at = last_heard + idle();
            match expires {
                Some(at) if at <= idle_at && at <= next_ping => (at, Timer::Expiry),
                _ if next_ping < idle_at => (next_ping, Timer::Ping),
                _ => (idle_at, Timer::Idle),
            }
        };
        let msg = match tokio::time::timeout_at(at, socket.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Served::Lost,
            Err(_) => match timer {
                Timer::Expiry => return close(close::POLICY, "token expired"),
                Timer::Idle => return close(close::GOING_AWAY, "idle timeout"),
                Timer::Ping => {
                    outbox.push(Message::Ping(Default::default()));
                    next_ping = tokio::time::Instant::now() + ping_every();
                    continue;
                }
            },
        };
        last_heard = tokio::time::Instant::now();
        if closing.deadline().is_some() {
            return Served::WriterClosing;
        }
        let text = match msg {
            Ok(Message::Text(t)) if !echo => t,
            // Echo mode (conformance tests only): send every data message straight back.
            Ok(m @ (Message::Text(_) | Message::Binary(_))) if echo => {
                outbox.push(m);
                continue;
            }
            Ok(Message::Binary(_)) => {
                return close(close::UNSUPPORTED, "binary frames are not supported")
            }
            // tungstenite answers each ping with a pong; that costs us a write, so pings draw on
            // the same quota as messages and a ping flood ends like a message flood.
            Ok(Message::Ping(_)) => {
                if let Err(ending) = charge(&mut limiter, shared, user) {
                    return Served::Close(ending);
                }
                continue;
            }
            // The peer's Close: tungstenite has queued its reply; the writer flushes it.
            Ok(Message::Close(_)) => return Served::PeerClosed,
            Ok(Message::Text(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Err(e) => {
                return match error_ending(&e) {
                    // A frame over the size limit is refused after its header: the rest of
                    // it is still unread, so the stream is out of step.
                    Some(ending) if matches!(e, tungstenite::Error::Capacity(_)) => {
                        Served::BadFrame(ending)
                    }
                    Some(ending) => Served::BadMessage(ending),
                    None => Served::Lost,
                };
            }
        };

        // Parse before the rate check so a refusal can carry the client's id, but charge the
        // rate for every frame, well-formed or not.
        let parsed = serde_json::from_str::<ClientFrame>(&text);
        let id = parsed.as_ref().ok().and_then(ClientFrame::id);
        shared.metrics.messages_received.inc();
        let reply_error = |code: ErrorCode, message: &str, retry: Option<Duration>| {
            let id = id.filter(|i| i.chars().count() <= MAX_ID_CHARS);
            let retry = retry.map(|d| d.as_millis().max(1) as u64);
            refuse(outbox, &shared.metrics, code, message, id, retry);
        };
        match charge(&mut limiter, shared, user) {
            Ok(None) => {}
            Ok(Some(wait)) => {
                reply_error(
                    ErrorCode::RateLimited,
                    "rate limit exceeded, slow down",
                    Some(wait),
                );
                continue;
            }
            Err(ending) => return Served::Close(ending),
        }
        // Every frame's id: echoed in its answer, so bounded before anything else.
        if id.is_some_and(|i| i.chars().count() > MAX_ID_CHARS) {
            reply_error(ErrorCode::BadRequest, "id longer than 64 characters", None);
            continue;
        }
        if let Ok(ClientFrame::History { before, limit, .. }) = &parsed {
            if !shared.engine.rooms.ready() {
                reply_error(
                    ErrorCode::Unavailable,
                    "history is unavailable; try again later",
                    None,
                );
                continue;
            }
            match shared.engine.history(member, id, before, limit) {
                Some(page) => {
                    outbox.push(Message::text(page));
                }
                None => reply_error(
                    ErrorCode::BadRequest,
                    "before and limit must be whole numbers (limit at least 1)",
                    None,
                ),
            }
            continue;
        }
        let action = match &parsed {
            Ok(ClientFrame::Kick { user, reason, .. }) => Some(Action::Kick {
                user: user.clone(),
                reason: reason.clone().unwrap_or_default(),
            }),
            Ok(ClientFrame::Mute { user, seconds, .. }) => Some(Action::Mute {
                user: user.clone(),
                seconds: *seconds,
            }),
            Ok(ClientFrame::Delete { seq, .. }) => Some(Action::Delete { seq: *seq }),
            _ => None,
        };
        if let Some(action) = action {
            let by = Moderator {
                name: user,
                conn: Some(member.membership.id),
                role: member.role,
                via: "socket",
            };
            let (out, metrics) = (outbox.clone(), shared.metrics.clone());
            let reply_id = id.map(str::to_string);
            let room = member.membership.room.clone();
            shared.engine.moderate(
                &room,
                by,
                action,
                id,
                Box::new(move |done| match done {
                    Ok(frame) => {
                        out.push(frame);
                    }
                    Err(refusal) => refuse(
                        &out,
                        &metrics,
                        refusal.code(),
                        refusal.message(),
                        reply_id.as_deref(),
                        None,
                    ),
                }),
            );
            continue;
        }
        let Ok(ClientFrame::Message { text: body, id: _ }) = &parsed else {
            reply_error(
                ErrorCode::BadRequest,
                "expected {\"type\":\"message\",\"text\":...}",
                None,
            );
            continue;
        };
        match shared.engine.post(member, body, id) {
            Ok(Some(posted)) => {
                if let Some(id) = id {
                    let ack = ServerFrame::Ack {
                        id,
                        seq: posted.seq,
                        text: &posted.text,
                    };
                    outbox.push(Message::text(ack.to_json()));
                }
            }
            // Waiting for the store: the ack or error is queued when it is committed.
            Ok(None) => {}
            Err(rejection) => reply_error(
                rejection.code(),
                rejection.message(),
                rejection.retry_after_ms().map(Duration::from_millis),
            ),
        }
    }
}

/// Charge one frame (a message or a ping) to the rate limits: `Ok(None)` to go on,
/// `Ok(Some(wait))` to refuse it, `Err` to close the connection.
fn charge(
    limiter: &mut crate::limits::ConnectionLimiter,
    shared: &Shared,
    user: &str,
) -> Result<Option<Duration>, Ending> {
    let verdict = limiter.check(&shared.limits, user);
    if verdict != Verdict::Allowed {
        shared.metrics.rate_limit_hits.inc();
    }
    match verdict {
        Verdict::Allowed => Ok(None),
        Verdict::Limited(wait) => Ok(Some(wait)),
        Verdict::Disconnect => Err(Ending {
            code: close::POLICY,
            reason: "rate limit exceeded repeatedly".into(),
        }),
    }
}

/// The Close to send for an error reading a frame, per RFC 6455 section 7.4.1.
fn error_ending(e: &tungstenite::Error) -> Option<Ending> {
    use tungstenite::Error as E;
    let (code, reason) = match e {
        E::Capacity(_) => (close::TOO_BIG, "message too big"),
        E::Utf8(_) => (close::INVALID_DATA, "invalid UTF-8"),
        E::Protocol(_) => (close::PROTOCOL, "protocol error"),
        E::ConnectionClosed | E::AlreadyClosed | E::Io(_) => {
            debug!(error = %e, "connection dropped");
            return None;
        }
        _ => (close::PROTOCOL, "protocol error"),
    };
    Some(Ending {
        code,
        reason: reason.into(),
    })
}

/// Write what is queued, in batches with one flush each, until closing begins or the socket
/// fails; then send the Close frame. Returns false when the socket failed before closing began
/// (nothing more can be sent), true once the Close was sent or attempted.
async fn write_loop(
    socket: &Socket,
    mut rx: OutboxReader,
    outbox: &Outbox,
    closing: &Closing,
) -> bool {
    // What ends the writer from outside: its queue overflowed, or the server is stopping.
    let interrupt = async {
        outbox.interrupted().await;
        if outbox.overflowed() {
            Ending {
                code: close::TRY_AGAIN_LATER,
                reason: "slow consumer".into(),
            }
        } else {
            Ending {
                code: close::GOING_AWAY,
                reason: "server shutting down".into(),
            }
        }
    };
    tokio::pin!(interrupt);
    let mut items = VecDeque::new();
    // Bytes of the first queued frame already written (a socket that took part of a batch).
    let mut partial = 0;
    loop {
        tokio::select! {
            biased;
            ending = &mut interrupt => { closing.begin(ending); break; }
            () = rx.batch(&mut items, &mut partial) => {}
        };
        // Write this batch and everything queued meanwhile, then flush once. A socket that
        // will not drain must not hold us here past an overflow or a shutdown.
        let mut close_requested = false;
        let batch = async {
            loop {
                std::future::poll_fn(|cx| {
                    socket.poll_frames(cx, &mut items, &mut partial, |len| outbox.written(len))
                })
                .await?;
                if let Some(Outgoing::Close(code, reason)) = items.front() {
                    closing.begin(Ending {
                        code: *code,
                        reason: reason.clone(),
                    });
                    close_requested = true;
                    break;
                }
                if !rx.try_batch(&mut items, &mut partial) {
                    break;
                }
            }
            socket.flush().await
        };
        let outcome = tokio::select! {
            r = batch => r.is_ok(),
            ending = &mut interrupt => { closing.begin(ending); break; }
        };
        // A write that fails once closing began (the peer's Close came first, so no data may
        // follow it) still lets the Close go out: it flushes tungstenite's reply.
        if !outcome && closing.deadline().is_none() {
            return false;
        }
        if close_requested || closing.deadline().is_some() {
            break;
        }
        items.clear();
        partial = 0;
        OutboxReader::trim(&mut items);
    }
    if let Some(ending) = closing.ending() {
        let frame = CloseFrame {
            code: ending.code,
            reason: ending.reason.as_ref().into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    closing.mark_sent();
    true
}
