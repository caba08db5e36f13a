//! The durable store: every room's messages in one SQLite file (`history.path`), kept across
//! restarts and kill -9.
//!
//! One writer thread owns the only connection. It takes writes in the order rooms hand them
//! over, commits as many as are waiting in one transaction (group commit: one fsync for a
//! burst, not one per message), and only then tells each room, which appends the event to its
//! in-memory window and delivers it: nothing is acked or shown before it is on disk, and no
//! lock of a room is held across a disk write. Those callbacks run in commit order on one task
//! of the server's runtime (`settler`), which writes each fan-out's frames through to idle
//! members' sockets. Opening a room also goes through this thread, after the writes queued
//! before it, so a room that is dropped and opened again while its last message is being
//! written still sees it. Reads (backlogs, pages, resend checks) come from each room's window
//! in memory, loaded when the room opens, so there is no second
//! connection to keep consistent. Retention (count and age) is trimmed by the same thread in
//! small batches between writes.
//!
//! A file that is not ours is never touched: a directory, garbage bytes, someone else's
//! tables or a newer schema stop the server at start (exit 2), naming the path. The
//! connection takes SQLite's exclusive lock, so a second server pointed at the same file
//! stops too, rather than forking the rooms' seqs.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tracing::{error, info, warn};

use crate::config::Durability;
use crate::metrics::Metrics;
use crate::room::{WriteThrough, THROUGH_SLICE};
use crate::store::{
    new_epoch, now_ms, Done, Event, EventKind, MemoryLog, RoomLog, Store, StoreError, Write, Writer,
};

/// Marks a file as ours (`PRAGMA application_id`): "wssc".
const APPLICATION_ID: i64 = 0x7773_7363;
/// The schema this server writes (`PRAGMA user_version`).
/// 2 added `events.flags`; a version 1 file is upgraded in place when opened.
const SCHEMA_VERSION: i64 = 2;
/// `events.flags`: posted through the HTTP API; deleted by a moderator (a tombstone).
const FLAG_API: i64 = 1;
const FLAG_DELETED: i64 = 2;
/// Writes committed in one transaction at most.
const MAX_BATCH: usize = 512;
/// How often retention runs, and how much one pass may do: rows deleted and rooms visited.
/// A pass holds up every post behind it, so it is kept to a millisecond or two; one that had
/// to stop short runs again after `TRIM_AGAIN` (25,000 rows/s), so retention keeps up with any
/// write rate and with thousands of rooms, in small steps rather than a burst that shows in
/// delivery latency.
const TRIM_EVERY: Duration = Duration::from_secs(1);
const TRIM_AGAIN: Duration = Duration::from_millis(20);
const TRIM_ROWS: usize = 500;
const TRIM_ROOMS: usize = 128;

/// What the writer thread is asked to do.
pub(crate) enum Job {
    Write(Write, Done, Instant),
    Open {
        room: String,
        reply: mpsc::SyncSender<Result<MemoryLog, StoreError>>,
    },
    /// Make event `seq` of `room` a tombstone on disk (its text gone).
    Erase {
        room: Arc<str>,
        seq: u64,
        done: Done,
    },
}

/// Committed writes' and erasures' callbacks, in the order the writer finished them.
type Settled = Vec<(Done, Result<(), StoreError>)>;

