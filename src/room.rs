//! Rooms and fan-out: who is in which room, and the one place a message leaves its sender.
//!
//! [`Room::publish`] is the single seam between one connection and the others: under the
//! room's lock it appends the event to the room's log (which assigns `seq`, see store.rs),
//! encodes the outgoing frame once, and pushes the shared bytes into each other member's
//! [`Outbox`] without waiting, so seq order is delivery order. With a durable store the event
//! first waits in the room's pending queue while the store's writer commits it; the writer's
//! callback ([`Room::settle`]) then appends and delivers it, in seq order, and a failed write
//! refuses it and every later pending one, so no seq is skipped. A member whose outbox is full
//! is marked a slow consumer and its own writer closes it; nobody else waits for it, and no
//! lock is held while writing to a socket. A fan-out (run by the SQLite store's settler, the
//! presence tick, the Redis subscriber, or with no store the sender) only lists the outboxes it
//! queued to; a [`WriteThrough`] then writes each idle member's frames into its socket, after
//! the room's lock is released and off the sender's task; a member whose writer is busy, or
//! whose socket is full, is left to its writer, in order. A busy room's fan-outs are paced
//! ([`Pacing`], `rooms.batch_ms`): one less than that after the room's last write is written
//! to the members the message before held, and holds the others on the room's own list,
//! written when the time is up or the next message joins it, so a member gets two messages
//! in one write. Presence lives here too, under the
//! same lock: a user's first connection to a room sends `join` to the others, the last one to
//! go `leave`. A place in a room is first reserved by the gate (so a full room is refused
//! before the upgrade) and then taken by the engine's join.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Message;

use crate::config::RoomsConfig;
use crate::moderation::{Action, Kind, Sanctions};
use crate::protocol::{close, ServerFrame};
use crate::roles::Role;
use crate::socket::{Socket, Ws};
use crate::store::{now_ms, Event, EventKind, RoomLog, Shared, Store, StoreError, Write, Writer};

/// What a connection's writer is asked to send.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Message),
    /// Send a Close frame with this code and reason, then stop.
    Close(
        tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode,
        Cow<'static, str>,
    ),
}

/// One connection's bounded outbound queue: a plain queue under a short lock, which the
/// writer empties in one step (swapping it with its own, empty one), so neither side
/// allocates per batch and an idle connection keeps only a few slots. (A tokio channel kept
/// about 2 KiB of blocks per connection, idle or not: heaptrack at 3,000 connections.)
///
/// It also holds the connection's socket, so a fan-out can write an idle member's frames
/// straight into it ([`WriteThrough`]) rather than wake the member's task to do it.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Bytes queued and not yet written; bounded by `limit` so a reader that never reads costs
    /// at most `limit` bytes of server memory.
    queued: AtomicUsize,
    limit: usize,
    /// Frames queued at most: the byte bound is what matters; this one only stops many tiny
    /// frames from costing more in queue slots than in bytes.
    max_items: usize,
    /// Set once when the queue overflows; the writer sees it through `wake` and closes 1013.
    overflowed: AtomicBool,
    /// Set when the writer is gone: nothing more is queued.
    closed: AtomicBool,
    /// Set when the server is shutting down; the writer sees it through `wake` and closes 1001.
    stopping: AtomicBool,
    /// The writer's task, woken for a frame, an overflow or a shutdown: all of the writer's
    /// waits run in its session's one task, so one waker serves them (two tokio `Notify`s
    /// took a lock on every push and on every poll of the writer).
    waker: AtomicWaker,
    /// The connection's socket, once its session runs.
    socket: OnceLock<Socket>,
    /// On the current [`WriteThrough`]'s list.
    listed: AtomicBool,
}

/// Slots a write-through gives back to an emptied queue: a few frames' worth, at most 448
/// bytes (56 a slot; one written a frame at a time keeps 4); a queue a burst grew past it is
/// freed.
const KEEP_SLOTS: usize = 8;

/// The queue, and who is writing from it.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// Who has taken frames from `items` and not yet handed them all to the socket. Nobody
    /// else may write meanwhile, or a later frame would overtake an earlier one.
    holder: Holder,
    /// Bytes of the first frame already written (a write-through the socket took part of).
    partial: usize,
    /// A write-through left something for the writer (frames, or output the socket has not
    /// taken yet): the writer takes the queue even when it is empty, and flushes.
    handed_back: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Holder {
    #[default]
    Nobody,
    Writer,
    WriteThrough,
}

/// Ready with what `ready` finds, else Pending with the task registered in `waker`, whose
/// `wake` follows every change `ready` looks at. Looked at again once registered: a change in
/// between found no waker to wake.
pub fn poll_until<T>(
    waker: &AtomicWaker,
    cx: &mut Context<'_>,
    mut ready: impl FnMut() -> Option<T>,
) -> Poll<T> {
    if let Some(t) = ready() {
        return Poll::Ready(t);
    }
    waker.register(cx.waker());
    match ready() {
        Some(t) => Poll::Ready(t),
        None => Poll::Pending,
    }
}

/// The writer's end of an [`Outbox`]; dropping it closes the outbox.
#[derive(Debug)]
pub struct OutboxReader {
    outbox: Arc<Outbox>,
}

impl OutboxReader {
    /// Move everything queued into `into` (empty), oldest first, waiting until there is
    /// something; `partial` is set to the bytes of its first frame already written. The two
    /// queues trade places, so no batch allocates: a writer keeps its `into` between batches
    /// (see [`OutboxReader::trim`]).
    pub async fn batch(&mut self, into: &mut VecDeque<Outgoing>, partial: &mut usize) {
        let outbox = &self.outbox;
        std::future::poll_fn(|cx| {
            poll_until(&outbox.waker, cx, || {
                outbox.take_into(into, partial).then_some(())
            })
        })
        .await
    }

    /// What is queued now, moved into `into` (empty), without waiting; false if nothing was.
    /// False also tells the outbox the writer holds nothing: a write-through may go ahead.
    pub fn try_batch(&mut self, into: &mut VecDeque<Outgoing>, partial: &mut usize) -> bool {
        self.outbox.take_into(into, partial)
    }

    /// Once a batch is written, give its queue's memory back: an idle connection keeps
    /// none (a few slots in each of its two queues were 0.4 KiB per idle connection), at the
    /// price of one allocation per wake-up.
    pub fn trim(into: &mut VecDeque<Outgoing>) {
        *into = VecDeque::new();
    }
}

impl Drop for OutboxReader {
    fn drop(&mut self) {
        self.outbox.closed.store(true, Ordering::Relaxed);
        self.outbox.lock().items.clear();
    }
}

