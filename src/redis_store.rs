//! Many nodes, one chat: the store shared through Redis (`history.store = "redis"`).
//!
//! One Lua script per message does, atomically, what makes the rooms one chat: the resend
//! check on (room, user, id), the room's epoch if it has none, the next seq (HINCRBY), the
//! stream entry with the explicit id `SEQ-0` (exact MAXLEN), expiry, and the PUBLISH to every
//! node. So seq order is stream order is delivery order everywhere. Each node has one pub/sub
//! connection (not one per room or client) and hands every event to its room
//! ([`Room::receive`]), which delivers the next seq, drops one it has, and reports a gap,
//! filled here from the stream (XRANGE) before anything later is delivered; after the
//! subscription is re-established every room catches up the same way. A room is opened
//! from the stream (its epoch, top and last messages), so resume and paging read the shared
//! history from any node. The sender's own node does not send a message back to the sending
//! connection: the event names its node and connection.
//!
//! Everything Redis runs on its own thread with a small runtime, so a slow Redis never takes
//! a worker of the sockets' runtime; the password is read from a file or the environment,
//! kept in the client, and never logged. Received events' fan-outs write through to idle
//! members' sockets (room.rs's `WriteThrough`) from a task of the sockets' runtime
//! ([`hand_off`]) rather than wake each member's task from the Redis thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::encode_event;
use crate::metrics::Metrics;
use crate::moderation::{Action, Kind};
use crate::room::{Received, Rooms, Sanctioned, WriteThrough, THROUGH_SLICE};
use crate::store::{
    new_epoch, Done, Event, EventKind, MemoryLog, RoomLog, Shared, SharedReply, Store, StoreError,
};

/// Stores a message, or answers a resend with the original's seq; publishes a new one.
/// KEYS: meta, stream, id key. ARGV: a fresh epoch, ts, from, text, id, maxlen, dedup_s,
/// ttl_s, channel, room, node, conn, via ('api' or '').
const POST: &str = r#"
if ARGV[5] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {tonumber(seen), 1} end
end
-- A room without an epoch here lost its history (Redis restarted empty, or it expired):
-- it starts again under the fresh epoch ARGV[1], never the one the node knew.
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], seq .. '-0',
  'ts', ARGV[2], 'from', ARGV[3], 'text', ARGV[4], 'id', ARGV[5], 'by', ARGV[11] .. '|' .. ARGV[12], 'via', ARGV[13])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], seq, 'EX', ARGV[7]) end
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('PUBLISH', ARGV[9], cjson.encode({room = ARGV[10], epoch = epoch, seq = seq,
  ts = tonumber(ARGV[2]), from = ARGV[3], text = ARGV[4], id = ARGV[5],
  node = ARGV[11], conn = ARGV[12], via = ARGV[13]}))
return {seq, 0}
"#;

/// A room's epoch (made now if it has none), top seq and newest `count` stream entries.
/// KEYS: meta, stream. ARGV: fresh epoch, ttl_s, count.
const OPEN: &str = r#"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
return {meta[1], meta[2] or '0', redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])}
"#;

/// A connection entered a room: counted, and a join published if it is the user's first
/// anywhere. KEYS: presence (entries scored by expiry), users (connections per user).
/// ARGV: entry, expiry ms, user, channel, room, ts, node, conn, key ttl s.
const ARRIVE: &str = r#"
-- Idempotent: a retry of an arrival that did happen (its answer lost) counts nothing twice.
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[9])
if n == 1 then
  redis.call('PUBLISH', ARGV[4], cjson.encode({kind = 'join', room = ARGV[5], user = ARGV[3],
    ts = tonumber(ARGV[6]), node = ARGV[7], conn = ARGV[8]}))
end
return n
"#;

/// Removes `entries` that are still there; a user left without any is published as a leave.
/// The sweep uses it for expired entries, so two nodes sweeping at once announce a leave once.
/// KEYS: presence, users. ARGV: channel, room, ts, node, then entries (or none: every entry
/// that expired before ts).
const DEPART: &str = r#"
local entries = {}
for i = 5, #ARGV do entries[#entries + 1] = ARGV[i] end
if #entries == 0 then
  entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 1000)
end
local gone = 0
for _, e in ipairs(entries) do
  if redis.call('ZREM', KEYS[1], e) == 1 then
    gone = gone + 1
    local user = string.match(e, '^[^|]*|[^|]*|(.*)$')
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('PUBLISH', ARGV[1], cjson.encode({kind = 'leave', room = ARGV[2], user = user,
        ts = tonumber(ARGV[3]), node = ARGV[4], conn = ''}))
    end
  end
end
return gone
"#;

/// Stores a moderation action and publishes it (ARGV[5], built by the node). A kick's ban or
/// a mute: `FIELD` = until ms in the room's sanctions hash (a later deadline stays). A
/// deletion: the entry leaves the stream (its text gone) and its tombstone (ts, from, id,
/// via) goes to the room's tombstones hash, so reads still find every seq; a seq past the
/// room's top is refused (0). KEYS: meta, stream, sanctions, tombstones. ARGV: field (or ''),
/// until ms, seq, ttl s, payload, channel.
const MODERATE: &str = r#"
if ARGV[1] ~= '' then
  local held = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if tonumber(ARGV[2]) > held then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
  redis.call('EXPIRE', KEYS[3], ARGV[4])
