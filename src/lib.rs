//! wss-chat: a TLS-terminating WebSocket chat server with strict defaults.
//!
//! The path of one connection, file by file: `server` (accept, caps, deadline) -> `tls` ->
//! `http` (routing) -> `handshake` (rate, `origin`, `auth`, room reserved: it only admits) ->
//! `session` (frames; `engine::join` on upgrade) -> `engine::post` (`limits` already charged,
//! length, `sanitize`, `store` append assigns seq (`sqlite` commits it first), `room` fan-out)
//! -> `session` writer. Wire
//! types live in `protocol`, settings in `config`. [`run`] starts a server so tests and the
//! binary share it.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod handshake;
pub mod headers;
pub mod hkdf;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod moderation;
pub mod origin;
pub mod protocol;
pub mod redis_store;
pub mod roles;
pub mod room;
pub mod sanitize;
pub mod server;
pub mod session;
pub mod socket;
pub mod sqlite;
pub mod store;
pub mod tls;
pub mod tls_io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{info, warn};

use config::Config;

/// Bytes a client frame may carry beyond `max_message_bytes` for its JSON envelope (type,
/// id, quotes and escapes). A larger frame is closed with 1009 by the WebSocket layer before it
/// is buffered; a text over the limit inside a frame that fits gets `too_long`.
pub const ENVELOPE_ALLOWANCE: usize = 1024;
/// Message size limit in `server.echo_mode` (test only): what Autobahn|Testsuite sends.
const ECHO_MODE_MESSAGE_LIMIT: usize = 16 << 20;
/// tungstenite reads in chunks of this; its 128 KiB default costs that much per connection.
/// It reads from our TLS layer's plaintext, not the socket, so a small chunk costs no extra
/// system calls, only a copy call per chunk (a 200-byte chat frame takes two); a larger frame
/// still gets a buffer of its own size. Each halving saved its size per idle connection (bench
/// idle: 1024 -> 256 saved 0.76 KiB, 256 -> 128 another 0.12).
const READ_BUFFER: usize = 128;
/// tungstenite writes only its pongs and the Close (data frames go through socket.rs): they
/// are batched up to this before a write.
const WRITE_BUFFER: usize = 16 * 1024;

/// State every connection shares, built once from the config.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub origins: origin::OriginPolicy,
    pub auth: auth::Authenticator,
    /// API keys (hashes) and their rates.
    pub api: api::ApiKeys,
    pub limits: limits::Limits,
    /// Rooms, the message pipeline and the store: what sessions (and later the API) call.
    pub engine: engine::Engine,
    /// Live connections per user, for `server.max_connections_per_user`.
    pub user_slots: Arc<limits::CapCounter<String>>,
    /// Size caps for every WebSocket, derived from `limits.max_message_bytes`.
    pub ws_config: WebSocketConfig,
    /// Flips to true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<metrics::Metrics>,
}

/// The checks of a config that need its files: the certificate pair loads and matches (unless
/// it is missing and will be generated), and the signing secret reads. `check-config` runs
/// them so it passes exactly the configs `serve` starts with; `serve` runs them first so a
/// bad file exits 2, as every other config problem does.
pub fn preflight(config: &Config) -> Result<(), String> {
    let cert = config.resolve(&config.tls.cert);
    let key = config.resolve(&config.tls.key);
    let generated = config.tls.generate_self_signed && !cert.exists() && !key.exists();
    if !generated {
        tls::CertStore::load(&cert, &key, config.tls.profile)?;
    }
    auth::Authenticator::from_config(&config.auth, &config.base_dir)?;
    Ok(())
}

/// SIGXFSZ on Linux (x86_64 and aarch64 alike).
#[cfg(target_os = "linux")]
const SIGXFSZ: i32 = 25;

/// Open the history store the config names. An error names `history.path` and the reason;
/// the caller exits 2 and the file is left as it was.
pub fn open_store(
    config: &Config,
    metrics: &Arc<metrics::Metrics>,
) -> Result<Arc<dyn store::Store>, String> {
    let h = &config.history;
    Ok(match h.store {
        // A relay: each room keeps only its epoch and seq.
        config::HistoryStore::Off => Arc::new(store::MemoryStore { retain: 0 }),
        config::HistoryStore::Memory => Arc::new(store::MemoryStore {
            retain: h.max_messages_per_room,
        }),
        config::HistoryStore::Sqlite => Arc::new(sqlite::SqliteStore::open(
            &config.resolve(&h.path),
            h.durability,
            sqlite::Retention {
                max_messages: h.max_messages_per_room,
                max_age_ms: h.max_age_hours.saturating_mul(3_600_000),
            },
            metrics.clone(),
        )?),
        config::HistoryStore::Redis => {
            Arc::new(redis_store::RedisStore::open(config, metrics.clone())?)
        }
    })
}