impl Outbox {
    /// A queue bounded to `limit_bytes`, and its reading end for the writer.
    pub fn new(limit_bytes: usize) -> (Arc<Outbox>, OutboxReader) {
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(Queue::default()),
            queued: AtomicUsize::new(0),
            limit: limit_bytes,
            max_items: (limit_bytes / 64).max(64),
            overflowed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            socket: OnceLock::new(),
            listed: AtomicBool::new(false),
        });
        let reader = OutboxReader {
            outbox: outbox.clone(),
        };
        (outbox, reader)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Give the outbox its connection's socket (once, when the session starts).
    pub fn attach(&self, ws: Ws) {
        let _ = self.socket.set(Socket::new(ws));
    }

    /// The socket given by [`Outbox::attach`].
    pub fn socket(&self) -> &Socket {
        self.socket
            .get()
            .expect("a session attaches its socket before it runs")
    }

    /// Queue a data frame without waiting; on overflow mark this connection a slow consumer.
    /// Returns whether the frame was queued.
    pub fn push(&self, msg: Message) -> bool {
        let queued = self.enqueue(msg);
        self.waker.wake();
        queued
    }

    /// As [`Outbox::push`], from a fan-out: inside [`WriteThrough::run`] the writer is not
    /// woken; the outbox goes on the write-through's list instead.
    pub fn push_fanout(this: &Arc<Outbox>, msg: Message) -> bool {
        if !this.enqueue(msg) {
            this.waker.wake();
            return false;
        }
        let listed = DEFERRED.with_borrow_mut(|list| {
            let Some(list) = list else { return false };
            if !this.listed.swap(true, Ordering::Relaxed) {
                list.push(this.clone());
            }
            true
        });
        if !listed {
            this.waker.wake();
        }
        true
    }

    /// Queue without waking anyone; false (and the overflow marked) when it does not fit.
    fn enqueue(&self, msg: Message) -> bool {
        if self.overflowed.load(Ordering::Relaxed) || self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let len = msg.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        let queued = before + len <= self.limit && {
            let mut q = self.lock();
            q.items.len() < self.max_items && {
                q.items.push_back(Outgoing::Frame(msg));
                true
            }
        };
        if !queued {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
        }
        queued
    }

    /// Ask the writer to close the connection after what is already queued.
    pub fn close(
        &self,
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode,
        reason: impl Into<Cow<'static, str>>,
    ) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        self.lock()
            .items
            .push_back(Outgoing::Close(code, reason.into()));
        self.waker.wake();
    }

    /// Resolves once the writer must stop: its queue overflowed, or the server is stopping.
    pub async fn interrupted(&self) {
        std::future::poll_fn(|cx| {
            poll_until(&self.waker, cx, || {
                (self.overflowed() || self.stopping()).then_some(())
            })
        })
        .await
    }

    /// The writer takes what is queued: swapped into `into` (empty), with the bytes of its
    /// first frame already written; false if nothing was (the writer then holds nothing), or
    /// while a write-through holds the queue (it wakes the writer if it leaves anything).
    fn take_into(&self, into: &mut VecDeque<Outgoing>, partial: &mut usize) -> bool {
        let mut q = self.lock();
        if q.holder == Holder::WriteThrough {
            return false;
        }
        if q.items.is_empty() && !q.handed_back {
            q.holder = Holder::Nobody;
            return false;
        }
        std::mem::swap(&mut q.items, into);
        *partial = std::mem::take(&mut q.partial);
        q.handed_back = false;
        q.holder = Holder::Writer;
        true
    }

    /// Write what is queued straight into the socket, if the writer holds nothing and the
    /// connection is not closing; whatever the socket does not take whole goes back to the
    /// front of the queue for the writer, which is woken for it.
    fn write_through(&self) {
        let Some(socket) = self.socket.get() else {
            self.waker.wake();
            return;
        };
        let Some(mut items) = self.take_for_through() else {
            return;
        };
        let mut partial = 0;
        let done = socket.write_now(&mut items, &mut partial, |len| self.written(len));
        self.end_through(items, partial, done);
    }

    /// The queue, for a write-through, if nobody else holds it and there is something to
    /// write. Not when the writer holds frames (it takes the rest after them), nor when it was
    /// handed something back (it was woken for that), nor when it must stop (it was woken).
    fn take_for_through(&self) -> Option<VecDeque<Outgoing>> {
        let mut q = self.lock();
        if q.holder != Holder::Nobody || q.handed_back || q.items.is_empty() {
            return None;
        }
        if self.overflowed() || self.stopping() || self.closed.load(Ordering::Relaxed) {
            return None;
        }
        q.holder = Holder::WriteThrough;
        Some(std::mem::take(&mut q.items))
    }

    /// A write-through is over: `done` when all of it is on its way. Otherwise what is left
    /// (`partial` bytes of its first frame written) goes back in front of anything queued
    /// meanwhile, and the writer is woken to write it and flush.
    fn end_through(&self, mut left: VecDeque<Outgoing>, partial: usize, done: bool) {
        let mut q = self.lock();
        q.holder = Holder::Nobody;
        if done {
            if q.items.is_empty() {
                // Its slots back, so the next fan-out does not allocate them again (growing
                // and freeing the queue was ~8 % of a write-through's instructions); a
                // queue a burst grew is freed instead.
                if left.capacity() <= KEEP_SLOTS {
                    q.items = left;
                }
                return;
            }
        } else {
            left.append(&mut q.items);
            q.items = left;
            q.partial = partial;
            q.handed_back = true;
        }
        drop(q);
        self.waker.wake();
    }

    /// Off a write-through's list that will not be flushed: the writer does the writing.
    fn unlist_and_wake(&self) {
        self.listed.store(false, Ordering::Relaxed);
        self.waker.wake();
    }

    /// The writer reports bytes it has handed to the socket.
    pub fn written(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The server is shutting down: the writer closes with 1001 even while a socket that does
    /// not drain holds it (a queued Close would wait behind that socket).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.waker.wake();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The list of the [`WriteThrough`] running on this thread, if one is.
    static DEFERRED: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
}

/// Fan-outs whose members are written to by the fan-out's own task. Waking a member's task
/// for each frame (its poll, its select, its writer's futures and wakers) cost about as
/// much as sealing and sending the frame (~2.7 us a write, `RATE=50 bench/profile.sh
/// broadcast`). Fan-outs run inside [`WriteThrough::run`] only list the outboxes they
/// queued to; [`WriteThrough::flush`] then writes each one's frames, all of this run's at
/// once, straight into its socket, unless its writer is busy (it takes them after what it
/// holds) or the socket will not take them whole (they go back to the writer, woken).
#[derive(Debug, Default)]
pub struct WriteThrough {
    touched: Vec<Arc<Outbox>>,
    next: usize,
}

/// How long a write-through (or the fan-outs before it) runs before its task lets the worker's
/// other tasks run: about a scheduler time slice.
pub const THROUGH_SLICE: Duration = Duration::from_millis(2);