/// Where the writer's callbacks run: each is a room's fan-out. One task of the runtime runs
/// them, in the order they come, so rooms still see their writes in commit order. Its
/// fan-outs write through to idle members' sockets ([`WriteThrough`]), taking turns a slice
/// at a time: the callbacks waiting (their frames join each member's queue), then the writes
/// (all of a member's frames in one), then the worker's other tasks. Under load a member's
/// frames wait while earlier members are written to, so a write carries several (at 100
/// msg/s into 1,000 members, 0.82 writes per delivery). Without a runtime (unit
/// tests) the callbacks run on the writer's thread and wake the members' writers.
fn settler() -> Option<tokio::sync::mpsc::UnboundedSender<Settled>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Settled>();
    // Unconstrained: tokio's cooperative budget allows a task 128 socket operations per poll
    // and then fails the next with Pending, which would hand most of a fan-out's writes back
    // to the members' tasks. This task gives the worker back every slice instead.
    runtime.spawn(tokio::task::unconstrained(async move {
        let mut through = WriteThrough::default();
        let mut waiting = std::collections::VecDeque::new();
        loop {
            if waiting.is_empty() && through.is_empty() {
                match rx.recv().await {
                    Some(settled) => waiting.extend(settled),
                    None => return,
                }
            }
            while let Ok(settled) = rx.try_recv() {
                waiting.extend(settled);
            }
            let slice = Instant::now();
            while let Some((done, result)) = waiting.pop_front() {
                through.run(|| done(result));
                if slice.elapsed() >= THROUGH_SLICE {
                    break;
                }
            }
            through.flush(THROUGH_SLICE);
            tokio::task::yield_now().await;
        }
    }));
    Some(tx)
}

/// How much of each room is retained, for the windows and for trimming.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_messages: usize,
    pub max_age_ms: u64,
}

#[derive(Debug)]
pub struct SqliteStore {
    tx: mpsc::Sender<Job>,
}

impl SqliteStore {
    /// Open (or create) the store at `path` and start its writer. Any problem with the file is
    /// an error naming the path, and the file is left as it was.
    pub fn open(
        path: &Path,
        durability: Durability,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> Result<SqliteStore, String> {
        let conn = connect(path, durability)
            .map_err(|e| format!("history.path {}: {e}", path.display()))?;
        let retained: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(|e| format!("history.path {}: {e}", path.display()))?;
        metrics.store_retained.set(retained);
        info!(
            path = %path.display(),
            messages = retained,
            durability = ?durability,
            "history store opened"
        );
        // Every room is checked by the first retention pass (retention may have been lowered).
        let touched = conn
            .prepare("SELECT name FROM rooms")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .map(|n| n.map(Arc::from))
                    .collect::<rusqlite::Result<HashSet<Arc<str>>>>()
            })
            .map_err(|e| format!("history.path {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let mut writer = WriterThread {
            conn,
            path: path.to_path_buf(),
            retention,
            metrics,
            tops: HashMap::new(),
            touched,
            failing: false,
            settler: settler(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the store's writer: {e}"))?;
        Ok(SqliteStore { tx })
    }
}

impl Store for SqliteStore {
    /// Blocks until the writer has committed what was queued before: at most one batch.
    fn open(&self, room: &str) -> Result<Box<dyn RoomLog>, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Job::Open {
                room: room.to_string(),
                reply,
            })
            .map_err(|_| StoreError("the store's writer has stopped".into()))?;
        let log = answer
            .recv()
            .map_err(|_| StoreError("the store's writer has stopped".into()))??;
        Ok(Box::new(log))
    }

    fn writer(&self) -> Option<Writer> {
        Some(Writer {
            tx: self.tx.clone(),
        })
    }
}

/// Open the file at `path`, creating it (0600, in a 0700 directory) if it does not exist, and
/// check that it is ours before anything is written to it.
fn connect(path: &Path, durability: Durability) -> Result<Connection, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err("is a directory, not a store file".into()),
        Ok(m) if !m.is_file() => return Err("is not a regular file".into()),
        Ok(_) => {
            let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
            check_ours(&conn)?;
            conn
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot create it: {e}"))?;
            Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    // Exclusive locking before WAL: no shared-memory file, and the lock is kept for the life
    // of the connection, so a second server on the same file fails here.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(|e| e.to_string())?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| locked(&e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "cannot use write-ahead logging (journal_mode is {mode})"
        ));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| e.to_string())?;
    // A deleted message's text is zeroed in the page that held it (FAST: only where that
    // costs no extra I/O, which covers the in-place rewrite of a deletion); older copies in
    // the WAL are overwritten as it is recycled.
    conn.pragma_update(None, "secure_delete", "FAST")
        .map_err(|e| e.to_string())?;
    init_schema(&conn).map_err(|e| locked(&e))?;
    Ok(conn)
}