else
  local seq = tonumber(ARGV[3])
  if seq > tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') then return 0 end
  local found = redis.call('XRANGE', KEYS[2], seq .. '-0', seq .. '-0')
  if #found == 1 then
    local f, t = found[1][2], {}
    for i = 1, #f, 2 do t[f[i]] = f[i + 1] end
    redis.call('HSET', KEYS[4], seq, cjson.encode({ts = t.ts, from = t.from, id = t.id,
      via = t.via, by = t.by}))
    redis.call('XDEL', KEYS[2], seq .. '-0')
    redis.call('EXPIRE', KEYS[4], ARGV[4])
  end
end
redis.call('PUBLISH', ARGV[6], ARGV[5])
return 1
"#;

/// A stream entry as XRANGE returns it: `SEQ-0` and the flat field list.
type Entry = (String, Vec<String>);

enum Job {
    Open {
        room: String,
        reply: std::sync::mpsc::SyncSender<Result<MemoryLog, StoreError>>,
    },
    Arrive {
        room: Arc<str>,
        user: Arc<str>,
        conn: u64,
    },
    Depart {
        room: Arc<str>,
        user: Arc<str>,
        conn: u64,
    },
    Present {
        room: String,
        reply: std::sync::mpsc::SyncSender<Result<Vec<String>, StoreError>>,
    },
    Post {
        room: Arc<str>,
        conn: u64,
        ts: u64,
        kind: EventKind,
        reply: SharedReply,
    },
    Moderate {
        room: Arc<str>,
        sanction: Sanctioned,
        conn: u64,
        reply: Done,
    },
}

/// What every task of the Redis thread needs.
struct Ctx {
    prefix: String,
    channel: String,
    /// Names this process in published events, so it knows its own senders.
    node: String,
    max_messages: usize,
    max_age_ms: u64,
    dedup_s: u64,
    presence_ttl_ms: u64,
    rooms: Arc<OnceLock<Weak<Rooms>>>,
    /// Sanctions read for the rooms opened before the rooms were attached (the listed ones,
    /// at start), handed over by `attach`.
    early: Arc<Mutex<Vec<Early>>>,
    metrics: Arc<Metrics>,
    /// Redis answered the last health check (a PING every second, bounded by
    /// `redis.command_timeout_ms`) and the last command.
    healthy: Arc<AtomicBool>,
    /// The runtime the store was opened in (the sockets' one), where received events'
    /// write-throughs run ([`hand_off`]).
    sockets: Option<tokio::runtime::Handle>,
}

impl Ctx {
    fn set_healthy(&self, now: bool) {
        if self.healthy.swap(now, Ordering::Relaxed) != now {
            if now {
                info!("Redis answers again: accepting upgrades and messages");
            } else {
                warn!("Redis does not answer: refusing upgrades (503) and messages (unavailable) until it does");
            }
        }
    }

    /// A room's keys share the `{room}` hash tag, so one script's keys live on one Redis
    /// Cluster slot.
    fn key(&self, room: &str, what: &str) -> String {
        format!("{}:{{{room}}}:{what}", self.prefix)
    }

    fn ttl_s(&self) -> u64 {
        (self.max_age_ms / 1000).max(1)
    }
}

/// A ban or mute read before the rooms existed: room, user, kind, until ms.
type Early = (String, String, Kind, u64);

#[derive(Debug)]
pub struct RedisStore {
    jobs: mpsc::UnboundedSender<Job>,
    rooms: Arc<OnceLock<Weak<Rooms>>>,
    early: Arc<Mutex<Vec<Early>>>,
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Open { room, .. } | Job::Present { room, .. } => write!(f, "Open({room})"),
            Job::Arrive { room, .. } | Job::Depart { room, .. } => write!(f, "Presence({room})"),
            Job::Post { room, .. } => write!(f, "Post({room})"),
            Job::Moderate { room, .. } => write!(f, "Moderate({room})"),
        }
    }
}