impl WriteThrough {
    /// Run `f` with this thread's fan-outs listing their outboxes here.
    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        /// Puts the thread back as it was even if `f` panics; a list still in place then
        /// has its writers woken, so no frame waits for a flush that will not come.
        struct Restore(Option<Vec<Arc<Outbox>>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                if let Some(left) = DEFERRED.replace(self.0.take()) {
                    left.iter().for_each(|o| o.unlist_and_wake());
                }
            }
        }
        let list = std::mem::take(&mut self.touched);
        let _restore = Restore(DEFERRED.replace(Some(list)));
        let r = f();
        self.touched = DEFERRED.with_borrow_mut(Option::take).unwrap_or_default();
        r
    }

    /// No outbox is waiting for [`WriteThrough::flush`].
    pub fn is_empty(&self) -> bool {
        self.next == self.touched.len()
    }

    /// How many outboxes are waiting for [`WriteThrough::flush`].
    fn len(&self) -> usize {
        self.touched.len() - self.next
    }

    /// The waiting outboxes after the first `at`, in their own list (listed still).
    fn split_off(&mut self, at: usize) -> WriteThrough {
        WriteThrough {
            touched: self
                .touched
                .split_off((self.next + at).min(self.touched.len())),
            next: 0,
        }
    }

    /// Write through to the listed outboxes for about `slice`; those left (see
    /// [`WriteThrough::is_empty`]) wait for the next call. The caller lets other tasks run in
    /// between; a fan-out run meanwhile adds its frames to the queues of those left, and lists
    /// again those already written to.
    pub fn flush(&mut self, slice: Duration) {
        let started = Instant::now();
        while let Some(o) = self.touched.get(self.next) {
            self.next += 1;
            o.listed.store(false, Ordering::Relaxed);
            o.write_through();
            if self.next.is_multiple_of(32) && started.elapsed() >= slice {
                return;
            }
        }
        self.touched.clear();
        self.next = 0;
    }

    /// Write through on a task of its own on `runtime`, so the caller (a sender's session with
    /// no store, the Redis thread) goes on at once: one task spawned per fan-out or batch
    /// rather than one woken per member, and different fan-outs may run on different workers.
    pub fn flush_on(mut self, runtime: &tokio::runtime::Handle) {
        if self.is_empty() {
            return;
        }
        // Unconstrained: see the SQLite settler.
        runtime.spawn(tokio::task::unconstrained(
            async move { self.flush_all().await },
        ));
    }

    /// [`WriteThrough::flush_on`] the current runtime; without one the members' writers are
    /// woken instead (see `Drop`).
    pub fn flush_elsewhere(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.flush_on(&runtime);
        }
    }

    /// Write through to every listed outbox, letting the worker's other tasks run after each
    /// [`THROUGH_SLICE`].
    pub async fn flush_all(&mut self) {
        while !self.is_empty() {
            self.flush(THROUGH_SLICE);
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for WriteThrough {
    fn drop(&mut self) {
        for o in self.touched.drain(self.next..) {
            o.unlist_and_wake();
        }
    }
}

/// A connection's identity inside a room.
pub type ConnId = u64;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub fn next_conn_id() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// A connection in a room: where its frames go, whose it is, and what it may do.
#[derive(Debug)]
struct Seat {
    outbox: Arc<Outbox>,
    user: Arc<str>,
    role: Role,
    /// The presence frames numbered up to this were already reflected in its welcome.
    presence_from: u64,
}

/// A join or leave frame waiting to go out with the room's next frame or tick.
#[derive(Debug)]
struct PresenceOut {
    /// Numbers the frames of a room, so a member that arrived after one is not sent it.
    n: u64,
    /// The connection it is about, which is not sent it.
    origin: ConnId,
    frame: Message,
}

#[derive(Debug)]
struct RoomState {
    members: HashMap<ConnId, Seat>,
    /// Users present, sorted, with their number of connections here. With a shared store:
    /// the users present on any node (kept by the store's join and leave events; the count
    /// then only says whether one is also here).
    users: BTreeMap<String, usize>,
    /// Places promised by the gate and not yet taken; they count toward `max_members`.
    reserved: usize,
    /// API requests using the room now: they keep it open but take no place in it.
    visitors: usize,
    /// The room's log: what is committed. Appended to only under this lock, so it orders
    /// delivery.
    log: Box<dyn RoomLog>,
    epoch: Arc<str>,
    /// The durable store's writer, if the log is not the store itself.
    writer: Option<Writer>,
    /// The store shared with other nodes, if any: it assigns seqs and publishes events, which
    /// come back through [`Room::receive`].
    shared: Option<Arc<dyn Shared>>,
    /// Messages handed to the writer and not yet settled, in seq order; at most one per
    /// connection (a session waits for its ack), plus resends waiting on them.
    pending: std::collections::VecDeque<Pending>,
    /// Names each write so a late answer for one already refused is recognised.
    tickets: u64,
    /// Join and leave frames not sent yet: they go out together, just before the room's next
    /// frame or at the next presence tick ([`Room::flush_presence`]), so a member's writer
    /// wakes once for many of them (a join storm) or for one with a message, not once each.
    presence_out: Vec<PresenceOut>,
    presence_seq: u64,
}

/// How a message handed to the store ended: the stored event and, for the connection that
/// sent it, what its delivery did (a resend waiting on the same message gets `None`).
pub type Settled = Result<(Event, Option<Fanout>), StoreError>;

/// Told how a queued message ended, under the room's lock right after its delivery, so a
/// sender's ack follows in its outbox in commit order without the sender waiting for it.
pub type Reply = Box<dyn FnOnce(Settled) + Send>;

/// Messages a room may have waiting for the store at once; beyond it a message is refused
/// (`unavailable`) rather than queued, so a stalled disk cannot grow memory without bound.
const MAX_PENDING: usize = 4096;

struct Pending {
    ticket: u64,
    from: ConnId,
    event: Event,
    frame: Message,
    waiters: Vec<Reply>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ticket", &self.ticket)
            .field("seq", &self.event.seq)
            .finish_non_exhaustive()
    }
}

impl RoomState {
    fn new(log: Box<dyn RoomLog>, store: &dyn Store) -> Mutex<RoomState> {
        Mutex::new(RoomState {
            writer: store.writer(),
            shared: store.shared(),
            members: HashMap::new(),
            users: BTreeMap::new(),
            reserved: 0,
            visitors: 0,
            epoch: log.epoch().into(),
            log,
            pending: std::collections::VecDeque::new(),
            tickets: 0,
            presence_out: Vec::new(),
            presence_seq: 0,
        })
    }

    /// See [`Room::receive`].
    fn receive(
        &mut self,
        event: &Event,
        origin: Option<ConnId>,
        encode: impl FnOnce(&Event) -> Message,
    ) -> Received {
        let top = self.log.top();
        if event.seq <= top {
            return Received::Duplicate;
        }
        if event.seq > top + 1 {
            return Received::Gap(top);
        }
        if self.log.append(event.ts, &event.kind).is_err() {
            return Received::Duplicate;
        }
        Received::Delivered(self.deliver(origin.unwrap_or(0), encode(event), event.seq))
    }

    /// See [`Room::resync`].
    fn resync(&mut self, epoch: &str) -> bool {
        if *self.epoch == *epoch {
            return false;
        }
        self.log.reset(epoch.to_string());
        self.epoch = epoch.into();
        let frame = ServerFrame::Resync { reason: "epoch" };
        self.deliver(0, Message::text(frame.to_json()), 0);
        true
    }

    /// Queue a join or leave frame about connection `origin` (see `presence_out`).
    fn announce(&mut self, origin: ConnId, frame: Message) {
        self.presence_seq += 1;
        self.presence_out.push(PresenceOut {
            n: self.presence_seq,
            origin,
            frame,
        });
    }

    /// Send the waiting join and leave frames, in order, each to the members that were
    /// there before it and are not its subject.
    fn flush_presence(&mut self) {
        if self.presence_out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.presence_out);
        for (id, seat) in &self.members {
            for p in &out {
                if *id != p.origin && p.n > seat.presence_from {
                    Outbox::push_fanout(&seat.outbox, p.frame.clone());
                }
            }
        }
    }

    /// Queue `msg` for every member but `from`, after any presence frames still waiting.
    fn deliver(&mut self, from: ConnId, msg: Message, seq: u64) -> Fanout {
        self.flush_presence();
        let started = Instant::now();
        let mut out = Fanout {
            seq,
            queued: 0,
            overflowed: 0,
            took: Duration::ZERO,
        };
        for (id, seat) in &self.members {
            if *id != from {
                if Outbox::push_fanout(&seat.outbox, msg.clone()) {
                    out.queued += 1;
                } else {
                    out.overflowed += 1;
                }
            }
        }
        out.took = started.elapsed();
        out
    }
}

/// What [`Room::publish`] did.
#[derive(Debug)]
pub enum Published {
    /// Stored and delivered.
    New(Fanout),
    /// The same message was stored before: this is it; nothing was delivered.
    Again(Event),
    /// Handed to the store's writer; the `reply` given to `publish` is called once it is
    /// committed (and delivered) or refused.
    Queued,
}