/// Load or create the certificate, bind, and serve until `shutdown` resolves.
/// `on_bound` is told the bound address (the config may ask for port 0).
pub async fn run(
    config: Config,
    store: Arc<dyn store::Store>,
    metrics: Arc<metrics::Metrics>,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    for w in config.loosened() {
        warn!("loosened default: {w}");
    }
    // A file-size limit (RLIMIT_FSIZE) reached by the store must fail that write, which is
    // answered `unavailable`, not kill the server: SIGXFSZ's default action is to terminate.
    // tokio keeps a handler installed once one is registered.
    #[cfg(target_os = "linux")]
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ))
    {
        warn!("cannot catch SIGXFSZ: a file-size limit would stop the server: {e}");
    }
    let cert = config.resolve(&config.tls.cert);
    let key = config.resolve(&config.tls.key);
    if config.tls.generate_self_signed && !cert.exists() && !key.exists() {
        tls::write_self_signed(
            &cert,
            &key,
            &["localhost".into(), "127.0.0.1".into()],
            false,
        )?;
        warn!("=================================================================");
        warn!("GENERATED A SELF-SIGNED DEVELOPMENT CERTIFICATE: NOT FOR PRODUCTION");
        warn!("  {} (and its key beside it)", cert.display());
        warn!("  Browsers and clients will not trust it. Use a real certificate and");
        warn!("  set tls.generate_self_signed = false before exposing this server.");
        warn!("=================================================================");
    }
    let certs = tls::CertStore::load(&cert, &key, config.tls.profile)?;
    let tls_config = certs.server_config()?;
    let auth = auth::Authenticator::from_config(&config.auth, &config.base_dir)?;

    let frame_limit = if config.server.echo_mode {
        // The conformance suite sends messages up to 16 MiB; echo mode exists only for it
        // and only on loopback (config.rs refuses it elsewhere).
        ECHO_MODE_MESSAGE_LIMIT
    } else {
        config.limits.max_message_bytes + ENVELOPE_ALLOWANCE
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Only control frames (at most 127 bytes each) go through it; bound it so a peer that
        // pings and never reads cannot grow it.
        .max_write_buffer_size(2 * WRITE_BUFFER)
        .max_frame_size(Some(frame_limit))
        .max_message_size(Some(frame_limit));

    let listener = TcpListener::bind(config.listen_addr())
        .await
        .map_err(|e| format!("server.listen: cannot bind {}: {e}", config.server.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("server.listen: {e}"))?;

    let metrics_listener = metrics::bind(config.metrics.listen.as_deref()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Echo mode (the conformance suite) speaks no protocol of ours: no presence frames.
    let presence = config.presence.enabled && !config.server.echo_mode;
    let rooms = room::Rooms::new(&config.rooms, store.clone(), presence)?;
    store.attach(Arc::downgrade(&rooms));
    let shared = Arc::new(Shared {
        origins: origin::OriginPolicy::new(&config.origins.allowed, config.origins.allow_missing),
        auth,
        api: api::ApiKeys::new(&config.api),
        limits: limits::Limits::new(&config.limits),
        engine: engine::Engine::new(&config, rooms, metrics.clone()),
        user_slots: limits::CapCounter::new(config.server.max_connections_per_user),
        ws_config,
        shutdown: stop_rx,
        metrics,
        config,
    });
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(metrics::serve(shared.metrics.clone(), l)));
    info!("listening on {addr}");
    demo_banner(&shared.config, addr);
    tokio::spawn(reload_on_sighup(certs));
    let presence_task = presence.then(|| tokio::spawn(presence_tick(shared.engine.rooms.clone())));
    on_bound(addr);
    server::serve(shared, listener, tls_config, stop_tx, shutdown).await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(t) = presence_task {
        t.abort();
    }
    Ok(())
}

/// Send every room's waiting join and leave frames, each tick. They are written through to
/// idle members' sockets (room.rs's `WriteThrough`), as the store's fan-outs are: under churn
/// a tick that woke every member's task put ~7 % of the server's samples in the members'
/// writers (`bench/profile.sh churn`). Unconstrained for the reason the SQLite settler is:
/// tokio's cooperative budget would fail all but the first 128 writes of a tick.
async fn presence_tick(rooms: Arc<room::Rooms>) {
    tokio::task::unconstrained(async move {
        let mut tick = tokio::time::interval(room::PRESENCE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut through = room::WriteThrough::default();
        loop {
            tick.tick().await;
            through.run(|| rooms.flush_presence());
            through.flush_all().await;
        }
    })
    .await
}

/// With the demo config, say once what to do next. The demo tokens are published in the README
/// and config.toml, so printing them gives nothing away; no other token is ever logged.
fn demo_banner(config: &Config, addr: SocketAddr) {
    let users = config.demo_users();
    if users.is_empty() {
        return;
    }
    let host = if addr.ip().is_loopback() {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    let url = format!("https://{host}:{}", addr.port());
    info!("DEMO: open {url}/ in two browser tabs (accept the development certificate) and connect with:");
    for (user, token) in &users {
        info!("DEMO:   {user}: token {token}");
    }
    let (_, token) = users[0];
    info!(
        "DEMO: or from a terminal (pip install websockets): python3 scripts/chat.py --url wss://{host}:{} --token {token}",
        addr.port()
    );
}

/// Reload the certificate on every SIGHUP; a bad pair is refused and the old one kept.
async fn reload_on_sighup(certs: Arc<tls::CertStore>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: certificate reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => info!("certificate reloaded"),
            Err(e) => tracing::error!("certificate reload refused, keeping the current one: {e}"),
        }
    }
}