impl RedisStore {
    /// Connect (within `redis.connect_timeout_ms`) and start the Redis thread. Errors name
    /// the key and never the password.
    pub fn open(config: &Config, metrics: Arc<Metrics>) -> Result<RedisStore, String> {
        let r = &config.redis;
        let url = r.url.as_deref().ok_or("redis.url: not set")?;
        let password = r
            .load_password(&config.base_dir)
            .map_err(|p| format!("{}: {}", p.key, p.reason))?;
        let mut info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("redis.url: {e}"))?;
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = match &r.ca_file {
            Some(ca) => {
                let pem = std::fs::read(config.resolve(ca))
                    .map_err(|e| format!("redis.ca_file: cannot read {}: {e}", ca.display()))?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("redis.url: {e}"))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(r.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(r.command_timeout_ms)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        let manager = runtime
            .block_on(async {
                let m = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
                let mut probe = m.clone();
                let _: String = redis::cmd("PING").query_async(&mut probe).await?;
                Ok::<_, redis::RedisError>(m)
            })
            .map_err(|e| format!("redis.url: cannot reach Redis: {e}"))?;
        let ctx = Arc::new(Ctx {
            prefix: r.key_prefix.clone(),
            channel: format!("{}:events", r.key_prefix),
            node: new_epoch().map_err(|e| e.0)?,
            max_messages: config.history.max_messages_per_room,
            max_age_ms: config.history.max_age_hours.saturating_mul(3_600_000),
            dedup_s: config.history.dedup_window_s,
            presence_ttl_ms: config.presence.ttl_s.saturating_mul(1000),
            rooms: Arc::new(OnceLock::new()),
            early: Arc::new(Mutex::new(Vec::new())),
            metrics,
            healthy: Arc::new(AtomicBool::new(true)),
            sockets: tokio::runtime::Handle::try_current().ok(),
        });
        info!(prefix = %ctx.prefix, node = %ctx.node, "connected to Redis");
        let (jobs, rx) = mpsc::unbounded_channel();
        let (rooms, healthy) = (ctx.rooms.clone(), ctx.healthy.clone());
        let early = ctx.early.clone();
        let (ready, subscribed) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("redis".into())
            .spawn(move || runtime.block_on(serve(ctx, client, manager, rx, ready)))
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        subscribed
            .recv()
            .map_err(|_| "the Redis thread stopped before subscribing".to_string())?;
        Ok(RedisStore {
            jobs,
            rooms,
            early,
            healthy,
        })
    }
}

impl Store for RedisStore {
    /// Blocks for one round trip to Redis (bounded by `redis.command_timeout_ms`).
    fn open(&self, room: &str) -> Result<Box<dyn RoomLog>, StoreError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Job::Open {
                room: room.to_string(),
                reply,
            })
            .map_err(|_| StoreError("the Redis thread has stopped".into()))?;
        let log = answer
            .recv()
            .map_err(|_| StoreError("the Redis thread has stopped".into()))??;
        Ok(Box::new(log))
    }

    fn shared(&self) -> Option<Arc<dyn Shared>> {
        Some(Arc::new(Poster {
            jobs: self.jobs.clone(),
        }))
    }

    fn attach(&self, rooms: Weak<Rooms>) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rooms.upgrade() {
            for (room, user, kind, until) in early.drain(..) {
                r.sanctions.impose(&room, &user, kind, until);
            }
        }
        let _ = self.rooms.set(rooms);
    }

    fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Poster {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Shared for Poster {
    fn post(&self, room: Arc<str>, conn: u64, ts: u64, kind: EventKind, reply: SharedReply) {
        let job = Job::Post {
            room,
            conn,
            ts,
            kind,
            reply,
        };
        if let Err(mpsc::error::SendError(Job::Post { reply, .. })) = self.jobs.send(job) {
            reply(Err(StoreError("the Redis thread has stopped".into())));
        }
    }

    fn arrive(&self, room: Arc<str>, user: Arc<str>, conn: u64) {
        let _ = self.jobs.send(Job::Arrive { room, user, conn });
    }

    fn depart(&self, room: Arc<str>, user: Arc<str>, conn: u64) {
        let _ = self.jobs.send(Job::Depart { room, user, conn });
    }

    fn moderate(&self, room: Arc<str>, sanction: Sanctioned, conn: u64, reply: Done) {
        let job = Job::Moderate {
            room,
            sanction,
            conn,
            reply,
        };
        if let Err(mpsc::error::SendError(Job::Moderate { reply, .. })) = self.jobs.send(job) {
            reply(Err(StoreError("the Redis thread has stopped".into())));
        }
    }

    fn present(&self, room: &str) -> Result<Vec<String>, StoreError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Job::Present {
                room: room.to_string(),
                reply,
            })
            .map_err(|_| StoreError("the Redis thread has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError("the Redis thread has stopped".into()))?
    }
}

impl Ctx {
    fn entry(&self, user: &str, conn: u64) -> String {
        format!("{}|{conn}|{user}", self.node)
    }

    fn presence_keys(&self, room: &str) -> (String, String) {
        (self.key(room, "presence"), self.key(room, "users"))
    }
}

/// This node's connections in each room (and whether Redis has counted them yet), refreshed
/// every third of `presence.ttl_s`; an arrival that failed is tried again then. Expired
/// entries of any node are swept at the same time, in every room open here.
type Local = std::collections::HashMap<(Arc<str>, u64), (Arc<str>, bool)>;

async fn presence_job(ctx: &Ctx, con: &mut ConnectionManager, local: &mut Local, job: Job) {
    let now = crate::store::now_ms();
    let result: redis::RedisResult<i64> = match job {
        Job::Arrive { room, user, conn } => {
            let r = arrive(ctx, con, &room, &user, conn, now).await;
            local.insert((room, conn), (user, r.is_ok()));
            r
        }
        Job::Depart { room, user, conn } => {
            local.remove(&(room.clone(), conn));
            let (zset, users) = ctx.presence_keys(&room);
            redis::cmd("EVAL")
                .arg(DEPART)
                .arg(2)
                .arg(zset)
                .arg(users)
                .arg(&ctx.channel)
                .arg(&*room)
                .arg(now)
                .arg(&ctx.node)
                .arg(ctx.entry(&user, conn))
                .query_async(con)
                .await
        }
        _ => return,
    };
    if let Err(e) = result {
        ctx.metrics.redis_script_errors.inc();
        debug!(error = %e, "Redis presence update failed; the next refresh repairs it");
    }
}

async fn arrive(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    room: &str,
    user: &str,
    conn: u64,
    now: u64,
) -> redis::RedisResult<i64> {
    let (zset, users) = ctx.presence_keys(room);
    redis::cmd("EVAL")
        .arg(ARRIVE)
        .arg(2)
        .arg(zset)
        .arg(users)
        .arg(ctx.entry(user, conn))
        .arg(now + ctx.presence_ttl_ms)
        .arg(user)
        .arg(&ctx.channel)
        .arg(room)
        .arg(now)
        .arg(&ctx.node)
        .arg(conn)
        .arg(ctx.ttl_s())
        .query_async(con)
        .await
}

/// Refresh this node's entries (counting those whose arrival failed) and sweep expired ones
/// in every room open here.
async fn refresh_presence(ctx: &Ctx, con: &mut ConnectionManager, local: &mut Local) {
    let now = crate::store::now_ms();
    for ((room, conn), (user, counted)) in local.iter_mut() {
        if !*counted {
            *counted = arrive(ctx, con, room, user, *conn, now).await.is_ok();
        }
    }
    let mut pipe = redis::pipe();
    for ((room, conn), (user, _)) in local.iter() {
        let (zset, _) = ctx.presence_keys(room);
        pipe.cmd("ZADD")
            .arg(zset)
            .arg("XX")
            .arg(now + ctx.presence_ttl_ms)
            .arg(ctx.entry(user, *conn))
            .ignore();
    }
    if !local.is_empty() {
        let _: redis::RedisResult<()> = pipe.query_async(con).await;
    }
    let Some(rooms) = ctx.rooms.get().and_then(Weak::upgrade) else {
        return;
    };
    for room in rooms.all() {
        let (zset, users) = ctx.presence_keys(&room.name);
        let swept: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(DEPART)
            .arg(2)
            .arg(zset)
            .arg(users)
            .arg(&ctx.channel)
            .arg(&*room.name)
            .arg(now)
            .arg(&ctx.node)
            .query_async(con)
            .await;
        match swept {
            Ok(n) if n > 0 => ctx.metrics.redis_presence_swept.inc_by(n as u64),
            Ok(_) => 0,
            Err(_) => ctx.metrics.redis_script_errors.inc(),
        };
    }
}

async fn serve(
    ctx: Arc<Ctx>,
    client: redis::Client,
    manager: ConnectionManager,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: std::sync::mpsc::SyncSender<()>,
) {
    let (subscribed, first) = tokio::sync::oneshot::channel();
    tokio::spawn(subscribe(ctx.clone(), client, manager.clone(), subscribed));
    // Serve nothing (and so let the node listen) before it hears every other node's events.
    let _ = tokio::time::timeout(Duration::from_secs(10), first).await;
    let _ = ready.send(());
    tokio::spawn(check_health(ctx.clone(), manager.clone()));
    let open = Script::new(OPEN);
    let mut local = Local::new();
    let mut refresh =
        tokio::time::interval(Duration::from_millis((ctx.presence_ttl_ms / 3).max(500)));
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = refresh.tick() => {
                refresh_presence(&ctx, &mut manager.clone(), &mut local).await;
                continue;
            }
        };
        match job {
            job @ (Job::Arrive { .. } | Job::Depart { .. }) => {
                presence_job(&ctx, &mut manager.clone(), &mut local, job).await;
            }
            Job::Present { room, reply } => {
                let (_, users) = ctx.presence_keys(&room);
                let mut con = manager.clone();
                let r: redis::RedisResult<Vec<String>> = con.hkeys(users).await;
                let _ = reply.send(r.map_err(|e| StoreError(format!("Redis: {e}"))));
            }
            Job::Open { room, reply } => {
                let result = open_room(&ctx, manager.clone(), &open, &room).await;
                let _ = reply.send(result);
            }
            Job::Moderate {
                room,
                sanction,
                conn,
                reply,
            } => {
                // Sent in order on the one connection, like posts: a deletion reaches the
                // stream after the message it deletes.
                let (ctx, mut con) = (ctx.clone(), manager.clone());
                tokio::spawn(async move {
                    let result = moderate(&ctx, &mut con, &room, &sanction, conn).await;
                    ctx.set_healthy(result.is_ok());
                    reply(result.map_err(|e| {
                        ctx.metrics.redis_script_errors.inc();
                        warn!(error = %e, "Redis refused a moderation action");
                        StoreError(e.to_string())
                    }))
                });
            }
            Job::Post {
                room,
                conn,
                ts,
                kind,
                reply,
            } => {
                // Each is one EVAL, sent in this order on the one multiplexed connection, so a
                // sender's messages get their seqs in the order sent. (EVALSHA would be
                // smaller, but its NOSCRIPT retry after a Redis restart sends a message again
                // behind later ones.)
                let (ctx, mut con) = (ctx.clone(), manager.clone());
                tokio::spawn(async move {
                    let EventKind::Message {
                        from,
                        text,
                        id,
                        via_api,
                        ..
                    } = &kind;
                    let id_key =
                        ctx.key(&room, &format!("id:{from}:{}", id.as_deref().unwrap_or("")));
                    let Ok(fresh) = new_epoch() else {
                        return reply(Err(StoreError("no randomness".into())));
                    };
                    let started = std::time::Instant::now();
                    let result: redis::RedisResult<(u64, u8)> = redis::cmd("EVAL")
                        .arg(POST)
                        .arg(3)
                        .arg(ctx.key(&room, "meta"))
                        .arg(ctx.key(&room, "stream"))
                        .arg(id_key)
                        .arg(fresh)
                        .arg(ts)
                        .arg(from)
                        .arg(text)
                        .arg(id.as_deref().unwrap_or(""))
                        .arg(ctx.max_messages)
                        .arg(ctx.dedup_s)
                        .arg(ctx.ttl_s())
                        .arg(&ctx.channel)
                        .arg(&*room)
                        .arg(&ctx.node)
                        .arg(conn)
                        .arg(if *via_api { "api" } else { "" })
                        .query_async(&mut con)
                        .await;
                    let took = started.elapsed().as_secs_f64();
                    ctx.metrics.store_append_seconds.observe(took);
                    ctx.metrics.redis_roundtrip_seconds.observe(took);
                    ctx.set_healthy(result.is_ok());
                    match result {
                        Ok((seq, 0)) => reply(Ok((
                            Event {
                                room: room.clone(),
                                seq,
                                ts,
                                kind,
                            },
                            false,
                        ))),
                        Ok((seq, _)) => match fetch(&ctx, &mut con, &room, seq, seq).await {
                            Ok(mut events) if !events.is_empty() => {
                                reply(Ok((events.remove(0).0, true)))
                            }
                            // The original was trimmed: its seq is all that is known.
                            _ => reply(Ok((
                                Event {
                                    room: room.clone(),
                                    seq,
                                    ts,
                                    kind,
                                },
                                true,
                            ))),
                        },
                        Err(e) => {
                            ctx.metrics.store_failures.inc();
                            ctx.metrics.redis_script_errors.inc();
                            warn!(error = %e, "Redis refused a message; it reached nobody");
                            reply(Err(StoreError(e.to_string())))
                        }
                    }
                });
            }
        }
    }
}

