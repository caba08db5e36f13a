//! The store seam: a room's history as a log of events, and the one place a message gets its
//! `seq`.
//!
//! A room holds a [`RoomLog`]: its epoch, its top seq and the retained window of its events,
//! in memory, so backlogs, pages and resend checks never wait for a disk under the room's
//! lock. [`RoomLog::append`] assigns the next `seq` (the room's top + 1) and keeps the event;
//! the room appends under its lock and fans out in the same critical section, so seq order is
//! delivery order. With the memory store that is all. A durable store (sqlite.rs) also has a
//! [`Writer`]: the room hands it each event with the seq it will get, the writer commits it
//! and calls back, and only then does the room append it to the log and deliver it, so nothing
//! is shown or acked before it is on disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What happened in a room. Messages are the only kind stored today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Message {
        from: String,
        /// The sanitised text that was delivered, never the raw input.
        text: String,
        /// The id the sender gave it, for idempotent resends.
        id: Option<String>,
        /// Posted by a back end through the HTTP API (shown with `"via":"api"`).
        via_api: bool,
        /// Deleted by a moderator: a tombstone, its text gone, its seq kept so a resume
        /// stays exact.
        deleted: bool,
    },
}

impl EventKind {
    /// A person's message as a session posts it.
    pub fn message(from: &str, text: String, id: Option<&str>, via_api: bool) -> EventKind {
        EventKind::Message {
            from: from.to_string(),
            text,
            id: id.map(str::to_string),
            via_api,
            deleted: false,
        }
    }

    /// Make this event a tombstone.
    pub fn erase(&mut self) {
        let EventKind::Message { text, deleted, .. } = self;
        *text = String::new();
        *deleted = true;
    }
}

/// One stored event of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub room: Arc<str>,
    /// The room's position of this event: 1 for its first, +1 per event, never reused.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, when it was appended.
    pub ts: u64,
    pub kind: EventKind,
}

/// Why the log could not take an event; the message is then delivered to nobody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

/// One room's log. Not shared between rooms: a room holds its own, so the log of a room that
/// is dropped (auto-created and empty) goes with it.
pub trait RoomLog: Send + std::fmt::Debug {
    /// Store an event and return its `seq`. By reference: a log that keeps nothing (the
    /// relay) copies nothing on the message path.
    fn append(&mut self, ts: u64, kind: &EventKind) -> Result<u64, StoreError>;
    /// The seq of the last event (0 for an empty room).
    fn top(&self) -> u64;
    /// The room's epoch: it names this sequence of seqs. A store that loses a room's events
    /// (a restart of the memory store, a deleted file) gives the room a new one, so a client
    /// that resumes with the old epoch learns that its view is stale.
    fn epoch(&self) -> &str;
    /// The store lost the room's events (a shared store restarted empty): start again at
    /// seq 0 under `epoch`.
    fn reset(&mut self, epoch: String);
    /// The seq of the oldest retained event, if any.
    fn oldest(&self) -> Option<u64>;
    /// Retained events with `after < seq`, oldest first, at most `limit`.
    fn range(&self, after: u64, limit: usize) -> Vec<Event>;
    /// The retained message `from` sent with client id `id`, if it was stored at or after `since_ts`.
    fn find(&self, from: &str, id: &str, since_ts: u64) -> Option<Event>;
    /// The newest `limit` retained events with `seq < before`, oldest first, and whether
    /// older ones are retained.
    fn page(&self, before: u64, limit: usize) -> (Vec<Event>, bool);
    /// A moderator deleted event `seq`: keep it as a tombstone (a store that already made it
    /// one on disk calls this for the window). Nothing happens to a seq not retained.
    fn erase(&mut self, seq: u64);
}

/// Opens the log of a room by name.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn open(&self, room: &str) -> Result<Box<dyn RoomLog>, StoreError>;
    /// Where events are made durable before they are appended and delivered; `None` when
    /// the log itself is the store (memory).
    fn writer(&self) -> Option<Writer> {
        None
    }
    /// A store shared by many nodes, which assigns seqs itself and publishes every event to
    /// every node (redis_store.rs); `None` for a store of this node only.
    fn shared(&self) -> Option<Arc<dyn Shared>> {
        None
    }
    /// Told the rooms once they exist, so a shared store can hand them events.
    fn attach(&self, _rooms: std::sync::Weak<crate::room::Rooms>) {}
    /// Whether the store answers now. A shared store that cannot be reached is not: new
    /// upgrades and history requests are refused rather than served from this node alone.
    fn ready(&self) -> bool {
        true
    }
}

/// How a post to a shared store ended: the stored event and whether it was stored before
/// (a resend: nobody is sent it again), or why it was not stored.
pub type SharedReply = Box<dyn FnOnce(Result<(Event, bool), StoreError>) + Send>;

