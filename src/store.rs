//! The store seam: a room's history as a log of events, and the one place a message gets its
//! `seq`.
//!
//! [`RoomLog::append`] assigns the next `seq` (the room's top + 1) and keeps the event; the
//! engine appends under the room's lock and fans out in the same critical section, so seq order
//! is delivery order. [`RoomLog::range`] reads what is retained, for backlogs and paging. The
//! in-memory log here keeps the last `retain` events of a room for as long as the room exists
//! (0 keeps none: today's relay); a durable log (SQLite, Redis) implements the same trait.

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
    },
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
    /// The seq of the oldest retained event, if any.
    fn oldest(&self) -> Option<u64>;
    /// Retained events with `after < seq`, oldest first, at most `limit`.
    fn range(&self, after: u64, limit: usize) -> Vec<Event>;
    /// The retained message `from` sent with client id `id`, if it was stored at or after `since_ts`.
    fn find(&self, from: &str, id: &str, since_ts: u64) -> Option<Event>;
    /// The newest `limit` retained events with `seq < before`, oldest first, and whether
    /// older ones are retained.
    fn page(&self, before: u64, limit: usize) -> (Vec<Event>, bool);
}

/// Opens the log of a room by name.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn open(&self, room: &str) -> Result<Box<dyn RoomLog>, StoreError>;
}

/// Events kept in memory, the last `retain` of each room.
#[derive(Debug, Clone, Copy)]
pub struct MemoryStore {
    pub retain: usize,
}

impl Store for MemoryStore {
    fn open(&self, room: &str) -> Result<Box<dyn RoomLog>, StoreError> {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StoreError("no randomness".into()))?;
        Ok(Box::new(MemoryLog {
            epoch: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            room: room.into(),
            top: 0,
            retain: self.retain,
            events: VecDeque::new(),
            ids: HashMap::new(),
        }))
    }
}

#[derive(Debug)]
struct MemoryLog {
    epoch: String,
    room: Arc<str>,
    top: u64,
    retain: usize,
    events: VecDeque<Event>,
    /// (sender, client id) -> seq of the retained events that carry an id.
    ids: HashMap<(String, String), u64>,
}

impl RoomLog for MemoryLog {
    fn append(&mut self, ts: u64, kind: &EventKind) -> Result<u64, StoreError> {
        self.top += 1;
        if self.retain > 0 {
            let event = Event {
                room: self.room.clone(),
                seq: self.top,
                ts,
                kind: kind.clone(),
            };
            if self.events.len() == self.retain {
                if let Some(EventKind::Message {
                    from, id: Some(id), ..
                }) = self.events.pop_front().map(|e| e.kind)
                {
                    self.ids.remove(&(from, id));
                }
            }
            if let EventKind::Message {
                from, id: Some(id), ..
            } = &event.kind
            {
                self.ids.insert((from.clone(), id.clone()), event.seq);
            }
            self.events.push_back(event);
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
        let older = self.events.iter().filter(|e| e.seq < before).count();
        let skip = older.saturating_sub(limit);
        let page = self.events.iter().take(older).skip(skip).cloned().collect();
        (page, skip > 0)
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn oldest(&self) -> Option<u64> {
        self.events.front().map(|e| e.seq)
    }

    fn range(&self, after: u64, limit: usize) -> Vec<Event> {
        self.events
            .iter()
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
        EventKind::Message {
            from: "alice".into(),
            text: t.into(),
            id: Some(t.into()),
        }
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