/// The sanctions-hash field of a kick's ban or a mute of `user`.
fn sanction_field(kind: Kind, user: &str) -> String {
    match kind {
        Kind::Ban => format!("ban:{user}"),
        Kind::Mute => format!("mute:{user}"),
    }
}

/// A moderation action as it is published: everything a node needs to apply it.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ModEvent {
    action: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    seconds: u64,
    #[serde(default)]
    seq: u64,
    by: String,
    until: u64,
}

impl ModEvent {
    fn of(s: &Sanctioned) -> ModEvent {
        let mut e = ModEvent {
            action: s.action.name().into(),
            by: s.by.clone(),
            until: s.until_ms,
            ..ModEvent::default()
        };
        match &s.action {
            Action::Kick { user, reason } => (e.user, e.reason) = (user.clone(), reason.clone()),
            Action::Mute { user, seconds } => (e.user, e.seconds) = (user.clone(), *seconds),
            Action::Delete { seq } => e.seq = *seq,
        }
        e
    }

    fn sanctioned(self, ts: u64) -> Option<Sanctioned> {
        let action = match self.action.as_str() {
            "kick" => Action::Kick {
                user: self.user,
                reason: self.reason,
            },
            "mute" => Action::Mute {
                user: self.user,
                seconds: self.seconds,
            },
            "delete" => Action::Delete { seq: self.seq },
            _ => return None,
        };
        Some(Sanctioned {
            action,
            by: self.by,
            ts,
            until_ms: self.until,
        })
    }
}