/// A log shared by every node: seqs are assigned there, and every node (this one included)
/// delivers an event when the store publishes it, in seq order.
pub trait Shared: Send + Sync + std::fmt::Debug {
    /// Store a message (unless `kind`'s id was used by its sender in this room within the
    /// dedup window) and publish it to every node; `conn` is the sending connection, which
    /// its own node does not send it to. Never blocks.
    fn post(&self, room: Arc<str>, conn: u64, ts: u64, kind: EventKind, reply: SharedReply);
    /// Connection `conn` of `user` entered `room` on this node: the store counts it, and
    /// publishes a join if it is the user's first connection anywhere. Never blocks.
    fn arrive(&self, room: Arc<str>, user: Arc<str>, conn: u64);
    /// It left: a leave is published if it was the user's last connection anywhere.
    fn depart(&self, room: Arc<str>, user: Arc<str>, conn: u64);
    /// The users present in `room` on every node, for a room this node opens. Blocks for one
    /// round trip.
    fn present(&self, room: &str) -> Result<Vec<String>, StoreError>;
    /// Store a moderation action (a sanction with its deadline, or a deletion) and publish
    /// it to every node, each of which applies it ([`crate::room::Rooms::apply`]); `conn` is
    /// the moderator's connection on this node (0 for none). `reply` is told once it is
    /// stored. Never blocks.
    fn moderate(&self, room: Arc<str>, sanction: crate::room::Sanctioned, conn: u64, reply: Done);
}

/// Told once whether an event handed to a [`Writer`] was committed.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One event for a durable store to commit.
#[derive(Debug)]
pub struct Write {
    pub room: Arc<str>,
    /// The room's epoch, stored with its first event.
    pub epoch: Arc<str>,
    /// The seq it will have: the room's committed top + 1 when the writer reaches it, or
    /// the writer refuses it (an earlier write of the room failed).
    pub seq: u64,
    pub ts: u64,
    pub kind: EventKind,
}

/// A handle to a durable store's writer; writes of one room are committed in the order they
/// are handed over.
#[derive(Clone)]
pub struct Writer {
    pub(crate) tx: std::sync::mpsc::Sender<crate::sqlite::Job>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Make event `seq` of `room` a tombstone on disk, after every write queued before;
    /// `done` is called once, after those writes' own, on the runtime the store was opened in
    /// (else the writer's thread; here if the writer has stopped). Never blocks.
    pub fn erase(&self, room: Arc<str>, seq: u64, done: Done) {
        if let Err(std::sync::mpsc::SendError(crate::sqlite::Job::Erase { done, .. })) =
            self.tx.send(crate::sqlite::Job::Erase { room, seq, done })
        {
            done(Err(StoreError("the store's writer has stopped".into())));
        }
    }

    /// Queue `write`; `done` is called once it is committed or refused, in the order the
    /// writes were queued, on the runtime the store was opened in (else the writer's thread).
    /// Never blocks.
    pub fn write(&self, write: Write, done: Done) -> Result<(), StoreError> {
        self.tx
            .send(crate::sqlite::Job::Write(
                write,
                done,
                std::time::Instant::now(),
            ))
            .map_err(|_| StoreError("the store's writer has stopped".into()))
    }
}