/// What one delivering `publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub seq: u64,
    /// Recipients the message was queued for.
    pub queued: u64,
    /// Recipients whose queue was full (now closing as slow consumers).
    pub overflowed: u64,
    /// Time spent queueing it for every recipient (zero: not delivered here).
    pub took: Duration,
}

#[derive(Debug)]
pub struct Room {
    pub name: Arc<str>,
    state: Mutex<RoomState>,
    /// Set while the room is on `waiting`, the list of rooms with presence frames to send.
    presence_waiting: AtomicBool,
    waiting: Arc<Waiting>,
    pacing: Option<Pacing>,
}

/// How long a join or leave may wait for company: frames waiting in a room go out with its
/// next message, or at this tick when the room is quiet.
pub const PRESENCE_TICK: Duration = Duration::from_millis(50);

/// The rooms with join or leave frames waiting, for the presence tick: it visits only these,
/// not every room (with thousands of quiet rooms, visiting all cost a busy core while idle).
#[derive(Debug, Default)]
pub struct Waiting(Mutex<Vec<std::sync::Weak<Room>>>);

/// A busy room's writes, paced (`rooms.batch_ms`): a message less than `every` after the
/// room's last write waits for the next message or for `every`, whichever comes first. At
/// 100 msg/s into 1,000 members nearly every write carried one message, and a write costs
/// far more than the frame in it (a syscall, a TLS record, the loopback's TCP work, waking the
/// reader): saturated, the same server delivers at about a seventh of the CPU per delivery,
/// with dozens of frames in each write. A fan-out less than `every` after the room's last
/// write lists its outboxes on the room's held list instead of its caller's; the next
/// message's fan-out writes them through at once, with both messages, or else a task does
/// when `every` is up; a message in a quiet room still goes out at once. Members are held in
/// two halves that take turns (see [`Pacing::run`]): holding everyone every other message
/// made the same writes, but then every other message waited the whole gap for all members
/// and each fan-out wrote to all of them, two messages at a time. Waiting for a third
/// message (a flush at `every` only) cut CPU a little more but made every held message wait
/// up to `every` rather than up to the gap to the next one. The frames are queued in order
/// at once; only the write waits (a member's own writer, woken for its ack, takes them
/// sooner). The price is latency: with messages evenly 10 ms apart (the benchmark's 100 msg/s)
/// half the deliveries wait the whole gap, for 0.6-0.7x of the CPU per delivery (README,
/// issue 14's batch_ms table).
#[derive(Debug)]
struct Pacing {
    every: Duration,
    /// The sockets' runtime: the Redis subscriber's fan-outs run on a thread of their own.
    runtime: tokio::runtime::Handle,
    state: Arc<Mutex<Pace>>,
}

#[derive(Debug, Default)]
struct Pace {
    /// When the members were last written to: a fan-out written at once, or a held flush.
    last: Option<Instant>,
    /// Outboxes waiting for the next write, for one message; a task is due to flush them
    /// while there are any, unless a second message takes them first.
    held: WriteThrough,
}

impl Pace {
    /// Whether the members were written to less than `ago` ago.
    fn wrote_within(&self, ago: Duration) -> bool {
        self.last.is_some_and(|t| t.elapsed() < ago)
    }

    fn take(&mut self) -> WriteThrough {
        self.last = Some(Instant::now());
        std::mem::take(&mut self.held)
    }
}

impl Pacing {
    /// Run the fan-out `f` (under the room's lock), paced if the room wrote less than `every`
    /// ago: the members held from the previous message are written now, with this one; the
    /// others are held for the next message or until `every` after the room's last write
    /// (this one's, when it wrote), whichever comes first. When nobody is held (a busy
    /// spell's first paced message) half the members are written now, so from then on each
    /// message writes to half of them, every write with two messages: the same writes as
    /// holding everyone every other message, but only half the deliveries wait the gap, and
    /// each fan-out is half as long.
    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut pace = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let held = pace.held.len();
        let busy_until = match pace.last {
            Some(last) if held > 0 || now < last + self.every => last + self.every,
            _ => {
                pace.last = Some(now);
                return f();
            }
        };
        let r = pace.held.run(f);
        let go = if now >= busy_until {
            // Quiet again before the held list's flush ran: everything goes.
            pace.held.len()
        } else if held > 0 {
            held
        } else {
            // Rounded down: a room of two (one recipient) still pairs its messages.
            pace.held.len() / 2
        };
        let rest = pace.held.split_off(go);
        let now_list = std::mem::replace(&mut pace.held, rest);
        if !now_list.is_empty() {
            pace.last = Some(now);
            now_list.flush_on(&self.runtime);
        }
        if !pace.held.is_empty() {
            // From the write just made, if any: with the next message due about a gap after
            // it, a flush set from the write before could beat it and split a pair.
            let due = pace.last.unwrap_or(now) + self.every;
            let state = self.state.clone();
            // A list taken early moved `last` on; its task then leaves the next list be.
            let since = pace.last;
            // Unconstrained: see the SQLite settler.
            self.runtime.spawn(tokio::task::unconstrained(async move {
                tokio::time::sleep_until(due.into()).await;
                let mut held = {
                    let mut pace = state.lock().unwrap_or_else(|p| p.into_inner());
                    if pace.last != since {
                        return;
                    }
                    pace.take()
                };
                held.flush_all().await;
            }));
        }
        r
    }
}

impl Room {
    /// A room on `log`, paced as [`Rooms::batch`] says.
    fn new(
        name: &str,
        log: Box<dyn RoomLog>,
        store: &dyn Store,
        waiting: &Arc<Waiting>,
        batch: &Option<(Duration, tokio::runtime::Handle)>,
    ) -> Arc<Room> {
        Arc::new(Room {
            name: name.into(),
            state: RoomState::new(log, store),
            presence_waiting: AtomicBool::new(false),
            waiting: waiting.clone(),
            pacing: batch.as_ref().map(|(every, runtime)| Pacing {
                every: *every,
                runtime: runtime.clone(),
                state: Arc::default(),
            }),
        })
    }

    /// Whether messages are flowing: a paced room written to less than a presence tick ago.
    /// Its join and leave frames then wait for its next message, which sends them first.
    fn busy(&self) -> bool {
        self.pacing.as_ref().is_some_and(|p| {
            p.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wrote_within(PRESENCE_TICK)
        })
    }