async fn moderate(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    room: &Arc<str>,
    s: &Sanctioned,
    conn: u64,
) -> redis::RedisResult<()> {
    let field = match &s.action {
        Action::Kick { user, .. } => sanction_field(Kind::Ban, user),
        Action::Mute { user, .. } => sanction_field(Kind::Mute, user),
        Action::Delete { .. } => String::new(),
    };
    let seq = match s.action {
        Action::Delete { seq } => seq,
        _ => 0,
    };
    let mut payload = serde_json::json!({
        "kind": "mod", "room": &**room, "ts": s.ts, "node": &ctx.node, "conn": conn.to_string(),
    });
    if let (Some(p), Ok(serde_json::Value::Object(m))) = (
        payload.as_object_mut(),
        serde_json::to_value(ModEvent::of(s)),
    ) {
        p.insert("mod".into(), serde_json::Value::Object(m));
    }
    // The sanction must outlive its deadline even in a quiet room.
    let left_s = s.until_ms.saturating_sub(crate::store::now_ms()) / 1000 + 1;
    let stored: u8 = redis::cmd("EVAL")
        .arg(MODERATE)
        .arg(4)
        .arg(ctx.key(room, "meta"))
        .arg(ctx.key(room, "stream"))
        .arg(ctx.key(room, "sanctions"))
        .arg(ctx.key(room, "tombstones"))
        .arg(field)
        .arg(s.until_ms)
        .arg(seq)
        .arg(ctx.ttl_s().max(left_s))
        .arg(payload.to_string())
        .arg(&ctx.channel)
        .query_async(con)
        .await?;
    if stored == 0 {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "seq past the room's top",
        )));
    }
    Ok(())
}

