//! Rooms and fan-out: who is in which room, and the one place a message leaves its sender.
//!
//! [`Room::publish`] is the single seam between one connection and the others: it assigns the
//! room's `seq`, encodes the outgoing frame once, and pushes the shared bytes into each other
//! member's [`Outbox`] without waiting. A member whose outbox is full is marked a slow consumer
//! and its own writer closes it; nobody else waits for it, and no lock is held while writing
//! to a socket. A broker that spans processes would sit behind `publish`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;

use crate::config::RoomsConfig;

/// What a connection's writer is asked to send.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Message),
    /// Send a Close frame with this code and reason, then stop.
    Close(
        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode,
        &'static str,
    ),
}

/// One connection's bounded outbound queue.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// Bytes queued and not yet written; bounded by `limit` so a reader that never reads costs
    /// at most `limit` bytes of server memory.
    queued: AtomicUsize,
    limit: usize,
    /// Set once when the queue overflows; the writer sees it through `wake` and closes 1013.
    overflowed: AtomicBool,
    pub wake: Notify,
}

impl Outbox {
    /// A queue bounded to `limit_bytes`, and its receiving end for the writer.
    pub fn new(limit_bytes: usize) -> (Arc<Outbox>, mpsc::Receiver<Outgoing>) {
        // The byte bound is what matters; the count bound only stops many tiny frames from
        // costing more in channel slots than in bytes.
        let (tx, rx) = mpsc::channel((limit_bytes / 64).max(64));
        let outbox = Outbox {
            tx,
            queued: AtomicUsize::new(0),
            limit: limit_bytes,
            overflowed: AtomicBool::new(false),
            wake: Notify::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Queue a data frame without waiting; on overflow mark this connection a slow consumer.
    /// Returns whether the frame was queued.
    pub fn push(&self, msg: Message) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let len = msg.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before + len > self.limit || self.tx.try_send(Outgoing::Frame(msg)).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            return false;
        }
        true
    }

    /// Ask the writer to close the connection after what is already queued.
    pub fn close(
        &self,
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode,
        reason: &'static str,
    ) {
        if self.tx.try_send(Outgoing::Close(code, reason)).is_err() {
            // Queue full: the connection is being closed as a slow consumer anyway.
            self.overflowed.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// The writer reports bytes it has handed to the socket.
    pub fn written(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// A connection's identity inside a room.
pub type ConnId = u64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Default)]
struct RoomState {
    members: HashMap<ConnId, Arc<Outbox>>,
    /// Last `seq` handed out; assigned only under this lock so it orders delivery.
    seq: u64,
}

/// What one `publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub seq: u64,
    /// Recipients the message was queued for.
    pub queued: u64,
    /// Recipients whose queue was full (now closing as slow consumers).
    pub overflowed: u64,
}

#[derive(Debug)]
pub struct Room {
    pub name: String,
    state: Mutex<RoomState>,
}

impl Room {
    /// Deliver to every member but `from`. `encode` gets the new `seq` and returns the frame,
    /// built once and shared by all recipients.
    pub fn publish(&self, from: ConnId, encode: impl FnOnce(u64) -> Message) -> Fanout {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seq += 1;
        let mut out = Fanout {
            seq: st.seq,
            queued: 0,
            overflowed: 0,
        };
        let msg = encode(out.seq);
        for (id, outbox) in &st.members {
            if *id != from {
                if outbox.push(msg.clone()) {
                    out.queued += 1;
                } else {
                    out.overflowed += 1;
                }
            }
        }
        out
    }

    pub fn member_count(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .len()
    }
}

/// Why a join was refused. Both map to the same 403 so a client cannot probe which rooms exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// Not listed and not creatable (auto-create off, or `rooms.max_rooms` reached).
    Unavailable,
    /// `rooms.max_members` reached.
    Full,
}

/// Every room that exists.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Listed rooms live for the whole run; others are dropped when their last member leaves,
    /// so `max_rooms` counts rooms in use.
    listed: HashSet<String>,
    auto_create: bool,
    max_rooms: usize,
    max_members: usize,
}