/// A new random epoch: 16 hex digits.
pub fn new_epoch() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StoreError("no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Events kept in memory, the last `retain` of each room.
#[derive(Debug, Clone, Copy)]
pub struct MemoryStore {
    pub retain: usize,
}

impl Store for MemoryStore {
    fn open(&self, room: &str) -> Result<Box<dyn RoomLog>, StoreError> {
        Ok(Box::new(MemoryLog::new(
            room,
            new_epoch()?,
            0,
            self.retain,
            u64::MAX,
        )))
    }
}

/// The retained window of a room, in memory; the memory store's whole log and a durable
/// store's cache of what it has committed.
#[derive(Debug)]
pub struct MemoryLog {
    epoch: String,
    room: Arc<str>,
    top: u64,
    retain: usize,
    /// Events older than this many milliseconds are no longer retained.
    max_age_ms: u64,
    events: VecDeque<Event>,
    /// (sender, client id) -> seq of the retained events that carry an id.
    ids: HashMap<(String, String), u64>,
}

impl MemoryLog {
    pub fn new(room: &str, epoch: String, top: u64, retain: usize, max_age_ms: u64) -> MemoryLog {
        MemoryLog {
            epoch,
            room: room.into(),
            top,
            retain,
            max_age_ms,
            events: VecDeque::new(),
            ids: HashMap::new(),
        }
    }

    /// Keep an event loaded from a durable store (oldest first); the top follows it.
    pub fn load(&mut self, event: Event) {
        self.top = self.top.max(event.seq);
        self.keep(event);
    }

    fn keep(&mut self, event: Event) {
        if self.events.len() == self.retain {
            self.forget_oldest();
        }
        if let EventKind::Message {
            from, id: Some(id), ..
        } = &event.kind
        {
            self.ids.insert((from.clone(), id.clone()), event.seq);
        }
        self.events.push_back(event);
    }

    fn forget_oldest(&mut self) {
        if let Some(EventKind::Message {
            from, id: Some(id), ..
        }) = self.events.pop_front().map(|e| e.kind)
        {
            self.ids.remove(&(from, id));
        }
    }

    /// Retained events: those within `max_age_ms` of now (the window's front may hold older
    /// ones until the next append drops them).
    fn live(&self) -> impl DoubleEndedIterator<Item = &Event> + '_ {
        let cutoff = crate::store::now_ms().saturating_sub(self.max_age_ms);
        let skip = self.events.partition_point(|e| e.ts < cutoff);
        self.events.range(skip..)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RoomLog for MemoryLog {
    fn append(&mut self, ts: u64, kind: &EventKind) -> Result<u64, StoreError> {
        self.top += 1;
        let cutoff = ts.saturating_sub(self.max_age_ms);
        while self.events.front().is_some_and(|e| e.ts < cutoff) {
            self.forget_oldest();
        }
        if self.retain > 0 {
            let event = Event {
                room: self.room.clone(),
                seq: self.top,
                ts,
                kind: kind.clone(),
            };
            self.keep(event);
        }
        Ok(self.top)
    }

    fn top(&self) -> u64 {
        self.top
    }

    fn find(&self, from: &str, id: &str, since_ts: u64) -> Option<Event> {
        let seq = *self.ids.get(&(from.to_string(), id.to_string()))?;
        let first = self.events.front()?.seq;
        let event = self
            .events
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        (event.seq == seq && event.ts >= since_ts).then(|| event.clone())
    }

    fn page(&self, before: u64, limit: usize) -> (Vec<Event>, bool) {
        let older = self.live().filter(|e| e.seq < before).count();
        let skip = older.saturating_sub(limit);
        let page = self.live().take(older).skip(skip).cloned().collect();
        (page, skip > 0)
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn reset(&mut self, epoch: String) {
        self.epoch = epoch;
        self.top = 0;
        self.events.clear();
        self.ids.clear();
    }

    fn oldest(&self) -> Option<u64> {
        self.live().next().map(|e| e.seq)
    }

    fn erase(&mut self, seq: u64) {
        let Some(first) = self.events.front().map(|e| e.seq) else {
            return;
        };
        let at = seq.checked_sub(first).and_then(|i| usize::try_from(i).ok());
        if let Some(e) = at.and_then(|i| self.events.get_mut(i)) {
            if e.seq == seq {
                e.kind.erase();
            }
        }
    }

    fn range(&self, after: u64, limit: usize) -> Vec<Event> {
        self.live()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: &str) -> EventKind {
        EventKind::message("alice", t.into(), Some(t), false)
    }

    #[test]
    fn append_assigns_seq_and_retains_the_last_events() {
        let mut log = MemoryStore { retain: 2 }.open("lobby").unwrap();
        assert_eq!(log.top(), 0);
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(log.append(7, &msg(t)).unwrap(), i as u64 + 1);
        }
        assert_eq!(log.top(), 3);
        let seqs: Vec<_> = log.range(0, 10).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        let c = &log.range(2, 10)[0];
        assert_eq!((c.kind.clone(), &*c.room, c.ts), (msg("c"), "lobby", 7));
        assert!(log.range(3, 10).is_empty());
        assert_eq!(log.oldest(), Some(2));
        let (page, more) = log.page(4, 1);
        assert_eq!(
            (page.iter().map(|e| e.seq).collect::<Vec<_>>(), more),
            (vec![3], true)
        );
        let (page, more) = log.page(3, 5);
        assert_eq!(
            (page.iter().map(|e| e.seq).collect::<Vec<_>>(), more),
            (vec![2], false)
        );
        assert_eq!(log.epoch().len(), 16);
        // Ids of retained messages are found; a dropped one's is forgotten.
        assert_eq!(log.find("alice", "c", 0).map(|e| e.seq), Some(3));
        assert_eq!(log.find("alice", "c", 8), None, "older than the window");
        assert_eq!(log.find("bob", "c", 0), None);
        assert_eq!(log.find("alice", "a", 0), None);
        // A deleted message stays in place, its text gone, its id still known.
        log.erase(3);
        log.erase(1);
        let c = log.find("alice", "c", 0).unwrap();
        assert!(
            matches!(&c.kind, EventKind::Message { text, deleted: true, .. } if text.is_empty())
        );
        assert_eq!(log.range(0, 10).len(), 2);
        let other = MemoryStore { retain: 2 }.open("lobby").unwrap();
        assert_ne!(
            other.epoch(),
            log.epoch(),
            "a reopened room gets a new epoch"
        );
    }

    #[test]
    fn retain_zero_keeps_only_the_seq() {
        let mut log = MemoryStore { retain: 0 }.open("x").unwrap();
        log.append(0, &msg("a")).unwrap();
        assert_eq!(log.top(), 1);
        assert!(log.range(0, 10).is_empty());
    }
}