    /// Run a message's fan-out `f` (under the room's lock), paced if the room is.
    fn paced<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.pacing {
            Some(p) => p.run(f),
            None => f(),
        }
    }

    /// Append an event to the room's log and deliver it to every member but `from`. `encode`
    /// gets the event's `seq` and returns the frame, built once and shared by
    /// all recipients. A log that refuses the event delivers it to nobody.
    /// With `resend` = (sender, client id, oldest ts in the dedup window), a message already
    /// stored under that id is returned as [`Published::Again`] and delivered to nobody; the
    /// check and the append are one step, so two copies sent at once store one (a copy of
    /// one still being written is answered with it). With a durable store the message is
    /// [`Published::Queued`] and `reply()` is told the outcome later.
    pub fn publish(
        self: &Arc<Self>,
        from: ConnId,
        ts: u64,
        kind: &EventKind,
        resend: Option<(&str, &str, u64)>,
        encode: impl FnOnce(u64) -> Message,
        reply: impl FnOnce() -> Reply,
    ) -> Result<Published, StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((user, id, since_ts)) = resend {
            if let Some(original) = st.log.find(user, id, since_ts) {
                return Ok(Published::Again(original));
            }
            let same = |p: &&mut Pending| matches!(&p.event.kind, EventKind::Message { from, id: Some(i), .. } if from == user && i == id);
            if let Some(p) = st.pending.iter_mut().find(same) {
                p.waiters.push(reply());
                return Ok(Published::Queued);
            }
        }
        if let Some(shared) = st.shared.clone() {
            // Stored and published by the shared store; delivered here when it comes back.
            let reply = reply();
            shared.post(
                self.name.clone(),
                from,
                ts,
                kind.clone(),
                Box::new(move |r| {
                    reply(r.map(|(event, again)| {
                        let fanout = (!again).then_some(Fanout {
                            seq: event.seq,
                            queued: 0,
                            overflowed: 0,
                            took: Duration::ZERO,
                        });
                        (event, fanout)
                    }))
                }),
            );
            return Ok(Published::Queued);
        }
        let Some(writer) = st.writer.clone() else {
            let seq = st.log.append(ts, kind)?;
            let mut through = WriteThrough::default();
            let fanout = through.run(|| self.paced(|| st.deliver(from, encode(seq), seq)));
            drop(st);
            through.flush_elsewhere();
            return Ok(Published::New(fanout));
        };
        if st.pending.len() >= MAX_PENDING {
            return Err(StoreError("too many messages waiting for the store".into()));
        }
        let seq = st.log.top() + st.pending.len() as u64 + 1;
        st.tickets += 1;
        let ticket = st.tickets;
        let room = Arc::clone(self);
        writer.write(
            Write {
                room: self.name.clone(),
                epoch: st.epoch.clone(),
                seq,
                ts,
                kind: kind.clone(),
            },
            Box::new(move |result| room.settle(ticket, result)),
        )?;
        st.pending.push_back(Pending {
            ticket,
            from,
            event: Event {
                room: self.name.clone(),
                seq,
                ts,
                kind: kind.clone(),
            },
            frame: encode(seq),
            waiters: vec![reply()],
        });
        Ok(Published::Queued)
    }

    /// The store's writer reports on write `ticket`. Committed: append it to the log and
    /// deliver it. Refused: refuse it and every write queued after it (the writer refuses
    /// those too, as their seqs no longer follow), so the next message takes its seq.
    fn settle(&self, ticket: u64, result: Result<(), StoreError>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.pending.front().map(|p| p.ticket) != Some(ticket) {
            // Refused already, with an earlier write that failed.
            return;
        }
        match result {
            Ok(()) => {
                let p = st.pending.pop_front().expect("checked above");
                let appended = st.log.append(p.event.ts, &p.event.kind);
                debug_assert_eq!(appended.as_ref().ok(), Some(&p.event.seq));
                let fanout = self.paced(|| st.deliver(p.from, p.frame, p.event.seq));
                let mut waiters = p.waiters.into_iter();
                if let Some(first) = waiters.next() {
                    first(Ok((p.event.clone(), Some(fanout))));
                }
                for w in waiters {
                    w(Ok((p.event.clone(), None)));
                }
            }
            Err(e) => {
                for p in std::mem::take(&mut st.pending) {
                    for w in p.waiters {
                        w(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// An event published by the shared store: appended and delivered (but not to `origin`,
    /// the connection that sent it) when it is the next seq; a seq already here is a
    /// duplicate; a later one means events are missing, which the caller fetches first.
    /// With `epoch`, the epoch is checked first under the same lock (see [`Room::resync`]);
    /// the bool says whether the room was resynced.
    pub fn receive(
        &self,
        event: &Event,
        epoch: Option<&str>,
        origin: Option<ConnId>,
        encode: impl FnOnce(&Event) -> Message,
    ) -> (bool, Received) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let resynced = epoch.is_some_and(|e| st.resync(e));
        let received = self.paced(|| st.receive(event, origin, encode));
        (resynced, received)
    }

    /// The shared store gives the room `epoch`. If it is not the room's, the store lost the
    /// room's events (Redis restarted empty, or they expired): the log starts again at seq 0
    /// under it, and every member is sent a `resync` before any message of the new epoch.
    /// Returns whether that happened.
    pub fn resync(&self, epoch: &str) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resync(epoch)
    }

    /// With a shared store, start from the users present on every node.
    fn load_presence(&self, presence: bool) -> Result<(), StoreError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(shared) = st.shared.clone().filter(|_| presence) else {
            return Ok(());
        };
        for user in shared.present(&self.name)? {
            st.users.entry(user).or_insert(0);
        }
        Ok(())
    }

    /// The users present on every node, read from the shared store again (after its events
    /// may have been missed): users with no connection here follow it.
    pub fn set_present(&self, present: Vec<String>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<String> = present.into_iter().collect();
        st.users.retain(|u, here| *here > 0 || present.contains(u));
        for u in present {
            st.users.entry(u).or_insert(0);
        }
    }

    /// A join or leave published by the shared store: the list follows it, and every member
    /// here but `origin` (the connection that joined) is sent `frame`.
    pub fn presence_event(
        self: &Arc<Self>,
        joined: bool,
        user: &str,
        origin: Option<ConnId>,
        frame: Message,
    ) {
        self.mark_waiting();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if joined {
            st.users.entry(user.to_string()).or_insert(0);
        } else if st.users.get(user).is_some_and(|n| *n == 0) {
            st.users.remove(user);
        } else if st.users.contains_key(user) {
            // A connection of theirs is still here (it arrived after the leave was decided);
            // its own arrival will be announced.
        }
        st.announce(origin.unwrap_or(0), frame);
    }

    /// Put the room on the presence tick's list (once, until the tick visits it).
    fn mark_waiting(self: &Arc<Self>) {
        if !self.presence_waiting.swap(true, Ordering::AcqRel) {
            self.waiting
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(self));
        }
    }

    /// Send the join and leave frames waiting since the room's last frame.
    pub fn flush_presence(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_presence();
    }

    /// The durable writer and the shared store behind this room's log, if any.
    pub fn stores(&self) -> (Option<Writer>, Option<Arc<dyn Shared>>) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.writer.clone(), st.shared.clone())
    }

    /// The room's epoch as this node has it.
    pub fn epoch(&self) -> Arc<str> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epoch
            .clone()
    }

    /// The users present, sorted, each once.
    pub fn present(&self) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.users.keys().cloned().collect()
    }

    /// Whether `user` is present, and whether a connection of theirs here is a moderator's.
    pub fn standing(&self, user: &str) -> (bool, bool) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let moderator = st
            .members
            .values()
            .any(|s| &*s.user == user && s.role.may_moderate());
        (st.users.contains_key(user), moderator)
    }

    /// Carry out a moderation `action` of `by` here (its checks passed, and a deletion is
    /// already durable), announcing it to every member but `origin` (the moderator's own
    /// connection, answered by the engine): a kicked user's connections here close with 4003
    /// and the reason and are sent nothing more; a deleted message becomes a tombstone in the
    /// log and members get `deleted` first.
    pub fn apply(&self, action: &Action, by: &str, ts: u64, origin: Option<ConnId>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = origin.unwrap_or(0);
        if let Action::Kick { user, reason } = action {
            let reason = if reason.is_empty() {
                Cow::Borrowed("kicked by a moderator")
            } else {
                Cow::Owned(reason.clone())
            };
            let kicked: Vec<ConnId> = st
                .members
                .iter()
                .filter(|(_, s)| &*s.user == user)
                .map(|(id, s)| {
                    s.outbox.close(close::KICKED, reason.clone());
                    *id
                })
                .collect();
            // Closing, they are sent nothing more: out of the fan-out now. Their users count
            // stays until each session ends, which sends the leave as any close does.
            for id in kicked {
                st.members.remove(&id);
            }
            st.deliver(from, moderation_frame(action, by, ts, None), 0);
            return;
        }
        if let Action::Delete { seq } = action {
            st.log.erase(*seq);
            // Every member, the moderator's own connection too: each view drops the text.
            let deleted = ServerFrame::Deleted { seq: *seq, by };
            st.deliver(0, Message::text(deleted.to_json()), 0);
        }
        st.deliver(from, moderation_frame(action, by, ts, None), 0);
    }

    /// The room's top seq as this node has it.
    pub fn top(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .top()
    }

    /// Read the room's log (history pages), under the room's lock.
    pub fn with_log<T>(&self, read: impl FnOnce(&dyn RoomLog) -> T) -> T {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        read(st.log.as_ref())
    }

    pub fn member_count(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .len()
    }

    fn in_use(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        !st.members.is_empty()
            || st.reserved > 0
            || st.visitors > 0
            || st.users.values().any(|&n| n > 0)
    }
}