fn locked(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            format!("{e} (is another server using this file?)")
        }
        _ => e.to_string(),
    }
}

/// Refuse a file that is not a wss-chat store of a schema we know. Only reads.
fn check_ours(conn: &Connection) -> Result<(), String> {
    let read = |e: rusqlite::Error| format!("cannot be read as a SQLite database: {e}");
    let app: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(read)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(read)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(read)?;
    if app == 0 && version == 0 && objects == 0 {
        // An empty database (a 0-byte file): nothing to lose by making it ours.
        return Ok(());
    }
    if app != APPLICATION_ID {
        return Err(format!(
            "is a SQLite database of something else ({objects} tables and indexes, application_id {app}); \
             it is left untouched: point history.path at another file"
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(format!(
            "has schema version {version}, newer than this server's ({SCHEMA_VERSION}): run a newer server"
        ));
    }
    if version < 1 {
        return Err(format!("has unknown schema version {version}"));
    }
    let flags = if version >= 2 { ", flags" } else { "" };
    conn.query_row(
        &format!("SELECT (SELECT count(*) FROM (SELECT name, epoch, top FROM rooms LIMIT 0)) + \
         (SELECT count(*) FROM (SELECT room, seq, ts, sender, text, cid{flags} FROM events LIMIT 0))"),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map_err(|e| format!("is missing part of the schema: {e}"))?;
    Ok(())
}

/// Create the tables in a file that has none; our own file is left as it is.
fn init_schema(conn: &Connection) -> rusqlite::Result<()> {
    // The transaction also takes the exclusive lock now rather than at the first message.
    conn.execute_batch("BEGIN EXCLUSIVE")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        conn.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};
             CREATE TABLE rooms (
                 name  TEXT PRIMARY KEY,
                 epoch TEXT NOT NULL,
                 top   INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE events (
                 room   TEXT NOT NULL,
                 seq    INTEGER NOT NULL,
                 ts     INTEGER NOT NULL,
                 sender TEXT NOT NULL,
                 text   TEXT NOT NULL,
                 cid    TEXT,
                 flags  INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (room, seq)
             ) WITHOUT ROWID;
             CREATE INDEX events_by_age ON events (ts);"
        ))?;
    } else if version == 1 {
        // Adding a column with a default rewrites nothing: existing rows read as flags 0.
        conn.execute_batch(&format!(
            "ALTER TABLE events ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
             PRAGMA user_version = {SCHEMA_VERSION};"
        ))?;
    }
    conn.execute_batch("COMMIT")
}

struct WriterThread {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    metrics: Arc<Metrics>,
    /// Committed top per room written since the last trim (the `rooms` table is the truth).
    tops: HashMap<Arc<str>, u64>,
    /// Rooms written to since the last trim.
    touched: HashSet<Arc<str>>,
    /// Whether the last commit failed, so recovery is logged once.
    failing: bool,
    /// See [`settler`]; `None` runs the callbacks here.
    settler: Option<tokio::sync::mpsc::UnboundedSender<Settled>>,
}