/// Put the room's bans and mutes still in force on this node.
async fn load_sanctions(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    room: &str,
) -> redis::RedisResult<()> {
    let held: HashMap<String, u64> = con.hgetall(ctx.key(room, "sanctions")).await?;
    let mut early = ctx.early.lock().unwrap_or_else(|p| p.into_inner());
    let rooms = ctx.rooms.get().and_then(Weak::upgrade);
    for (field, until) in held {
        let (kind, user) = match field.split_once(':') {
            Some(("ban", u)) => (Kind::Ban, u),
            Some(("mute", u)) => (Kind::Mute, u),
            _ => continue,
        };
        match &rooms {
            Some(r) => {
                r.sanctions.impose(room, user, kind, until);
            }
            None => early.push((room.to_string(), user.to_string(), kind, until)),
        }
    }
    Ok(())
}

/// Tombstones of deleted messages with seq in `from..=to`, as events.
async fn tombstones(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    room: &Arc<str>,
    from: u64,
    to: u64,
) -> redis::RedisResult<Vec<(Event, Option<u64>)>> {
    #[derive(serde::Deserialize)]
    struct Stone {
        #[serde(default)]
        ts: String,
        #[serde(default)]
        from: String,
        #[serde(default)]
        id: String,
        #[serde(default)]
        via: String,
        #[serde(default)]
        by: String,
    }
    let all: HashMap<u64, String> = con.hgetall(ctx.key(room, "tombstones")).await?;
    let mut out: Vec<(Event, Option<u64>)> = all
        .into_iter()
        .filter(|(seq, _)| (from..=to).contains(seq))
        .filter_map(|(seq, json)| {
            let s: Stone = serde_json::from_str(&json).ok()?;
            let event = Event {
                room: room.clone(),
                seq,
                ts: s.ts.parse().unwrap_or(0),
                kind: EventKind::Message {
                    from: s.from,
                    text: String::new(),
                    id: (!s.id.is_empty()).then_some(s.id),
                    via_api: s.via == "api",
                    deleted: true,
                },
            };
            Some((event, origin_of(ctx, &s.by)))
        })
        .collect();
    out.sort_by_key(|(e, _)| e.seq);
    Ok(out)
}

/// This node's connection that sent an entry (`NODE|CONN`), if it was this node.
fn origin_of(ctx: &Ctx, by: &str) -> Option<u64> {
    by.split_once('|')
        .filter(|(node, _)| *node == ctx.node)
        .and_then(|(_, conn)| conn.parse().ok())
}

async fn open_room(
    ctx: &Ctx,
    mut con: ConnectionManager,
    script: &Script,
    room: &str,
) -> Result<MemoryLog, StoreError> {
    let fresh = new_epoch()?;
    let (epoch, top, newest): (String, String, Vec<Entry>) = script
        .key(ctx.key(room, "meta"))
        .key(ctx.key(room, "stream"))
        .arg(fresh)
        .arg(ctx.ttl_s())
        .arg(ctx.max_messages)
        .invoke_async(&mut con)
        .await
        .map_err(|e| StoreError(format!("Redis: {e}")))?;
    let top: u64 = top.parse().unwrap_or(0);
    let mut log = MemoryLog::new(room, epoch, top, ctx.max_messages, ctx.max_age_ms);
    let failed = |e: redis::RedisError| StoreError(format!("Redis: {e}"));
    load_sanctions(ctx, &mut con, room).await.map_err(failed)?;
    let room: Arc<str> = room.into();
    let first = top.saturating_sub(ctx.max_messages as u64) + 1;
    let mut events: Vec<Event> = newest
        .into_iter()
        .filter_map(|entry| parse_entry(&room, entry).map(|(e, _)| e))
        .collect();
    let stones = tombstones(ctx, &mut con, &room, first, top)
        .await
        .map_err(failed)?;
    events.extend(stones.into_iter().map(|(e, _)| e));
    events.sort_by_key(|e| e.seq);
    let keep = events.len().saturating_sub(ctx.max_messages);
    for event in events.into_iter().skip(keep) {
        log.load(event);
    }
    Ok(log)
}

