//! The chat engine: what a member can do in a room, whoever asks. A WebSocket session calls it
//! today; the HTTP API will call the same functions, so every rule is one piece of code.
//!
//! - [`Engine::join`] takes the place the gate reserved, queues the welcome as the member's
//!   first frame and adds it to the room (backlog and presence will start here).
//! - [`Engine::post`] is one message's path: length -> sanitise -> append to the room's log
//!   (which assigns `seq`) and fan out, in one step under the room's lock.
//! - Leaving is dropping the [`Member`].

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::Identity;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, ServerFrame, WelcomeLimits};
use crate::room::{next_conn_id, Membership, Outbox, Outgoing, Reservation, Rooms};
use crate::sanitize::Sanitizer;
use crate::store::EventKind;

/// The shared state of the chat, built once from the config.
#[derive(Debug)]
pub struct Engine {
    pub rooms: Arc<Rooms>,
    sanitizer: Sanitizer,
    max_message_bytes: usize,
    outbound_queue_bytes: usize,
    /// Sent in every welcome; built once rather than per connection.
    welcome_limits: WelcomeLimits,
    /// Echo mode (conformance tests) speaks no protocol of ours: no welcome.
    echo: bool,
    metrics: Arc<Metrics>,
}

/// A connection's membership of a room, with what it needs to be reached and named.
#[derive(Debug)]
pub struct Member {
    pub identity: Identity,
    pub membership: Membership,
    pub outbox: Arc<Outbox>,
}

/// Why a message was not posted; nothing was stored or delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    TooLong,
    Empty,
    /// The room's log could not take it.
    Unavailable,
}

impl Rejection {
    pub fn code(self) -> ErrorCode {
        match self {
            Rejection::TooLong => ErrorCode::TooLong,
            Rejection::Empty => ErrorCode::Empty,
            Rejection::Unavailable => ErrorCode::Unavailable,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::TooLong => "text longer than max_message_bytes",
            Rejection::Empty => "nothing left to send after sanitising",
            Rejection::Unavailable => "the message could not be stored; send it again later",
        }
    }
}

/// A message that was stored and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub seq: u64,
    /// The sanitised text everyone received.
    pub text: String,
}

impl Engine {
    pub fn new(config: &Config, rooms: Arc<Rooms>, metrics: Arc<Metrics>) -> Engine {
        Engine {
            rooms,
            sanitizer: Sanitizer::new(config.sanitize.mode),
            max_message_bytes: config.limits.max_message_bytes,
            outbound_queue_bytes: config.limits.outbound_queue_bytes,
            welcome_limits: WelcomeLimits {
                max_message_bytes: config.limits.max_message_bytes,
                messages_per_second: config.limits.messages_per_second,
                burst: config.limits.burst,
            },
            echo: config.server.echo_mode,
            metrics,
        }
    }

    /// Enter the reserved room: the welcome is queued first, so it is the first frame the
    /// member reads even if the room is busy. Returns the member and its outbox's receiver.
    pub fn join(
        &self,
        reservation: Reservation,
        identity: Identity,
    ) -> (Member, mpsc::Receiver<Outgoing>) {
        let (outbox, rx) = Outbox::new(self.outbound_queue_bytes);
        if !self.echo {
            let welcome = ServerFrame::Welcome {
                user: &identity.user,
                room: &reservation.room().name,
                limits: &self.welcome_limits,
            };
            outbox.push(Message::text(welcome.to_json()));
        }
        let membership = self.rooms.join(reservation, next_conn_id(), outbox.clone());
        let member = Member {
            identity,
            membership,
            outbox,
        };
        (member, rx)
    }

    /// One message from `member`: checked, sanitised, stored and delivered to the others.
    pub fn post(&self, member: &Member, text: &str) -> Result<Posted, Rejection> {
        if text.len() > self.max_message_bytes {
            return Err(Rejection::TooLong);
        }
        let clean = self.sanitizer.clean(text).ok_or(Rejection::Empty)?;
        let room = &member.membership.room;
        let from = member.identity.user.as_str();
        let started = Instant::now();
        let kind = EventKind::Message {
            from: from.to_string(),
            text: clean.clone(),
        };
        let fanout = room
            .publish(member.membership.id, now_ms(), kind, |event| {
                Message::text(
                    ServerFrame::Message {
                        room: &room.name,
                        from,
                        text: &clean,
                        seq: event.seq,
                        ts: event.ts,
                    }
                    .to_json(),
                )
            })
            .map_err(|_| Rejection::Unavailable)?;
        let m = &self.metrics;
        m.fanout_seconds.observe(started.elapsed().as_secs_f64());
        m.messages_delivered.inc_by(fanout.queued);
        if fanout.overflowed > 0 {
            m.dropped_by("slow_consumer", fanout.overflowed);
        }
        Ok(Posted {
            seq: fanout.seq,
            text: clean,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