impl WriterThread {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let mut next_trim = Instant::now() + TRIM_EVERY;
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        loop {
            match rx.recv_timeout(next_trim.saturating_duration_since(Instant::now())) {
                Ok(job) => {
                    jobs.push(job);
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    self.handle(&mut jobs);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_trim {
                let more = self.trim();
                next_trim = Instant::now() + if more { TRIM_AGAIN } else { TRIM_EVERY };
            }
        }
    }

    /// Writes are committed together; an open waits for the writes queued before it.
    fn handle(&mut self, jobs: &mut Vec<Job>) {
        let mut writes = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Write(w, done, queued) => writes.push((w, done, queued)),
                Job::Open { room, reply } => {
                    self.commit(std::mem::take(&mut writes));
                    let _ = reply.send(self.load(&room));
                }
                Job::Erase { room, seq, done } => {
                    self.commit(std::mem::take(&mut writes));
                    // After the writes before it, and the same way: an erasure applied to a
                    // room before its message's delivery would be undone by it.
                    let erased = self.erase(&room, seq);
                    self.settle(vec![(done, erased)]);
                }
            }
        }
        self.commit(writes);
    }

    fn top(&mut self, room: &Arc<str>) -> rusqlite::Result<u64> {
        if let Some(&top) = self.tops.get(room) {
            return Ok(top);
        }
        let top: Option<i64> = self
            .conn
            .prepare_cached("SELECT top FROM rooms WHERE name = ?1")?
            .query_row([&**room], |r| r.get(0))
            .optional()?;
        let top = top.unwrap_or(0) as u64;
        self.tops.insert(room.clone(), top);
        Ok(top)
    }

    /// Roll back the transaction a failed statement left open, if it did.
    fn abandon(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Commit `writes` in one transaction, then tell each how it went, in order.
    fn commit(&mut self, writes: Vec<(Write, Done, Instant)>) {
        if writes.is_empty() {
            return;
        }
        let mut accepted = Vec::with_capacity(writes.len());
        let outcome = self.store_all(&writes, &mut accepted);
        if let Err(e) = &outcome {
            self.abandon();
            // The tops are read again: the truth is the file's.
            self.tops.clear();
            self.metrics.store_failures.inc_by(writes.len() as u64);
            if !self.failing {
                error!(path = %self.path.display(), error = %e, "history store write failed; messages are refused until it recovers");
            }
            self.failing = true;
        } else if self.failing {
            info!(path = %self.path.display(), "history store writes again");
            self.failing = false;
        }
        let stored = accepted.iter().filter(|&&a| a).count();
        if outcome.is_ok() {
            self.metrics.store_batch_size.observe(stored as f64);
            self.metrics.store_retained.inc_by(stored as i64);
        }
        let mut settled = Vec::with_capacity(writes.len());
        for ((w, done, queued), ok) in writes.into_iter().zip(accepted) {
            let result = match &outcome {
                Ok(()) if ok => {
                    self.metrics
                        .store_append_seconds
                        .observe(queued.elapsed().as_secs_f64());
                    self.touched.insert(w.room.clone());
                    Ok(())
                }
                Ok(()) => Err(StoreError(
                    "an earlier message of the room was not stored".into(),
                )),
                Err(e) => Err(StoreError(e.to_string())),
            };
            settled.push((done, result));
        }
        self.settle(settled);
    }

    /// Run the callbacks through the settler, or here once it is gone (the runtime stopping).
    fn settle(&self, settled: Settled) {
        let settled = match &self.settler {
            Some(tx) => match tx.send(settled) {
                Ok(()) => return,
                Err(tokio::sync::mpsc::error::SendError(settled)) => settled,
            },
            None => settled,
        };
        for (done, result) in settled {
            done(result);
        }
    }

    /// One transaction; `accepted[i]` says whether `writes[i]` was in it. A write whose seq
    /// is not its room's top + 1 follows one that failed and is refused, so no seq is skipped.
    fn store_all(
        &mut self,
        writes: &[(Write, Done, Instant)],
        accepted: &mut Vec<bool>,
    ) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut staged: HashMap<Arc<str>, (u64, Arc<str>)> = HashMap::new();
        for (w, _, _) in writes {
            let top = match staged.get(&w.room) {
                Some((top, _)) => *top,
                None => self.top(&w.room)?,
            };
            if w.seq != top + 1 {
                accepted.push(false);
                continue;
            }
            let EventKind::Message {
                from,
                text,
                id,
                via_api,
                deleted,
            } = &w.kind;
            let flags = i64::from(*via_api) * FLAG_API + i64::from(*deleted) * FLAG_DELETED;
            self.conn
                .prepare_cached(
                    "INSERT INTO events (room, seq, ts, sender, text, cid, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![&*w.room, w.seq as i64, w.ts as i64, from, text, id, flags])?;
            staged.insert(w.room.clone(), (w.seq, w.epoch.clone()));
            accepted.push(true);
        }
        for (room, (top, epoch)) in &staged {
            self.conn
                .prepare_cached(
                    "INSERT INTO rooms (name, epoch, top) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET top = excluded.top",
                )?
                .execute(params![&**room, &**epoch, *top as i64])?;
        }
        self.conn.execute_batch("COMMIT")?;
        for (room, (top, _)) in staged {
            self.tops.insert(room, top);
        }
        Ok(())
    }

    /// Blank a deleted message's text on disk; its row stays so seqs stay whole.
    fn erase(&mut self, room: &str, seq: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE events SET text = '', flags = flags | ?3 WHERE room = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![room, seq as i64, FLAG_DELETED]))
            .map(|_| ())
            .map_err(|e| {
                error!(path = %self.path.display(), error = %e, "history store delete failed");
                StoreError(e.to_string())
            })
    }

    /// A room's epoch, top and retained window, as committed so far.
    fn load(&mut self, room: &str) -> Result<MemoryLog, StoreError> {
        let r = &self.retention;
        let failed = |e: rusqlite::Error| {
            error!(path = %self.path.display(), error = %e, "history store read failed");
            StoreError(e.to_string())
        };
        let found: Option<(String, i64)> = self
            .conn
            .prepare_cached("SELECT epoch, top FROM rooms WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([room], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(failed)?;
        let Some((epoch, top)) = found else {
            return Ok(MemoryLog::new(
                room,
                new_epoch()?,
                0,
                r.max_messages,
                r.max_age_ms,
            ));
        };
        let top = top as u64;
        let mut log = MemoryLog::new(room, epoch, top, r.max_messages, r.max_age_ms);
        let after = top.saturating_sub(r.max_messages as u64);
        let cutoff = now_ms().saturating_sub(r.max_age_ms);
        let room_arc: Arc<str> = room.into();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, ts, sender, text, cid, flags FROM events \
                 WHERE room = ?1 AND seq > ?2 AND ts >= ?3 ORDER BY seq",
            )
            .map_err(failed)?;
        let rows = stmt
            .query_map(params![room, after as i64, cutoff as i64], |row| {
                Ok(Event {
                    room: room_arc.clone(),
                    seq: row.get::<_, i64>(0)? as u64,
                    ts: row.get::<_, i64>(1)? as u64,
                    kind: {
                        let flags: i64 = row.get(5)?;
                        EventKind::Message {
                            from: row.get(2)?,
                            text: row.get(3)?,
                            id: row.get(4)?,
                            via_api: flags & FLAG_API != 0,
                            deleted: flags & FLAG_DELETED != 0,
                        }
                    },
                })
            })
            .map_err(|e| StoreError(e.to_string()))?;
        for event in rows {
            log.load(event.map_err(|e| StoreError(e.to_string()))?);
        }
        Ok(log)
    }

    /// Drop what retention no longer keeps, in one transaction (one fsync for the pass, not
    /// one per room) of at most `TRIM_ROWS` rows and `TRIM_ROOMS` rooms, so a post never waits
    /// long behind it. Returns whether work is left for another pass.
    fn trim(&mut self) -> bool {
        let r = self.retention;
        let mut budget = TRIM_ROWS;
        let mut trimmed = 0usize;
        let cutoff = now_ms().saturating_sub(r.max_age_ms) as i64;
        let rooms: Vec<Arc<str>> = self.touched.iter().take(TRIM_ROOMS).cloned().collect();
        let mut done = Vec::with_capacity(rooms.len());
        let result = (|| -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let n = self.conn.execute(
                "DELETE FROM events WHERE (room, seq) IN \
                 (SELECT room, seq FROM events WHERE ts < ?1 LIMIT ?2)",
                params![cutoff, budget as i64],
            )?;
            trimmed += n;
            budget -= n;
            for room in &rooms {
                if budget == 0 {
                    break;
                }
                let top = self.top(room)?;
                // Seqs start at 1: a room that never held more than it keeps has nothing to go.
                let keep_after = top.saturating_sub(r.max_messages as u64) as i64;
                if keep_after > 0 {
                    let n = self.conn.execute(
                        "DELETE FROM events WHERE (room, seq) IN \
                         (SELECT room, seq FROM events WHERE room = ?1 AND seq <= ?2 LIMIT ?3)",
                        params![&**room, keep_after, budget as i64],
                    )?;
                    trimmed += n;
                    budget -= n;
                }
                if budget > 0 {
                    done.push(room);
                }
            }
            self.conn.execute_batch("COMMIT")
        })();
        if let Err(e) = result {
            self.abandon();
            warn!(path = %self.path.display(), error = %e, "history retention pass failed; it runs again later");
            return false;
        }
        for room in done {
            self.touched.remove(room);
        }
        if trimmed > 0 {
            self.metrics.store_trimmed.inc_by(trimmed as u64);
            self.metrics.store_retained.dec_by(trimmed as i64);
        }
        let more = budget == 0 || !self.touched.is_empty();
        if !more {
            // Forget tops of quiet rooms: the map would otherwise grow with every room ever used.
            self.tops.clear();
        }
        more
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on a fresh file at `path` keeping `max_messages` per room and `max_age_ms`.
    fn writer(
        path: &Path,
        max_messages: usize,
        max_age_ms: u64,
        metrics: &Arc<Metrics>,
    ) -> WriterThread {
        WriterThread {
            conn: connect(path, Durability::Normal).unwrap(),
            path: path.to_path_buf(),
            retention: Retention {
                max_messages,
                max_age_ms,
            },
            metrics: metrics.clone(),
            tops: HashMap::new(),
            touched: HashSet::new(),
            failing: false,
            settler: None,
        }
    }

    fn write(room: &str, seq: u64, text: &str) -> Write {
        Write {
            room: room.into(),
            epoch: "e1".into(),
            seq,
            ts: now_ms(),
            kind: EventKind::message("alice", text.into(), Some(text), false),
        }
    }

    /// Keep `max_messages` per room, whatever their age.
    fn by_count(max_messages: usize) -> Retention {
        Retention {
            max_messages,
            max_age_ms: u64::MAX / 2,
        }
    }

    #[test]
    fn writes_commit_in_order_and_one_that_skips_a_seq_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/s.db");
        let retention = by_count(10);
        let store = SqliteStore::open(&path, Durability::Full, retention, Arc::new(Metrics::new()))
            .unwrap();
        assert_eq!(store.open("lobby").unwrap().top(), 0);
        let writer = store.writer().unwrap();
        let (tx, rx) = mpsc::channel();
        for (seq, text) in [(1, "a"), (2, "b"), (4, "skips"), (3, "c")] {
            let tx = tx.clone();
            let done: Done = Box::new(move |r| tx.send((seq, r.is_ok())).unwrap());
            writer.write(write("lobby", seq, text), done).unwrap();
        }
        let answers: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(answers, [(1, true), (2, true), (4, false), (3, true)]);
        drop((writer, store));
        // Reopened from the file: the epoch of the first write, top 3, the texts in order.
        let store = SqliteStore::open(&path, Durability::Full, retention, Arc::new(Metrics::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let log = store.open("lobby").unwrap();
        assert_eq!((log.epoch(), log.top()), ("e1", 3));
        let texts: Vec<_> = log
            .range(0, 10)
            .into_iter()
            .map(|e| match e.kind {
                EventKind::Message { text, .. } => text,
            })
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert_eq!(log.find("alice", "b", 0).map(|e| e.seq), Some(2));
    }

    /// Opened inside a runtime, the callbacks run on it, not on the writer's thread, in the
    /// order the writes and the erasure were queued.
    #[test]
    fn callbacks_run_in_order_on_the_runtime_the_store_was_opened_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("runtime-worker")
            .build()
            .unwrap();
        let store = {
            let _inside = runtime.enter();
            SqliteStore::open(
                &path,
                Durability::Normal,
                by_count(100),
                Arc::new(Metrics::new()),
            )
            .unwrap()
        };
        assert_eq!(store.open("lobby").unwrap().top(), 0);
        let writer = store.writer().unwrap();
        let (tx, rx) = mpsc::channel();
        let on = |what: u64, tx: &mpsc::Sender<(u64, bool, String)>| -> Done {
            let tx = tx.clone();
            Box::new(move |r| {
                let thread = std::thread::current().name().unwrap_or("").to_string();
                tx.send((what, r.is_ok(), thread)).unwrap();
            })
        };
        for seq in 1..=40 {
            writer
                .write(write("lobby", seq, &format!("m{seq}")), on(seq, &tx))
                .unwrap();
        }
        writer.erase("lobby".into(), 40, on(1000, &tx));
        let got: Vec<_> = (0..41).map(|_| rx.recv().unwrap()).collect();
        let order: Vec<u64> = got.iter().map(|(w, _, _)| *w).collect();
        assert_eq!(order, (1..=40).chain([1000]).collect::<Vec<_>>());
        assert!(got.iter().all(|(_, ok, _)| *ok), "{got:?}");
        assert!(
            got.iter().all(|(_, _, t)| t == "runtime-worker"),
            "{:?}",
            got.iter().map(|(_, _, t)| t).collect::<Vec<_>>()
        );
    }

    #[test]
    fn retention_trims_by_count_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let metrics = Arc::new(Metrics::new());
        let mut w = writer(&path, 3, 60_000, &metrics);
        let (tx, rx) = mpsc::channel();
        let mut writes = Vec::new();
        for seq in 1..=5 {
            let mut one = write("lobby", seq, &format!("m{seq}"));
            if seq == 1 {
                one.room = "old".into();
                one.ts -= 120_000; // older than max_age
            }
            let tx = tx.clone();
            let done: Done = Box::new(move |r| tx.send(r.is_ok()).unwrap());
            writes.push((one, done, Instant::now()));
        }
        // "old" has seq 1; lobby's four are 1 to 4.
        writes[1].0.seq = 1;
        for (i, (one, _, _)) in writes.iter_mut().enumerate().skip(2) {
            one.seq = i as u64;
        }
        w.commit(writes);
        assert!(rx.try_iter().all(|ok| ok));
        let count = |w: &WriterThread| -> i64 {
            w.conn
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&w), 5);
        assert!(!w.trim(), "one pass does it all");
        // The old room's message by age; lobby's oldest by count (4 written, 3 kept).
        assert_eq!(count(&w), 3);
        assert_eq!(metrics.store_trimmed.get(), 2);
        let log = w.load("lobby").unwrap();
        assert_eq!((log.oldest(), log.top()), (Some(2), 4));
        // The top (and so the next seq) survives a room trimmed to nothing.
        assert_eq!(w.load("old").unwrap().top(), 1);
    }

    #[test]
    fn a_retention_pass_visits_a_bounded_number_of_rooms_and_the_next_one_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut w = writer(&dir.path().join("s.db"), 1, 3_600_000, &metrics);
        let rooms = TRIM_ROOMS + TRIM_ROOMS / 2;
        let mut writes = Vec::new();
        for i in 0..rooms {
            for seq in 1..=2 {
                let done: Done = Box::new(|r| assert!(r.is_ok()));
                writes.push((write(&format!("r{i}"), seq, "m"), done, Instant::now()));
            }
        }
        w.commit(writes);
        // Each room keeps one of its two messages.
        assert!(w.trim(), "rooms are left for the next pass");
        assert_eq!(metrics.store_trimmed.get(), TRIM_ROOMS as u64);
        assert!(!w.trim(), "the second pass finishes");
        assert_eq!(metrics.store_trimmed.get(), rooms as u64);
        assert!(w.touched.is_empty());
        let left: i64 = w
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, rooms as i64);
    }
}