/// A moderation action as every node carries it out: what, by whom, when, and until when a
/// kick's ban or a mute holds (Unix milliseconds; 0 for a deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanctioned {
    pub action: Action,
    pub by: String,
    pub ts: u64,
    pub until_ms: u64,
}

/// The frame announcing a moderation action; with the request's `id` for the moderator who
/// asked.
pub fn moderation_frame(action: &Action, by: &str, ts: u64, id: Option<&str>) -> Message {
    let (user, seq, seconds, reason) = match action {
        Action::Kick { user, reason } => (Some(user.as_str()), None, None, Some(reason.as_str())),
        Action::Mute { user, seconds } => (Some(user.as_str()), None, Some(*seconds), None),
        Action::Delete { seq } => (None, Some(*seq), None, None),
    };
    let frame = ServerFrame::Moderation {
        action: action.name(),
        user,
        seq,
        seconds,
        reason: reason.filter(|r| !r.is_empty()),
        by,
        ts,
        id,
    };
    Message::text(frame.to_json())
}

/// What [`Room::receive`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Delivered(Fanout),
    /// Already here (published twice, or fetched while filling a gap).
    Duplicate,
    /// Events after this top are missing: fetch them first.
    Gap(u64),
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
    store: Arc<dyn Store>,
    /// Send join and leave frames.
    presence: bool,
    /// Bans and mutes in force, kept here rather than in a room so they outlive it.
    pub sanctions: Sanctions,
    waiting: Arc<Waiting>,
    /// `rooms.batch_ms` and the runtime the rooms were made on (the sockets'), unless it is
    /// 0 or there is no runtime (unit tests): see [`Pacing`].
    batch: Option<(Duration, tokio::runtime::Handle)>,
}

