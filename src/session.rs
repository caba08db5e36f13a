//! One live WebSocket connection: a reader and a writer, joined at the connection's outbox.
//!
//! Reader: frame (size already capped by the WebSocket layer) -> JSON -> rate -> length ->
//! sanitise -> `room.publish`. Writer: drain everything queued, write it, flush once; close the
//! socket with the right RFC 6455 code. tungstenite only reports a protocol error, so sending
//! the Close frame with its code is done here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

use crate::auth::Identity;
use crate::handshake::Admitted;
use crate::limits::Verdict;
use crate::protocol::{close, ClientFrame, ErrorCode, ServerFrame, MAX_ID_CHARS};
use crate::room::{Outbox, Outgoing};
use crate::Shared;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// How long a Close frame may take to go out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a session ended, for its log line.
#[derive(Debug, Clone)]
struct Ending {
    code: CloseCode,
    reason: &'static str,
}

/// Serve one upgraded connection until it closes.
pub async fn run(shared: Arc<Shared>, ws: Ws, admitted: Admitted, peer: SocketAddr) {
    let started = Instant::now();
    let Admitted {
        identity,
        membership,
        outbox,
        rx,
        ..
    } = admitted;
    let room = membership.room.clone();
    info!(%peer, user = %identity.user, room = %room.name, "connection opened");
    shared.metrics.connections_open.inc();

    let (sink, stream) = ws.split();
    let mut shutdown = shared.shutdown.clone();
    let ending = {
        let ping_every = Duration::from_millis(shared.config.server.ping_interval_ms);
        let writer = write_loop(sink, rx, &outbox, &mut shutdown, ping_every);
        let reader = read_loop(stream, &shared, &outbox, &identity, &membership);
        tokio::pin!(writer);
        tokio::pin!(reader);

        tokio::select! {
            // The writer ends on its own when it closed the socket (slow consumer, shutdown, or
            // a Close the reader asked for) or the socket failed.
            e = &mut writer => e,
            e = &mut reader => match e {
                // The reader asked for a Close: let the writer send it after what is queued.
                Some(ending) => {
                    outbox.close(ending.code, ending.reason);
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
                    ending
                }
                None => Ending { code: CloseCode::Normal, reason: "client closed" },
            },
        }
    };
    drop(membership);
    shared.metrics.connections_open.dec();
    if ending.code == close::TRY_AGAIN_LATER {
        shared.metrics.slow_consumers_closed.inc();
    }
    info!(
        %peer,
        user = %identity.user,
        room = %room.name,
        code = u16::from(ending.code),
        reason = ending.reason,
        duration_ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}

/// Read frames until the client leaves or must be closed; `Some` names the Close to send.
async fn read_loop(
    mut stream: futures_util::stream::SplitStream<Ws>,
    shared: &Shared,
    outbox: &Outbox,
    identity: &Identity,
    membership: &crate::room::Membership,
) -> Option<Ending> {
    let user = identity.user.as_str();
    let echo = shared.config.server.echo_mode;
    let mut limiter = shared.limits.connection();
    let idle = Duration::from_millis(shared.config.server.idle_timeout_ms);
    // A signed token's expiry, turned into a deadline on the runtime's clock.
    let expires = identity.expires_at.map(|exp| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
    });
    let token_expired = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(token_expired);
    loop {
        // Any frame, a pong included, proves the peer alive; silence past `idle` does not.
        let msg = tokio::select! {
            next = tokio::time::timeout(idle, stream.next()) => match next {
                Ok(Some(msg)) => msg,
                Ok(None) => return None,
                Err(_) => return Some(Ending { code: close::GOING_AWAY, reason: "idle timeout" }),
            },
            _ = &mut token_expired => {
                return Some(Ending { code: close::POLICY, reason: "token expired" });
            }
        };
        let text = match msg {
            Ok(Message::Text(t)) if !echo => t,
            // Echo mode (conformance tests only): send every data message straight back.
            Ok(m @ (Message::Text(_) | Message::Binary(_))) if echo => {
                outbox.push(m);
                continue;
            }
            Ok(Message::Binary(_)) => {
                return Some(Ending {
                    code: close::UNSUPPORTED,
                    reason: "binary frames are not supported",
                })
            }
            // tungstenite answers each ping with a pong; that costs us a write, so pings draw on
            // the same quota as messages and a ping flood ends like a message flood.
            Ok(Message::Ping(_)) => {
                if let Err(ending) = charge(&mut limiter, shared, user) {
                    return Some(ending);
                }
                continue;
            }
            // Keep reading after a Close so tungstenite's reply goes out and the stream ends.
            Ok(Message::Text(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                continue
            }
            Err(e) => return error_ending(&e),
        };

        // Parse before the rate check so a refusal can carry the client's id, but charge the
        // rate for every frame, well-formed or not.
        let parsed = serde_json::from_str::<ClientFrame>(&text);
        let id = parsed
            .as_ref()
            .ok()
            .and_then(|ClientFrame::Message { id, .. }| id.as_deref());
        shared.metrics.messages_received.inc();
        let reply_error = |code: ErrorCode, message: &str, retry: Option<Duration>| {
            shared.metrics.dropped(code.as_str());
            let frame = ServerFrame::Error {
                code,
                message,
                id: id.filter(|i| i.chars().count() <= MAX_ID_CHARS),
                retry_after_ms: retry.map(|d| d.as_millis().max(1) as u64),
            };
            outbox.push(Message::text(frame.to_json()));
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
            Err(ending) => return Some(ending),
        }
        let Ok(ClientFrame::Message { text: body, id: _ }) = &parsed else {
            reply_error(
                ErrorCode::BadRequest,
                "expected {\"type\":\"message\",\"text\":...}",
                None,
            );
            continue;
        };
        if id.is_some_and(|i| i.chars().count() > MAX_ID_CHARS) {
            reply_error(ErrorCode::BadRequest, "id longer than 64 characters", None);
            continue;
        }
        if body.len() > shared.config.limits.max_message_bytes {
            reply_error(
                ErrorCode::TooLong,
                "text longer than max_message_bytes",
                None,
            );
            continue;
        }
        let Some(clean) = shared.sanitizer.clean(body) else {
            reply_error(
                ErrorCode::Empty,
                "nothing left to send after sanitising",
                None,
            );
            continue;
        };
        let room = &membership.room;
        let started = Instant::now();
        let fanout = room.publish(membership.id, |seq| {
            Message::text(
                ServerFrame::Message {
                    room: &room.name,
                    from: user,
                    text: &clean,
                    seq,
                    ts: now_ms(),
                }
                .to_json(),
            )
        });
        let m = &shared.metrics;
        m.fanout_seconds.observe(started.elapsed().as_secs_f64());
        m.messages_delivered.inc_by(fanout.queued);
        if fanout.overflowed > 0 {
            m.dropped_by("slow_consumer", fanout.overflowed);
        }
        if let Some(id) = id {
            let ack = ServerFrame::Ack {
                id,
                seq: fanout.seq,
            };
            outbox.push(Message::text(ack.to_json()));
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
            reason: "rate limit exceeded repeatedly",
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
    Some(Ending { code, reason })
}

/// Write what is queued, in batches with one flush each, until told to close or the socket
/// fails. Returns how the connection ended.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Outgoing>,
    outbox: &Outbox,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ping_every: Duration,
) -> Ending {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What ends the writer from outside: its queue overflowed, or the server is stopping.
    // Built and pinned once, so its waiters stay registered instead of being re-created on
    // every wake-up (that churn showed in profiles as a lock per delivery).
    let interrupt = async {
        let overflow = async {
            loop {
                outbox.wake.notified().await;
                if outbox.overflowed() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = overflow => Ending { code: close::TRY_AGAIN_LATER, reason: "slow consumer" },
            _ = shutdown.wait_for(|stop| *stop) => {
                Ending { code: close::GOING_AWAY, reason: "server shutting down" }
            }
        }
    };
    tokio::pin!(interrupt);
    let closing = loop {
        let first = tokio::select! {
            biased;
            ending = &mut interrupt => break ending,
            item = rx.recv() => match item {
                Some(item) => item,
                None => return Ending { code: CloseCode::Normal, reason: "done" },
            },
            _ = ping.tick() => Outgoing::Frame(Message::Ping(Default::default())),
        };
        // Write this item and everything else already queued, then flush once. A socket that
        // will not drain must not hold us here past an overflow or a shutdown.
        let mut close_req = None;
        let batch = async {
            let mut item = Some(first);
            while let Some(it) = item.take() {
                match it {
                    Outgoing::Frame(m) => {
                        let len = m.len();
                        sink.feed(m).await?;
                        outbox.written(len);
                    }
                    Outgoing::Close(code, reason) => {
                        close_req = Some(Ending { code, reason });
                        break;
                    }
                }
                item = rx.try_recv().ok();
            }
            sink.flush().await
        };
        let outcome = tokio::select! {
            r = batch => Ok(r),
            ending = &mut interrupt => Err(ending),
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Ending {
                    code: CloseCode::Abnormal,
                    reason: "write failed",
                }
            }
            Err(ending) => break ending,
        }
        if let Some(c) = close_req {
            break c;
        }
    };
    let frame = CloseFrame {
        code: closing.code,
        reason: closing.reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    closing
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
