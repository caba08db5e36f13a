//! The chat engine: what a member can do in a room, whoever asks. A WebSocket session calls it
//! today; the HTTP API will call the same functions, so every rule is one piece of code.
//!
//! - [`Engine::join`] takes the place the gate reserved and, under the room's lock, queues the
//!   welcome and the backlog (what a resuming client missed, or the last messages) before the
//!   member is added, so nothing is lost or shown twice (presence will start here).
//! - [`Engine::post`] is one message's path: length -> sanitise -> append to the room's log
//!   (which assigns `seq`) and fan out, in one step under the room's lock; with a durable
//!   store, once the store's writer has committed it, and the ack is queued then (the
//!   session does not wait: a sender's messages are pipelined, acked in commit order).
//! - [`Engine::history`] pages the room's retained messages.
//! - Leaving is dropping the [`Member`].

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::Identity;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, ServerFrame, WelcomeLimits};
use crate::room::{
    next_conn_id, Fanout, Membership, Outbox, Outgoing, Published, Reply, Reservation, Rooms,
};
use crate::sanitize::Sanitizer;
use crate::store::{now_ms, Event, EventKind};

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
    /// Messages replayed to a client that joins without resuming.
    on_join: usize,
    /// Users listed in a welcome at most; `None` with presence off.
    max_listed: Option<usize>,
    /// How long a message id is remembered for idempotent resends.
    dedup_window_ms: u64,
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

/// Messages in a history page unless the client asks for fewer, and the most it may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;

/// A client's request to resume: the room's epoch it knew, and the last seq it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    pub epoch: String,
}

/// The one shape of a message frame, live or replayed alike.
fn message_frame<'a>(room: &'a str, seq: u64, ts: u64, kind: &'a EventKind) -> ServerFrame<'a> {
    let EventKind::Message { from, text, .. } = kind;
    ServerFrame::Message {
        room,
        from,
        text,
        seq,
        ts,
    }
}

/// A stored event as the frame a client receives.
pub fn encode_event(event: &Event) -> Message {
    Message::text(message_frame(&event.room, event.seq, event.ts, &event.kind).to_json())
}

/// Stored events as the frames a client receives.
fn encode_all(room: &str, events: Vec<Event>) -> Vec<Message> {
    events
        .iter()
        .map(|e| Message::text(message_frame(room, e.seq, e.ts, &e.kind).to_json()))
        .collect()
}