impl Rooms {
    /// The listed rooms, each with its log opened from `store`.
    pub fn new(
        cfg: &RoomsConfig,
        store: Arc<dyn Store>,
        presence: bool,
    ) -> Result<Arc<Rooms>, String> {
        let mut rooms = HashMap::new();
        let waiting = Arc::new(Waiting::default());
        let batch = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|_| cfg.batch_ms > 0)
            .map(|runtime| (Duration::from_millis(cfg.batch_ms), runtime));
        for n in &cfg.names {
            let log = store
                .open(n)
                .map_err(|e| format!("room {n}: cannot open its history: {}", e.0))?;
            let room = Room::new(n, log, store.as_ref(), &waiting, &batch);
            room.load_presence(presence)
                .map_err(|e| format!("room {n}: cannot read who is present: {}", e.0))?;
            rooms.insert(n.clone(), room);
        }
        Ok(Arc::new(Rooms {
            rooms: Mutex::new(rooms),
            listed: cfg.names.iter().cloned().collect(),
            auto_create: cfg.auto_create,
            max_rooms: cfg.max_rooms,
            max_members: cfg.max_members,
            store,
            presence,
            sanctions: Sanctions::default(),
            waiting,
            batch,
        }))
    }

    /// Whether `name` exists or could be created now.
    pub fn available(&self, name: &str) -> bool {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.contains_key(name) || (self.auto_create && rooms.len() < self.max_rooms)
    }

    /// Promise a place in a room, creating it if allowed; the engine's join takes it, and
    /// dropping the reservation gives it back.
    pub fn reserve(self: &Arc<Self>, name: &str) -> Result<Reservation, JoinError> {
        self.take(name, true)
    }

    /// Use a room without a place in it (an API request): it exists, or is created as a join
    /// would create it, until the returned [`Reservation`] is dropped. `max_members` does
    /// not apply: a back end posting into a full room takes no member's place.
    pub fn visit(self: &Arc<Self>, name: &str) -> Result<Reservation, JoinError> {
        self.take(name, false)
    }

    fn take(self: &Arc<Self>, name: &str, place: bool) -> Result<Reservation, JoinError> {
        let mut opened: Option<Arc<Room>> = None;
        loop {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let room = match (rooms.get(name), opened.take()) {
                (Some(r), _) => r.clone(),
                (None, Some(r)) if rooms.len() < self.max_rooms => {
                    rooms.insert(name.to_string(), r.clone());
                    r
                }
                (None, None) if self.auto_create && rooms.len() < self.max_rooms => {
                    // Opening waits on the store (a disk, Redis), whose own thread may need
                    // this lock to deliver events: never wait under it.
                    drop(rooms);
                    opened = Some(self.open(name)?);
                    continue;
                }
                _ => return Err(JoinError::Unavailable),
            };
            let mut st = room.state.lock().unwrap_or_else(|p| p.into_inner());
            if !place {
                st.visitors += 1;
            } else if st.members.len() + st.reserved >= self.max_members {
                drop(st);
                self.drop_if_unused(&mut rooms, &room);
                return Err(JoinError::Full);
            } else {
                st.reserved += 1;
            }
            drop(st);
            return Ok(Reservation {
                rooms: self.clone(),
                room: Some(room),
                place,
            });
        }
    }

    /// A room that is not in the registry, opened from the store.
    fn open(&self, name: &str) -> Result<Arc<Room>, JoinError> {
        let log = self.store.open(name).map_err(|_| JoinError::Unavailable)?;
        let r = Room::new(name, log, self.store.as_ref(), &self.waiting, &self.batch);
        r.load_presence(self.presence)
            .map_err(|_| JoinError::Unavailable)?;
        Ok(r)
    }

    /// Take a reserved place: the connection `id` of `user` receives the room's messages
    /// through `outbox` until the returned guard is dropped. `first` runs under the room's
    /// lock just before the connection is added, with the room's log and the users present
    /// (`user` included): what it queues (the welcome, the backlog) comes before any live
    /// message, and no message is both in it and live. If this is the user's first
    /// connection here, the others are sent a `join`.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &self,
        mut reservation: Reservation,
        id: ConnId,
        user: &str,
        role: Role,
        outbox: Arc<Outbox>,
        first: impl FnOnce(&dyn RoomLog, &BTreeMap<String, usize>, &Outbox),
    ) -> Membership {
        assert!(reservation.place, "a visit takes no place");
        let room = reservation
            .room
            .take()
            .expect("a reservation is taken once");
        {
            let mut st = room.state.lock().unwrap_or_else(|p| p.into_inner());
            let conns = st.users.entry(user.to_string()).or_insert(0);
            *conns += 1;
            let arrived = *conns == 1;
            first(st.log.as_ref(), &st.users, &outbox);
            match st.shared.clone() {
                // Announced by the store, to every node, if this is the user's first anywhere.
                Some(shared) if self.presence => shared.arrive(room.name.clone(), user.into(), id),
                Some(_) => {}
                None if arrived && self.presence => {
                    let frame = ServerFrame::Join { user, ts: now_ms() };
                    st.announce(id, Message::text(frame.to_json()));
                    room.mark_waiting();
                }
                None => {}
            }
            st.reserved -= 1;
            let seat = Seat {
                outbox,
                user: user.into(),
                role,
                presence_from: st.presence_seq,
            };
            st.members.insert(id, seat);
        }
        Membership {
            rooms: reservation.rooms.clone(),
            room,
            id,
            user: user.to_string(),
        }
    }

    fn drop_if_unused(&self, rooms: &mut HashMap<String, Arc<Room>>, room: &Arc<Room>) {
        if !self.listed.contains(&*room.name) && !room.in_use() {
            rooms.remove(&*room.name);
        }
    }

    pub fn count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Carry out a moderation action in `room` on this node: a kick's ban or a mute is put in
    /// force (even if the room is not open here), and the room, if open, applies it (see
    /// [`Room::apply`]). `false` when the sanctions table is full.
    pub fn apply(&self, room: &str, s: &Sanctioned, origin: Option<ConnId>) -> bool {
        let imposed = match &s.action {
            Action::Kick { user, .. } => self.sanctions.impose(room, user, Kind::Ban, s.until_ms),
            Action::Mute { user, .. } => self.sanctions.impose(room, user, Kind::Mute, s.until_ms),
            Action::Delete { .. } => true,
        };
        if !imposed {
            return false;
        }
        if let Some(r) = self.get(room) {
            r.apply(&s.action, &s.by, s.ts, origin);
        }
        true
    }

    /// Send the join and leave frames of every quiet room that has some waiting (the presence
    /// tick). A busy room's frames wait for its next message, which carries them: the tick's
    /// own write to each of its members came on top of the messages' (under churn at 100 msg/s
    /// into 1,000 members, 20,000 writes a second beside the messages' ~50,000). A room that
    /// goes quiet gets them at the first tick after [`PRESENCE_TICK`] without a write.
    pub fn flush_presence(&self) {
        let rooms = std::mem::take(&mut *self.waiting.0.lock().unwrap_or_else(|p| p.into_inner()));
        for room in rooms.iter().filter_map(std::sync::Weak::upgrade) {
            // Cleared first: a frame queued meanwhile puts the room back on the list.
            room.presence_waiting.store(false, Ordering::Release);
            if room.busy() {
                room.mark_waiting();
                continue;
            }
            room.flush_presence();
        }
    }

    /// Shutdown: tell every member's writer to close. A session that joins after its room
    /// was visited here sees the server's stop flag itself (session::run).
    pub fn stop_all(&self) {
        let rooms: Vec<Arc<Room>> = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for room in rooms {
            let state = room.state.lock().unwrap_or_else(|p| p.into_inner());
            for seat in state.members.values() {
                seat.outbox.stop();
            }
        }
    }

    /// Whether this node knows every user present in `room`: always with a store of this
    /// node only; with a shared one only when presence is on (users on other nodes are known
    /// from their join and leave events).
    pub fn knows_everyone(&self, room: &Room) -> bool {
        self.presence || room.stores().1.is_none()
    }

    /// Whether the store answers (see [`Store::ready`]).
    pub fn ready(&self) -> bool {
        self.store.ready()
    }

    /// A room that exists on this node.
    pub fn get(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every room that exists on this node.
    pub fn all(&self) -> Vec<Arc<Room>> {
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// A place promised in a room by the gate, before the upgrade; see [`Rooms::reserve`].
#[derive(Debug)]
pub struct Reservation {
    rooms: Arc<Rooms>,
    room: Option<Arc<Room>>,
    /// A member's place (from `reserve`), or a visit (from `visit`).
    place: bool,
}

impl Reservation {
    pub fn room(&self) -> &Arc<Room> {
        self.room.as_ref().expect("a reservation is taken once")
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(room) = self.room.take() else { return };
        // Registry lock before room lock, the same order as `reserve`.
        let mut rooms = self.rooms.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = room.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.place {
            st.reserved -= 1;
        } else {
            st.visitors -= 1;
        }
        drop(st);
        self.rooms.drop_if_unused(&mut rooms, &room);
    }
}

/// A connection's place in a room; leaving is dropping it.
#[derive(Debug)]
pub struct Membership {
    rooms: Arc<Rooms>,
    pub room: Arc<Room>,
    pub id: ConnId,
    user: String,
}

impl Membership {
    /// The member's user name.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Registry lock before room lock, the same order as `reserve`, so the two never
        // deadlock.
        let mut rooms = self.rooms.rooms.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.room.state.lock().unwrap_or_else(|p| p.into_inner());
            st.members.remove(&self.id);
            if let Some(shared) = st.shared.clone() {
                // The store decides whether this was the user's last connection anywhere.
                if let Some(n) = st.users.get_mut(&self.user) {
                    *n = n.saturating_sub(1);
                }
                if self.rooms.presence {
                    shared.depart(self.room.name.clone(), self.user.as_str().into(), self.id);
                }
                drop(st);
                self.rooms.drop_if_unused(&mut rooms, &self.room);
                return;
            }
            let gone = match st.users.get_mut(&self.user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => st.users.remove(&self.user).is_some(),
                None => false,
            };
            if gone && self.rooms.presence {
                let frame = ServerFrame::Leave {
                    user: &self.user,
                    ts: now_ms(),
                };
                st.announce(self.id, Message::text(frame.to_json()));
                self.room.mark_waiting();
            }
        }
        self.rooms.drop_if_unused(&mut rooms, &self.room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn cfg(auto: bool) -> RoomsConfig {
        RoomsConfig {
            names: vec!["lobby".into()],
            auto_create: auto,
            max_rooms: 2,
            max_members: 2,
            batch_ms: 0,
        }
    }

    fn text_of(o: &Outgoing) -> &str {
        match o {
            Outgoing::Frame(Message::Text(t)) => t.as_str(),
            o => panic!("{o:?}"),
        }
    }

    /// The fan-out's write-through and the connection's writer never hold frames at once, and
    /// what a write-through leaves goes out first, from where the socket stopped.
    #[test]
    fn a_write_through_and_the_writer_take_turns_and_leftovers_go_first() {
        let (o, mut rx) = Outbox::new(1 << 16);
        let (mut into, mut partial) = (VecDeque::new(), 0);
        o.push(Message::text("a"));
        o.push(Message::text("b"));
        let mut through = o.take_for_through().expect("the writer holds nothing");
        // Queued while the write-through holds a and b: the writer must not take it yet.
        o.push(Message::text("c"));
        assert!(!rx.try_batch(&mut into, &mut partial));
        // The socket took a and 2 bytes of b.
        through.pop_front();
        o.end_through(through, 2, false);
        assert!(rx.try_batch(&mut into, &mut partial));
        assert_eq!(into.iter().map(text_of).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(partial, 2);
        // The writer holds b and c: no write-through until it finds the queue empty.
        o.push(Message::text("d"));
        assert!(o.take_for_through().is_none());
        into.clear();
        assert!(rx.try_batch(&mut into, &mut partial));
        assert_eq!(
            (into.iter().map(text_of).collect::<Vec<_>>(), partial),
            (vec!["d"], 0)
        );
        into.clear();
        assert!(!rx.try_batch(&mut into, &mut partial));
        assert!(o.take_for_through().is_none(), "nothing queued");
        // All of it written but not yet flushed: the writer takes an empty batch, to flush.
        o.push(Message::text("e"));
        let through = o.take_for_through().expect("the writer holds nothing");
        o.end_through(VecDeque::new(), 0, false);
        assert!(o.take_for_through().is_none(), "handed back to the writer");
        assert!(rx.try_batch(&mut into, &mut partial));
        assert!(into.is_empty());
        drop(through);
        // Written whole: nothing for the writer.
        assert!(!rx.try_batch(&mut into, &mut partial));
        o.push(Message::text("f"));
        let through = o.take_for_through().expect("the writer holds nothing");
        o.end_through(VecDeque::new(), 0, true);
        assert!(!rx.try_batch(&mut into, &mut partial));
        drop(through);
        // Closing: no write-through once the writer must stop.
        o.push(Message::text("g"));
        o.stop();
        assert!(o.take_for_through().is_none());
    }

    /// Every text frame queued now.
    fn texts(rx: &mut OutboxReader) -> Vec<String> {
        let mut batch = VecDeque::new();
        rx.try_batch(&mut batch, &mut 0);
        batch
            .into_iter()
            .map(|o| match o {
                Outgoing::Frame(Message::Text(t)) => t.to_string(),
                o => panic!("{o:?}"),
            })
            .collect()
    }

    /// Presence frames as "join USER" / "leave USER"; other frames as they are.
    fn who(frames: Vec<String>) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).unwrap_or_default();
                match v["type"].as_str() {
                    Some(t) => format!("{t} {}", v["user"].as_str().unwrap_or("")),
                    None => f.clone(),
                }
            })
            .collect()
    }

    /// A room of `max_members` 10 with presence on and pacing as `batch_ms` says (on only
    /// inside a runtime); `enter(id, user)` joins it.
    fn presence_room(
        batch_ms: u64,
    ) -> (
        Arc<Rooms>,
        impl Fn(ConnId, &str) -> (Membership, OutboxReader),
    ) {
        let rooms = Rooms::new(
            &RoomsConfig {
                max_members: 10,
                batch_ms,
                ..cfg(false)
            },
            Arc::new(MemoryStore { retain: 0 }),
            true,
        )
        .unwrap();
        let r = rooms.clone();
        let enter = move |id: ConnId, user: &str| {
            let (o, rx) = Outbox::new(1 << 16);
            let m = r.join(
                r.reserve("lobby").unwrap(),
                id,
                user,
                Role::Member,
                o,
                |_, _, _| {},
            );
            (m, rx)
        };
        (rooms, enter)
    }

    fn rooms(auto: bool) -> Arc<Rooms> {
        Rooms::new(&cfg(auto), Arc::new(MemoryStore { retain: 0 }), true).unwrap()
    }

    fn join(
        rooms: &Arc<Rooms>,
        name: &str,
        id: ConnId,
        outbox: Arc<Outbox>,
    ) -> Result<Membership, JoinError> {
        Ok(rooms.join(
            rooms.reserve(name)?,
            id,
            "alice",
            Role::Member,
            outbox,
            |_, _, _| {},
        ))
    }

    fn say(m: &Membership, text: &str) -> Fanout {
        let kind = EventKind::message("alice", text.into(), None, false);
        match m
            .room
            .publish(
                m.id,
                0,
                &kind,
                None,
                |seq| Message::text(format!("m{seq}")),
                || Box::new(|_| {}),
            )
            .unwrap()
        {
            Published::New(f) => f,
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn publish_skips_sender_and_orders_seq() {
        let rooms = rooms(false);
        let (a, mut ra) = Outbox::new(1 << 16);
        let (b, mut rb) = Outbox::new(1 << 16);
        let ma = join(&rooms, "lobby", 1, a).unwrap();
        let _mb = join(&rooms, "lobby", 2, b).unwrap();
        let s1 = say(&ma, "one");
        let s2 = say(&ma, "two");
        assert_eq!((s1.seq, s2.seq), (1, 2));
        assert_eq!((s1.queued, s1.overflowed), (1, 0));
        assert_eq!(texts(&mut rb), ["m1", "m2"]);
        assert!(texts(&mut ra).is_empty());
    }

    #[test]
    fn caps_and_cleanup() {
        let rooms = rooms(true);
        let ob = || Outbox::new(1 << 16).0;
        assert_eq!(join(&rooms, "nope", 1, ob()).map(|_| ()), Ok(()));
        // "nope" was dropped when its only member left.
        assert_eq!(rooms.count(), 1);
        let _x = join(&rooms, "x", 2, ob()).unwrap();
        assert_eq!(
            join(&rooms, "y", 3, ob()).unwrap_err(),
            JoinError::Unavailable
        );
        let _l1 = join(&rooms, "lobby", 4, ob()).unwrap();
        // A reservation counts toward max_members until it is taken or dropped.
        let r2 = rooms.reserve("lobby").unwrap();
        assert_eq!(rooms.reserve("lobby").unwrap_err(), JoinError::Full);
        drop(r2);
        let _l2 = join(&rooms, "lobby", 5, ob()).unwrap();
        assert_eq!(join(&rooms, "lobby", 6, ob()).unwrap_err(), JoinError::Full);
        // A dropped reservation of an auto-created room lets the room go.
        drop(_x);
        let r = rooms.reserve("z").unwrap();
        assert_eq!(rooms.count(), 2);
        drop(r);
        assert_eq!(rooms.count(), 1);
        let strict = self::rooms(false);
        assert_eq!(
            join(&strict, "other", 7, ob()).unwrap_err(),
            JoinError::Unavailable
        );
    }

    #[test]
    fn presence_frames_go_out_with_the_next_frame_and_skip_what_a_welcome_showed() {
        let (rooms, enter) = presence_room(0);
        let (alice, mut ra) = enter(1, "alice");
        let (_bob, mut rb) = enter(2, "bob");
        // bob's join waits: alice's writer is not woken for it alone.
        assert!(texts(&mut ra).is_empty());
        let (_carol, mut rc) = enter(3, "carol");
        say(&alice, "m");
        assert_eq!(who(texts(&mut ra)), ["join bob", "join carol"]);
        // bob is not told of his own join; carol's welcome already listed bob.
        assert_eq!(who(texts(&mut rb)), ["join carol", "m1"]);
        assert_eq!(who(texts(&mut rc)), ["m1"]);
        // A quiet room: the tick sends them.
        drop(_carol);
        assert!(texts(&mut ra).is_empty());
        rooms.get("lobby").unwrap().flush_presence();
        assert_eq!(who(texts(&mut ra)), ["leave carol"]);
        assert_eq!(who(texts(&mut rb)), ["leave carol"]);
    }

    /// A busy room's join and leave frames wait for its next message, which carries them, not
    /// for a tick's write of their own; a room quiet for a tick gets them from the tick.
    #[tokio::test]
    async fn a_busy_rooms_presence_goes_with_its_next_message_and_a_quiet_rooms_at_the_tick() {
        let (rooms, enter) = presence_room(20);
        let (alice, mut ra) = enter(1, "alice");
        let (_bob, mut rb) = enter(2, "bob");
        say(&alice, "m");
        assert_eq!(who(texts(&mut ra)), ["join bob"]);
        assert_eq!(who(texts(&mut rb)), ["m1"]);
        let (carol, _rc) = enter(3, "carol");
        rooms.flush_presence();
        assert!(texts(&mut rb).is_empty(), "the tick wrote to a busy room");
        say(&alice, "m");
        assert_eq!(who(texts(&mut rb)), ["join carol", "m2"]);
        drop(carol);
        // The held "m2" is written (and the room's last write set) after batch_ms; a tick
        // after that is quiet.
        tokio::time::sleep(Duration::from_millis(20) + PRESENCE_TICK * 2).await;
        rooms.flush_presence();
        assert_eq!(who(texts(&mut rb)), ["leave carol"]);
        assert_eq!(who(texts(&mut ra)), ["join carol", "leave carol"]);
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