/// The room's epoch in Redis, made now if it has none.
async fn current_epoch(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    room: &str,
) -> redis::RedisResult<String> {
    let fresh = new_epoch()
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "no randomness", e.0)))?;
    let meta = ctx.key(room, "meta");
    let _: i64 = con.hset_nx(&meta, "epoch", fresh).await?;
    let _: i64 = con.expire(&meta, ctx.ttl_s() as i64).await?;
    con.hget(&meta, "epoch").await
}

/// Stream entries `from..=to` of a room, oldest first, each with the connection of this node
/// that sent it (which is not sent it back), if any.
async fn fetch(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    room: &Arc<str>,
    from: u64,
    to: u64,
) -> redis::RedisResult<Vec<(Event, Option<u64>)>> {
    let entries: Vec<Entry> = con
        .xrange(
            ctx.key(room, "stream"),
            format!("{from}-0"),
            format!("{to}-0"),
        )
        .await?;
    let mut events: Vec<(Event, Option<u64>)> = entries
        .into_iter()
        .filter_map(|e| parse_entry(room, e))
        .map(|(event, by)| {
            let origin = origin_of(ctx, &by);
            (event, origin)
        })
        .collect();
    // Deleted messages left the stream; their tombstones keep the seqs whole.
    let stones = tombstones(ctx, con, room, from, to).await?;
    if !stones.is_empty() {
        events.extend(stones);
        events.sort_by_key(|(e, _)| e.seq);
        events.dedup_by_key(|(e, _)| e.seq);
    }
    Ok(events)
}

/// A stream entry as an event, and `NODE|CONN` of its sender.
fn parse_entry(room: &Arc<str>, (id, fields): Entry) -> Option<(Event, String)> {
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let mut ts = 0;
    let (mut from, mut text, mut cid, mut by) = (String::new(), String::new(), None, String::new());
    let mut via_api = false;
    for pair in fields.chunks(2) {
        let [k, v] = pair else { continue };
        match k.as_str() {
            "ts" => ts = v.parse().ok()?,
            "from" => from = v.clone(),
            "text" => text = v.clone(),
            "id" if !v.is_empty() => cid = Some(v.clone()),
            "by" => by = v.clone(),
            "via" => via_api = v == "api",
            _ => {}
        }
    }
    let event = Event {
        room: room.clone(),
        seq,
        ts,
        kind: EventKind::Message {
            from,
            text,
            id: cid,
            via_api,
            deleted: false,
        },
    };
    Some((event, by))
}

/// PING every second: readiness follows Redis within about a second plus the command
/// timeout, and the connection manager reconnects as soon as Redis is back.
async fn check_health(ctx: Arc<Ctx>, mut con: ConnectionManager) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
        if pong.is_ok() {
            ctx.metrics
                .redis_roundtrip_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        ctx.set_healthy(pong.is_ok());
    }
}

/// An event as the script publishes it.
#[derive(serde::Deserialize)]
struct Published {
    room: String,
    /// "join" or "leave" for presence; absent for a message.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    seq: u64,
    ts: u64,
    #[serde(default)]
    from: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    via: String,
    /// A moderation action (kind "mod").
    #[serde(default, rename = "mod")]
    moderation: Option<ModEvent>,
    node: String,
    conn: String,
}

/// The node's one subscription: every event to its room, gaps filled from the stream; on
/// every (re)subscription each room catches up from its top.
async fn subscribe(
    ctx: Arc<Ctx>,
    client: redis::Client,
    mut con: ConnectionManager,
    subscribed: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = true;
    let mut subscribed = Some(subscribed);
    let mut through = WriteThrough::default();
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "Redis subscription failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&ctx.channel).await {
            warn!(error = %e, "Redis subscription failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        debug!(channel = %ctx.channel, "subscribed");
        if !std::mem::take(&mut first) {
            ctx.metrics.redis_resubscribes.inc();
        }
        if let Some(tx) = subscribed.take() {
            let _ = tx.send(());
        }
        // Whatever was published while unsubscribed is in the streams; a room whose epoch
        // changed meanwhile (Redis restarted empty) is resynced first.
        if let Some(rooms) = ctx.rooms.get().and_then(Weak::upgrade) {
            for room in rooms.all() {
                let name: Arc<str> = room.name.clone();
                match current_epoch(&ctx, &mut con, &name).await {
                    Ok(epoch) => {
                        if room.resync(&epoch) {
                            ctx.metrics.redis_resyncs.inc();
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "Redis: cannot read a room's epoch");
                        continue;
                    }
                }
                if let Err(e) = load_sanctions(&ctx, &mut con, &name).await {
                    warn!(error = %e, "Redis: cannot read a room's bans and mutes");
                }
                let (_, users) = ctx.presence_keys(&name);
                if let Ok(present) = con.hkeys::<_, Vec<String>>(users).await {
                    room.set_present(present);
                }
                let top = room.top();
                if let Ok(events) = fetch(&ctx, &mut con, &name, top + 1, u64::MAX / 2).await {
                    ctx.metrics.redis_gap_fills.inc_by(events.len() as u64);
                    for (e, origin) in events {
                        room.receive(&e, None, origin, encode_event);
                    }
                }
            }
        }
        let mut messages = pubsub.on_message();
        let mut next = messages.next().await;
        while let Some(msg) = next.take() {
            // Events that have already arrived are delivered before any is written, so a
            // member's frames from a burst leave in one write.
            let slice = Instant::now();
            let mut msg = Some(msg);
            while let Some(m) = msg.take() {
                if let Some(p) = published(&ctx, &m) {
                    deliver(&ctx, &mut con, &mut through, p).await;
                }
                if slice.elapsed() < THROUGH_SLICE {
                    match messages.next().now_or_never() {
                        Some(Some(m)) => msg = Some(m),
                        Some(None) => break,
                        None => {}
                    }
                }
            }
            hand_off(&ctx, &mut through);
            next = messages.next().await;
        }
        warn!("Redis subscription lost; resubscribing");
    }
}

