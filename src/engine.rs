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

use tokio_tungstenite::tungstenite::Message;

use crate::auth::Identity;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::moderation::{audit, Action, Kind};
use crate::protocol::{ErrorCode, ServerFrame, WelcomeLimits};
use crate::roles::Role;
use crate::room::{
    moderation_frame, next_conn_id, ConnId, Membership, Outbox, OutboxReader, Published, Reply,
    Reservation, Room, Rooms, Sanctioned,
};
use crate::sanitize::Sanitizer;
use crate::store::{now_ms, Event, EventKind, StoreError};

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
    max_mute_s: u64,
    kick_ban_ms: u64,
    metrics: Arc<Metrics>,
}

/// A connection's membership of a room, with what it needs to be reached and named.
#[derive(Debug)]
pub struct Member {
    /// Unix seconds after which the member's signed token stops being valid.
    pub expires_at: Option<u64>,
    /// The identity's role in this room, fixed at join.
    pub role: Role,
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
    /// The sender's role here does not allow posting (a reader), or they were kicked.
    Forbidden,
    /// Muted by a moderator for this many more milliseconds.
    Muted(u64),
}

impl Rejection {
    pub fn code(self) -> ErrorCode {
        match self {
            Rejection::TooLong => ErrorCode::TooLong,
            Rejection::Empty => ErrorCode::Empty,
            Rejection::Unavailable => ErrorCode::Unavailable,
            Rejection::Forbidden => ErrorCode::Forbidden,
            Rejection::Muted(_) => ErrorCode::Muted,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::TooLong => "text longer than max_message_bytes",
            Rejection::Empty => "nothing left to send after sanitising",
            Rejection::Unavailable => "the message could not be stored; send it again later",
            Rejection::Forbidden => "your role in this room does not allow posting",
            Rejection::Muted(_) => "a moderator muted you in this room",
        }
    }

    /// How long until trying again makes sense, for `retry_after_ms`.
    pub fn retry_after_ms(self) -> Option<u64> {
        match self {
            Rejection::Muted(ms) => Some(ms.max(1)),
            _ => None,
        }
    }
}

/// Who posts a message, and where.
#[derive(Debug, Clone, Copy)]
pub struct Author<'a> {
    pub room: &'a Arc<Room>,
    /// The sending connection, which is not sent its own message; an API call has its own.
    pub conn: ConnId,
    /// The name shown as `from`.
    pub name: &'a str,
    pub role: Role,
    /// Posted through the HTTP API (shown with `"via":"api"`).
    pub via_api: bool,
}

/// What [`Engine::submit`] did with a message.
#[derive(Debug)]
pub enum Submitted {
    /// Stored and delivered now.
    New(Posted),
    /// The same id was stored before: the original; delivered to nobody again.
    Again(Posted),
    /// Waiting for the durable store; the reply is called once it is settled.
    Queued,
}

/// Why a moderation request was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModRefusal {
    /// Not a moderator here, or the target is one.
    Forbidden(&'static str),
    /// The user to act on is not in the room.
    NotPresent,
    /// The room never had that seq.
    NotFound,
    /// The request is malformed (a reason too long, a mute too long).
    Bad(String),
    Unavailable,
}

impl ModRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            ModRefusal::Forbidden(_) => ErrorCode::Forbidden,
            ModRefusal::NotPresent => ErrorCode::NotPresent,
            ModRefusal::NotFound => ErrorCode::NotFound,
            ModRefusal::Bad(_) => ErrorCode::BadRequest,
            ModRefusal::Unavailable => ErrorCode::Unavailable,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ModRefusal::Forbidden(why) => why,
            ModRefusal::NotPresent => "that user is not in this room",
            ModRefusal::NotFound => "this room never had a message with that seq",
            ModRefusal::Bad(why) => why,
            ModRefusal::Unavailable => "the action could not be stored; try again later",
        }
    }
}

/// Who asks for a moderation action.
#[derive(Debug, Clone, Copy)]
pub struct Moderator<'a> {
    pub name: &'a str,
    /// The moderator's connection (answered with the request's id rather than the broadcast).
    pub conn: Option<ConnId>,
    pub role: Role,
    /// "socket" or "api", for the audit log.
    pub via: &'static str,
}