/// The newest of `frames` (oldest first) whose total size is within `budget`.
fn newest_within(mut frames: Vec<Message>, budget: usize) -> Vec<Message> {
    let mut used = 0;
    let keep = frames
        .iter()
        .rev()
        .take_while(|f| {
            used += f.len();
            used <= budget
        })
        .count();
    frames.drain(..frames.len() - keep);
    frames
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
            on_join: config.history.on_join,
            max_listed: config
                .presence
                .enabled
                .then_some(config.presence.max_listed),
            dedup_window_ms: config.history.dedup_window_s.saturating_mul(1000),
            metrics,
        }
    }

    /// Enter the reserved room. Under the room's lock, so no live message slips between them
    /// or is shown twice: the welcome (with the room's epoch and top seq), then the backlog,
    /// then the member is added and live messages follow. The backlog is what the client
    /// missed when it resumes with the room's epoch and a seq still retained
    /// (`recovered: true`), else the last `history.on_join` messages. Returns the member and
    /// its outbox's receiver.
    pub fn join(
        &self,
        reservation: Reservation,
        identity: Identity,
        resume: Option<Resume>,
    ) -> (Member, mpsc::Receiver<Outgoing>) {
        let (outbox, rx) = Outbox::new(self.outbound_queue_bytes);
        let room_name = reservation.room().name.clone();
        let echo = self.echo;
        let on_join = self.on_join;
        // The backlog may not fill the outbox: a member must be able to take live messages.
        let budget = self.outbound_queue_bytes / 2;
        let max_listed = self.max_listed;
        let membership = self.rooms.join(
            reservation,
            next_conn_id(),
            &identity.user,
            outbox.clone(),
            |log, users, outbox| {
                if echo {
                    return;
                }
                let top = log.top();
                let missed = resume.as_ref().and_then(|r| {
                    let retained = r.since == top || log.oldest().is_some_and(|o| o <= r.since + 1);
                    (r.epoch == log.epoch() && r.since <= top && retained)
                        .then(|| encode_all(&room_name, log.range(r.since, usize::MAX)))
                        .filter(|frames| frames.iter().map(Message::len).sum::<usize>() <= budget)
                });
                let recovered = resume.as_ref().map(|_| missed.is_some());
                let backlog = missed.unwrap_or_else(|| {
                    let recent = encode_all(
                        &room_name,
                        log.range(top.saturating_sub(on_join as u64), on_join),
                    );
                    newest_within(recent, budget)
                });
                let welcome = ServerFrame::Welcome {
                    user: &identity.user,
                    room: &room_name,
                    limits: &self.welcome_limits,
                    epoch: log.epoch(),
                    seq: top,
                    recovered,
                    members: max_listed.map(|n| users.keys().take(n).map(String::as_str).collect()),
                    members_truncated: max_listed.is_some_and(|n| users.len() > n),
                };
                outbox.push(Message::text(welcome.to_json()));
                for frame in backlog {
                    outbox.push(frame);
                }
            },
        );
        let member = Member {
            identity,
            membership,
            outbox,
        };
        (member, rx)
    }

    /// A page of the member's room: the newest `limit` (default 50, at most 100) retained
    /// messages with seq < `before` (default: all), oldest first, as the JSON frame to send,
    /// or `None` when `before` or `limit` is not a positive whole number (0 allowed for
    /// `before`).
    pub fn history(
        &self,
        member: &Member,
        id: Option<&str>,
        before: &serde_json::Value,
        limit: &serde_json::Value,
    ) -> Option<String> {
        let before = match before {
            serde_json::Value::Null => u64::MAX,
            v => v.as_u64()?,
        };
        let limit = match limit {
            serde_json::Value::Null => DEFAULT_PAGE,
            v => v.as_u64().filter(|&n| n > 0)?.min(MAX_PAGE as u64) as usize,
        };
        let room = &member.membership.room;
        let (events, has_more) = room.with_log(|log| log.page(before, limit));
        let messages = events
            .iter()
            .map(|e| message_frame(&room.name, e.seq, e.ts, &e.kind))
            .collect();
        Some(
            ServerFrame::History {
                id,
                messages,
                has_more,
            }
            .to_json(),
        )
    }

    /// One message from `member`: checked, sanitised, stored and delivered to the others.
    /// A message that carries an `id` this user already used in this room within
    /// `history.dedup_window_s` is not stored or delivered again: the original's seq and text
    /// come back, from any of the user's connections. `Ok(None)`: the message waits for the
    /// durable store; its ack (or `unavailable` error) is queued to the member's outbox once
    /// it is committed, in order, and the caller goes on reading meanwhile.
    pub fn post(
        &self,
        member: &Member,
        text: &str,
        id: Option<&str>,
    ) -> Result<Option<Posted>, Rejection> {
        if text.len() > self.max_message_bytes {
            return Err(Rejection::TooLong);
        }
        let clean = self.sanitizer.clean(text).ok_or(Rejection::Empty)?;
        let room = &member.membership.room;
        let from = member.identity.user.as_str();
        let started = Instant::now();
        let now = now_ms();
        let kind = EventKind::Message {
            from: from.to_string(),
            text: clean,
            id: id.map(str::to_string),
        };
        let resend = id.map(|id| (from, id, now.saturating_sub(self.dedup_window_ms)));
        let reply = || -> Reply {
            let (outbox, metrics) = (member.outbox.clone(), self.metrics.clone());
            let id = id.map(str::to_string);
            Box::new(move |settled| match settled {
                Ok((event, fanout)) => {
                    if let Some(f) = fanout {
                        count_fanout(&metrics, &f);
                    }
                    if let Some(id) = &id {
                        outbox.push(Message::text(ack_frame(id, &event)));
                    }
                }
                Err(_) => {
                    let r = Rejection::Unavailable;
                    metrics.dropped(r.code().as_str());
                    let frame = ServerFrame::Error {
                        code: r.code(),
                        message: r.message(),
                        id: id.as_deref(),
                        retry_after_ms: None,
                    };
                    outbox.push(Message::text(frame.to_json()));
                }
            })
        };
        let published = room
            .publish(
                member.membership.id,
                now,
                &kind,
                resend,
                |seq| Message::text(message_frame(&room.name, seq, now, &kind).to_json()),
                reply,
            )
            .map_err(|_| Rejection::Unavailable)?;
        match published {
            Published::New(fanout) => {
                // Only here is the time all fan-out: a queued one also waits for the disk.
                self.metrics
                    .fanout_seconds
                    .observe(started.elapsed().as_secs_f64());
                count_fanout(&self.metrics, &fanout);
                let EventKind::Message { text, .. } = kind;
                Ok(Some(Posted {
                    seq: fanout.seq,
                    text,
                }))
            }
            Published::Again(original) => Ok(Some(original.into())),
            Published::Queued => Ok(None),
        }
    }
}

fn count_fanout(m: &Metrics, fanout: &Fanout) {
    m.messages_delivered.inc_by(fanout.queued);
    if fanout.overflowed > 0 {
        m.dropped_by("slow_consumer", fanout.overflowed);
    }
}

/// The ack for a stored message: its seq and the text the others received.
pub fn ack_frame(id: &str, event: &Event) -> String {
    let EventKind::Message { text, .. } = &event.kind;
    ServerFrame::Ack {
        id,
        seq: event.seq,
        text,
    }
    .to_json()
}

impl From<Event> for Posted {
    fn from(event: Event) -> Posted {
        let EventKind::Message { text, .. } = event.kind;
        Posted {
            seq: event.seq,
            text,
        }
    }
}