/// Have what `through` lists written through on a task of the sockets' runtime. Not on the
/// Redis thread: writing a fan-out to 500 sockets takes milliseconds, and the next message's
/// publish would wait behind it. One task per batch of events replaces one wake-up per member,
/// each from the Redis thread's runtime into the sockets' (`scripts/bench-cluster.sh`, three
/// alternated pairs: 8.3, 8.3, 7.7 CPU-us per delivery against 9.2, 9.6, 8.8; p99 9.2, 9.2, 9.7
/// against 10.2, 10.8, 8.7 ms; written by the Redis thread itself the CPU fell as far, but p99
/// rose to 11.8-18.4 ms). Without that runtime (unit tests) the members' writers are woken.
fn hand_off(ctx: &Ctx, through: &mut WriteThrough) {
    let through = std::mem::take(through);
    if let Some(runtime) = &ctx.sockets {
        through.flush_on(runtime);
    }
}

/// An event from the channel, if it is one of ours.
fn published(ctx: &Ctx, msg: &redis::Msg) -> Option<Published> {
    let payload = msg.get_payload::<String>().ok()?;
    let p = serde_json::from_str::<Published>(&payload);
    if p.is_err() {
        warn!("an event on {} that is not ours", ctx.channel);
    }
    p.ok()
}

/// Hand an event to its room here. Its fan-out only lists the members' outboxes on `through`
/// (handed off once the events that arrived with it are delivered); before a gap is filled
/// from the stream what is listed is handed off, so nobody's frames wait on Redis.
async fn deliver(
    ctx: &Ctx,
    con: &mut ConnectionManager,
    through: &mut WriteThrough,
    mut p: Published,
) {
    if let Some(m) = p.moderation.take() {
        // Applied even where the room is not open: a ban or a mute holds on every node.
        let origin = (p.node == ctx.node).then(|| p.conn.parse().ok()).flatten();
        if let (Some(rooms), Some(s)) =
            (ctx.rooms.get().and_then(Weak::upgrade), m.sanctioned(p.ts))
        {
            rooms.apply(&p.room, &s, origin);
        }
        return;
    }
    let Some(room) = ctx
        .rooms
        .get()
        .and_then(Weak::upgrade)
        .and_then(|rooms| rooms.get(&p.room))
    else {
        return; // nobody here is in that room
    };
    if !p.kind.is_empty() {
        let origin = (p.node == ctx.node).then(|| p.conn.parse().ok()).flatten();
        let frame = match p.kind.as_str() {
            "join" => crate::protocol::ServerFrame::Join {
                user: &p.user,
                ts: p.ts,
            },
            _ => crate::protocol::ServerFrame::Leave {
                user: &p.user,
                ts: p.ts,
            },
        };
        let frame = tokio_tungstenite::tungstenite::Message::text(frame.to_json());
        room.presence_event(p.kind == "join", &p.user, origin, frame);
        return;
    }
    let origin = (p.node == ctx.node).then(|| p.conn.parse().ok()).flatten();
    let event = Event {
        room: room.name.clone(),
        seq: p.seq,
        ts: p.ts,
        kind: EventKind::Message {
            from: p.from,
            text: p.text,
            id: (!p.id.is_empty()).then_some(p.id),
            via_api: p.via == "api",
            deleted: false,
        },
    };
    let (resynced, mut received) =
        through.run(|| room.receive(&event, Some(&p.epoch), origin, encode_event));
    if resynced {
        ctx.metrics.redis_resyncs.inc();
    }
    if let Received::Gap(top) = received {
        // Missed events (a lost publish, a reconnect): the stream has them, in order.
        hand_off(ctx, through);
        if let Ok(missing) = fetch(ctx, con, &room.name, top + 1, event.seq - 1).await {
            ctx.metrics.redis_gap_fills.inc_by(missing.len() as u64);
            for (e, origin) in &missing {
                count(
                    ctx,
                    through
                        .run(|| room.receive(e, None, *origin, encode_event))
                        .1,
                );
            }
        }
        received = through
            .run(|| room.receive(&event, None, origin, encode_event))
            .1;
    }
    count(ctx, received);
}

fn count(ctx: &Ctx, received: Received) {
    if let Received::Delivered(f) = received {
        ctx.metrics.fanned_out(&f);
    }
}