/// Told once how a moderation request ended: the frame announcing it (with the request's
/// id), or why it was refused.
pub type ModDone = Box<dyn FnOnce(Result<Message, ModRefusal>) + Send>;

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
pub fn message_frame<'a>(room: &'a str, seq: u64, ts: u64, kind: &'a EventKind) -> ServerFrame<'a> {
    let EventKind::Message {
        from,
        text,
        via_api,
        deleted,
        ..
    } = kind;
    ServerFrame::Message {
        room,
        from,
        text,
        seq,
        ts,
        via: via_api.then_some("api"),
        deleted: *deleted,
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
            max_mute_s: config.moderation.max_mute_s,
            kick_ban_ms: config.moderation.kick_ban_s.saturating_mul(1000),
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
    ) -> (Member, OutboxReader) {
        let (outbox, rx) = Outbox::new(self.outbound_queue_bytes);
        let room_name = reservation.room().name.clone();
        let echo = self.echo;
        let on_join = self.on_join;
        // The backlog may not fill the outbox: a member must be able to take live messages.
        let budget = self.outbound_queue_bytes / 2;
        let max_listed = self.max_listed;
        let role = identity.role(&room_name);
        let membership = self.rooms.join(
            reservation,
            next_conn_id(),
            &identity.user,
            role,
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
                    role: role.as_str(),
                };
                outbox.push(Message::text(welcome.to_json()));
                for frame in backlog {
                    outbox.push(frame);
                }
            },
        );
        // Of the identity only the expiry is kept (the name is the membership's): a signed
        // token may list many rooms and roles, and a connection would otherwise hold them for
        // its whole life.
        let member = Member {
            expires_at: identity.expires_at,
            role,
            membership,
            outbox,
        };
        (member, rx)
    }

    /// A page of `room`: the newest `limit` (default 50, at most 100) retained messages with
    /// seq < `before` (default: all), oldest first, and whether older ones are retained; `None`
    /// when `before` or `limit` is not a whole number (`limit` at least 1).
    pub fn page(
        &self,
        room: &Room,
        before: &serde_json::Value,
        limit: &serde_json::Value,
    ) -> Option<(Vec<Event>, bool)> {
        let before = match before {
            serde_json::Value::Null => u64::MAX,
            v => v.as_u64()?,
        };
        let limit = match limit {
            serde_json::Value::Null => DEFAULT_PAGE,
            v => v.as_u64().filter(|&n| n > 0)?.min(MAX_PAGE as u64) as usize,
        };
        Some(room.with_log(|log| log.page(before, limit)))
    }

    /// [`Engine::page`] of the member's room as the history frame to send.
    pub fn history(
        &self,
        member: &Member,
        id: Option<&str>,
        before: &serde_json::Value,
        limit: &serde_json::Value,
    ) -> Option<String> {
        let room = &member.membership.room;
        let (events, has_more) = self.page(room, before, limit)?;
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

    /// One message from `member`: [`Engine::submit`], its ack queued to the member's outbox
    /// when the message carries an `id`. `Ok(None)`: the message waits for the durable
    /// store; its ack (or `unavailable` error) is queued once it is committed, in order, and
    /// the caller goes on reading meanwhile.
    pub fn post(
        &self,
        member: &Member,
        text: &str,
        id: Option<&str>,
    ) -> Result<Option<Posted>, Rejection> {
        let author = Author {
            room: &member.membership.room,
            conn: member.membership.id,
            name: member.membership.user(),
            role: member.role,
            via_api: false,
        };
        let reply = || -> Reply {
            let (outbox, metrics) = (member.outbox.clone(), self.metrics.clone());
            let id = id.map(str::to_string);
            Box::new(move |settled| match settled {
                Ok((event, fanout)) => {
                    if let Some(f) = fanout {
                        metrics.fanned_out(&f);
                    }
                    if let Some(id) = &id {
                        outbox.push(Message::text(ack_frame(id, &event)));
                    }
                }
                Err(_) => {
                    let r = Rejection::Unavailable;
                    refuse(
                        &outbox,
                        &metrics,
                        r.code(),
                        r.message(),
                        id.as_deref(),
                        None,
                    );
                }
            })
        };
        match self.submit(author, text, id, reply)? {
            Submitted::New(posted) | Submitted::Again(posted) => Ok(Some(posted)),
            Submitted::Queued => Ok(None),
        }
    }

    /// One message, from a session or the API alike: role -> kicked or muted -> length ->
    /// sanitise -> stored and delivered to the others. A message that carries an `id` its
    /// author already used in this room within `history.dedup_window_s` is not stored or
    /// delivered again: the original comes back. With a durable store the message is
    /// queued and `reply()` is told the outcome once it is committed.
    pub fn submit(
        &self,
        author: Author<'_>,
        text: &str,
        id: Option<&str>,
        reply: impl FnOnce() -> Reply,
    ) -> Result<Submitted, Rejection> {
        let room = author.room;
        let from = author.name;
        if !author.role.may_post() {
            return Err(Rejection::Forbidden);
        }
        let sanctions = &self.rooms.sanctions;
        if !author.via_api && sanctions.remaining(&room.name, from, Kind::Ban).is_some() {
            return Err(Rejection::Forbidden);
        }
        if let Some(ms) = sanctions.remaining(&room.name, from, Kind::Mute) {
            return Err(Rejection::Muted(ms));
        }
        if text.len() > self.max_message_bytes {
            return Err(Rejection::TooLong);
        }
        let clean = self.sanitizer.clean(text).ok_or(Rejection::Empty)?;
        let now = now_ms();
        let kind = EventKind::message(from, clean, id, author.via_api);
        let resend = id.map(|id| (from, id, now.saturating_sub(self.dedup_window_ms)));
        let published = room
            .publish(
                author.conn,
                now,
                &kind,
                resend,
                |seq| Message::text(message_frame(&room.name, seq, now, &kind).to_json()),
                reply,
            )
            .map_err(|_| Rejection::Unavailable)?;
        Ok(match published {
            Published::New(fanout) => {
                self.metrics.fanned_out(&fanout);
                let EventKind::Message { text, .. } = kind;
                Submitted::New(Posted {
                    seq: fanout.seq,
                    text,
                })
            }
            Published::Again(original) => Submitted::Again(original.into()),
            Published::Queued => Submitted::Queued,
        })
    }

    /// A moderation request in `room`: checked (the moderator's role, the request, the
    /// target present and not a moderator, the seq one the room had), then carried out on
    /// every node and written to the audit log; `done` gets the frame that announces it,
    /// with `id`, or the refusal. A deletion is made durable before anyone is told.
    pub fn moderate(
        &self,
        room: &Arc<Room>,
        by: Moderator<'_>,
        action: Action,
        id: Option<&str>,
        done: ModDone,
    ) {
        if let Err(refusal) = self.check_moderation(room, &by, &action) {
            return done(Err(refusal));
        }
        let now = now_ms();
        let until_ms = match &action {
            Action::Kick { .. } => now.saturating_add(self.kick_ban_ms),
            Action::Mute { seconds, .. } => now.saturating_add(seconds.saturating_mul(1000)),
            Action::Delete { .. } => 0,
        };
        let sanction = Sanctioned {
            action,
            by: by.name.to_string(),
            ts: now,
            until_ms,
        };
        let frame = moderation_frame(&sanction.action, by.name, now, id);
        let origin = by.conn;
        let via = by.via;
        let (writer, shared) = room.stores();
        let rooms = self.rooms.clone();
        let metrics = self.metrics.clone();
        let name = room.name.clone();
        // Told once the action is durable where it must be: applied here (a shared store
        // applies it on every node itself), audited, and the moderator answered.
        let finish = move |applied: Result<Sanctioned, StoreError>, apply_here: bool| {
            let s = match applied {
                Ok(s) => s,
                Err(_) => return done(Err(ModRefusal::Unavailable)),
            };
            if apply_here && !rooms.apply(&name, &s, origin) {
                return done(Err(ModRefusal::Unavailable));
            }
            audit(&name, &s.by, via, &s.action);
            metrics.moderated(s.action.name());
            done(Ok(frame))
        };
        if let Some(shared) = shared {
            let copy = sanction.clone();
            return shared.moderate(
                room.name.clone(),
                sanction,
                origin.unwrap_or(0),
                Box::new(move |r| finish(r.map(|()| copy), false)),
            );
        }
        match (&sanction.action, writer) {
            (Action::Delete { seq }, Some(writer)) => {
                let seq = *seq;
                writer.erase(
                    room.name.clone(),
                    seq,
                    Box::new(move |r| finish(r.map(|()| sanction), true)),
                );
            }
            _ => finish(Ok(sanction), true),
        }
    }

    fn check_moderation(
        &self,
        room: &Room,
        by: &Moderator<'_>,
        action: &Action,
    ) -> Result<(), ModRefusal> {
        if !by.role.may_moderate() {
            return Err(ModRefusal::Forbidden(
                "only a moderator of this room may do that",
            ));
        }
        action.check(self.max_mute_s).map_err(ModRefusal::Bad)?;
        if let Some(user) = action.target() {
            let (present, moderator) = room.standing(user);
            if !present && self.rooms.knows_everyone(room) {
                return Err(ModRefusal::NotPresent);
            }
            if moderator || user == by.name {
                return Err(ModRefusal::Forbidden(
                    "a moderator cannot be kicked or muted",
                ));
            }
        }
        if let Action::Delete { seq } = action {
            if *seq > room.top() {
                return Err(ModRefusal::NotFound);
            }
        }
        Ok(())
    }
}

/// Queue an error frame for a refused request (counted as dropped, by its code).
pub fn refuse(
    outbox: &Outbox,
    metrics: &Metrics,
    code: ErrorCode,
    message: &str,
    id: Option<&str>,
    retry_after_ms: Option<u64>,
) {
    metrics.dropped(code.as_str());
    let frame = ServerFrame::Error {
        code,
        message,
        id,
        retry_after_ms,
    };
    outbox.push(Message::text(frame.to_json()));
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