impl Rooms {
    pub fn new(cfg: &RoomsConfig) -> Arc<Rooms> {
        let rooms = cfg
            .names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    Arc::new(Room {
                        name: n.clone(),
                        state: Default::default(),
                    }),
                )
            })
            .collect();
        Arc::new(Rooms {
            rooms: Mutex::new(rooms),
            listed: cfg.names.iter().cloned().collect(),
            auto_create: cfg.auto_create,
            max_rooms: cfg.max_rooms,
            max_members: cfg.max_members,
        })
    }

    /// Whether `name` exists or could be created now.
    pub fn available(&self, name: &str) -> bool {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.contains_key(name) || (self.auto_create && rooms.len() < self.max_rooms)
    }

    /// Add a connection to a room, creating it if allowed. The returned guard leaves on drop.
    pub fn join(
        self: &Arc<Self>,
        name: &str,
        id: ConnId,
        outbox: Arc<Outbox>,
    ) -> Result<Membership, JoinError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let room = match rooms.get(name) {
            Some(r) => r.clone(),
            None if self.auto_create && rooms.len() < self.max_rooms => {
                let r = Arc::new(Room {
                    name: name.to_string(),
                    state: Default::default(),
                });
                rooms.insert(name.to_string(), r.clone());
                r
            }
            None => return Err(JoinError::Unavailable),
        };
        let mut st = room.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.members.len() >= self.max_members {
            drop(st);
            self.drop_if_unused(&mut rooms, &room);
            return Err(JoinError::Full);
        }
        st.members.insert(id, outbox);
        drop(st);
        Ok(Membership {
            rooms: self.clone(),
            room,
            id,
        })
    }

    fn drop_if_unused(&self, rooms: &mut HashMap<String, Arc<Room>>, room: &Arc<Room>) {
        if !self.listed.contains(&room.name) && room.member_count() == 0 {
            rooms.remove(&room.name);
        }
    }

    pub fn count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A connection's place in a room; leaving is dropping it.
#[derive(Debug)]
pub struct Membership {
    rooms: Arc<Rooms>,
    pub room: Arc<Room>,
    pub id: ConnId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Registry lock before room lock, the same order as `join`, so the two never deadlock.
        let mut rooms = self.rooms.rooms.lock().unwrap_or_else(|p| p.into_inner());
        self.room
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .remove(&self.id);
        self.rooms.drop_if_unused(&mut rooms, &self.room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(auto: bool) -> RoomsConfig {
        RoomsConfig {
            names: vec!["lobby".into()],
            auto_create: auto,
            max_rooms: 2,
            max_members: 2,
        }
    }

    fn text(rx: &mut mpsc::Receiver<Outgoing>) -> Option<String> {
        match rx.try_recv().ok()? {
            Outgoing::Frame(Message::Text(t)) => Some(t.to_string()),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn publish_skips_sender_and_orders_seq() {
        let rooms = Rooms::new(&cfg(false));
        let (a, mut ra) = Outbox::new(1 << 16);
        let (b, mut rb) = Outbox::new(1 << 16);
        let ma = rooms.join("lobby", 1, a).unwrap();
        let _mb = rooms.join("lobby", 2, b).unwrap();
        let s1 = ma.room.publish(1, |seq| Message::text(format!("m{seq}")));
        let s2 = ma.room.publish(1, |seq| Message::text(format!("m{seq}")));
        assert_eq!((s1.seq, s2.seq), (1, 2));
        assert_eq!((s1.queued, s1.overflowed), (1, 0));
        assert_eq!(text(&mut rb).as_deref(), Some("m1"));
        assert_eq!(text(&mut rb).as_deref(), Some("m2"));
        assert_eq!(text(&mut ra), None);
    }

    #[test]
    fn caps_and_cleanup() {
        let rooms = Rooms::new(&cfg(true));
        let ob = || Outbox::new(1 << 16).0;
        assert_eq!(rooms.join("nope", 1, ob()).map(|_| ()), Ok(()));
        // "nope" was dropped when its only member left.
        assert_eq!(rooms.count(), 1);
        let _x = rooms.join("x", 2, ob()).unwrap();
        assert_eq!(
            rooms.join("y", 3, ob()).unwrap_err(),
            JoinError::Unavailable
        );
        let _l1 = rooms.join("lobby", 4, ob()).unwrap();
        let _l2 = rooms.join("lobby", 5, ob()).unwrap();
        assert_eq!(rooms.join("lobby", 6, ob()).unwrap_err(), JoinError::Full);
        let strict = Rooms::new(&cfg(false));
        assert_eq!(
            strict.join("other", 7, ob()).unwrap_err(),
            JoinError::Unavailable
        );
    }

    #[test]
    fn overflow_marks_slow_consumer() {
        let (o, _rx) = Outbox::new(100);
        assert!(o.push(Message::text("x".repeat(60))));
        assert!(!o.push(Message::text("x".repeat(60))));
        assert!(o.overflowed());
        assert!(!o.push(Message::text("y")));
    }
}
