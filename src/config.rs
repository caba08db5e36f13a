//! The one configuration file: its shape, its defaults, and the checks that refuse a bad one.
//!
//! Every key has a secure default; a file only loosens a default on purpose, and
//! [`Config::loosened`] lists each such choice so the server can warn about it at start.
//! Validation collects every problem with its key's dotted name, so an operator fixes a file in
//! one pass rather than one error per restart.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::origin::OriginRule;
use crate::protocol::{valid_room_name, valid_user_name};

/// A problem with one key of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, such as `limits.burst`; empty when the file as a whole is at fault.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

/// Every problem found in a config file; loading fails with all of them at once.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid config {}:", self.path.display())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub origins: OriginsConfig,
    pub auth: AuthConfig,
    pub rooms: RoomsConfig,
    pub limits: LimitsConfig,
    pub sanitize: SanitizeConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub history: HistoryConfig,
    pub presence: PresenceConfig,
    pub redis: RedisConfig,
    pub api: ApiConfig,
    pub moderation: ModerationConfig,
    /// Directory of the config file: relative paths in it are resolved from here, so the
    /// server behaves the same whatever directory it is started from.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Live connections one user may hold (a leaked token cannot open thousands).
    pub max_connections_per_user: usize,
    /// TLS handshake plus HTTP upgrade must finish within this, or the socket is dropped.
    pub handshake_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// After sending a Close, how long to keep reading for the peer's Close before the socket
    /// is shut anyway (RFC 6455 section 7.1.1). Bounded so a peer cannot hold a socket open.
    pub close_grace_ms: u64,
    /// The server pings every client this often, so dead peers and NAT timeouts show up.
    pub ping_interval_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_ms: u64,
    /// Test-only: echo each message to its sender instead of broadcasting (for Autobahn).
    pub echo_mode: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Create a self-signed development pair when the files are missing. Demo only.
    pub generate_self_signed: bool,
    pub profile: TlsProfile,
}

/// Which TLS versions are offered (Mozilla's server-side TLS profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// TLS 1.2 and 1.3: every browser and client of the last decade.
    Intermediate,
    /// TLS 1.3 only, with an ECDSA certificate.
    Modern,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginsConfig {
    pub allowed: Vec<String>,
    pub allow_missing: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub users: Vec<StaticUser>,
    /// A file holding the HS256 secret (its whole content, surrounding whitespace trimmed).
    pub jwt_secret_file: Option<PathBuf>,
    /// The name of an environment variable holding the HS256 secret.
    pub jwt_secret_env: Option<String>,
    pub allow_query_token: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub name: String,
    pub token_sha256: String,
    pub rooms: Option<Vec<String>>,
    /// Roles by room, e.g. `roles = { lobby = "moderator" }`; member where not named.
    pub roles: Option<crate::roles::RoomRoles>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Rooms that always exist.
    pub names: Vec<String>,
    /// Create any other validly named room on first join, up to `max_rooms`.
    pub auto_create: bool,
    pub max_rooms: usize,
    pub max_members: usize,
    /// Pacing of a busy room's writes (room.rs's `Pacing`): a message less than this many
    /// milliseconds after the room's last write is held, for half the members, until the next
    /// message or this long; 0 writes each message on its own.
    pub batch_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub burst: u32,
    pub max_violations: u32,
    pub handshakes_per_minute_per_ip: u32,
    pub outbound_queue_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SanitizeMode {
    Strip,
    Basic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SanitizeConfig {
    pub mode: SanitizeMode,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `wss_chat=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve Prometheus metrics (plain HTTP); off when unset.
    pub listen: Option<String>,
}

/// Where a room's messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStore {
    /// Nothing kept: a relay. A room still has an epoch and a seq.
    Off,
    /// The last `max_messages_per_room` of each room, in this process only (lost on restart,
    /// which gives the room a new epoch).
    Memory,
    /// SQLite at `history.path`: kept across restarts and kill -9.
    Sqlite,
    /// Redis (`[redis]`): shared by every node, for many nodes serving one chat.
    Redis,
}

/// What an ack promises about the disk (SQLite `synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acked => on disk, through power loss (fsync at every commit).
    Full,
    /// Acked => survives a crash of the server, but the last commits may be lost with power.
    Normal,
}

/// The Redis that nodes share (`history.store = "redis"`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://` (TLS); never with a password in it.
    pub url: Option<String>,
    /// The password (or `username:password` ACL pair is not supported: a password only), from a
    /// file or an environment variable, never from this file.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// PEM CA to trust for `rediss://` (the system roots when unset).
    pub ca_file: Option<PathBuf>,
    /// Every key starts with this.
    pub key_prefix: String,
    pub connect_timeout_ms: u64,
    pub command_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            key_prefix: "wss-chat".into(),
            connect_timeout_ms: 2000,
            command_timeout_ms: 1000,
        }
    }
}

impl RedisConfig {
    /// The password, if one is configured. Errors name the key, never the value.
    pub fn load_password(&self, base: &Path) -> Result<Option<String>, Problem> {
        let Some((key, bytes)) = read_secret(
            base,
            (self.password_file.as_deref(), "redis.password_file"),
            (self.password_env.as_deref(), "redis.password_env"),
        )?
        else {
            return Ok(None);
        };
        let password = String::from_utf8(bytes).map_err(|_| Problem {
            key: key.into(),
            reason: "the password is not UTF-8".into(),
        })?;
        if password.is_empty() {
            return Err(Problem {
                key: key.into(),
                reason: "the password is empty".into(),
            });
        }
        Ok(Some(password))
    }
}

/// The HTTP API for back ends (`/api/v1`): its keys and their rate.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub keys: Vec<ApiKey>,
    /// Requests per second each key may make, and its burst.
    pub requests_per_second: u32,
    pub burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys: Vec::new(),
            requests_per_second: 10,
            burst: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Names the key in logs and, by default, as the sender of what it posts.
    pub name: String,
    /// The SHA-256 of the key, 64 hex digits (`wss-chat gen-api-key` prints both).
    pub key_sha256: String,
    pub scopes: Vec<Scope>,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Publish,
    Read,
    Moderate,
}

/// Moderation's bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationConfig {
    /// The longest mute a moderator may give.
    pub max_mute_s: u64,
    /// How long a kicked user is kept out of the room.
    pub kick_ban_s: u64,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        ModerationConfig {
            max_mute_s: 86_400,
            kick_ban_s: 60,
        }
    }
}

/// Who is in a room: the welcome's `members`, and join/leave frames.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Off: no `members` in the welcome and no join/leave frames.
    pub enabled: bool,
    /// Users listed in a welcome at most (`members_truncated: true` beyond).
    pub max_listed: usize,
    /// With Redis: a node's connections count as present this long after its last refresh
    /// (every third of it), so a node that dies leaves no ghosts for longer.
    pub ttl_s: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            enabled: true,
            max_listed: 1000,
            ttl_s: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    pub store: HistoryStore,
    /// The SQLite file (store = "sqlite"), relative to the config file's directory.
    pub path: PathBuf,
    pub durability: Durability,
    /// Messages older than this are dropped (in the background, within a minute).
    pub max_age_hours: u64,
    /// Messages kept per room; older ones are dropped.
    pub max_messages_per_room: usize,
    /// Messages sent after the welcome to a client that joins without resuming.
    pub on_join: usize,
    /// A message id a user sends again in a room within this many seconds gets the original
    /// ack and is not delivered twice (while the original is retained).
    pub dedup_window_s: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            store: HistoryStore::Sqlite,
            path: PathBuf::from("data/wss-chat.db"),
            durability: Durability::Full,
            max_age_hours: 168,
            max_messages_per_room: 1000,
            on_join: 50,
            dedup_window_s: 600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            origins: OriginsConfig::default(),
            auth: AuthConfig::default(),
            rooms: RoomsConfig::default(),
            limits: LimitsConfig::default(),
            sanitize: SanitizeConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            history: HistoryConfig::default(),
            presence: PresenceConfig::default(),
            redis: RedisConfig::default(),
            api: ApiConfig::default(),
            moderation: ModerationConfig::default(),
            base_dir: PathBuf::from("."),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8443".into(),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            max_connections_per_user: 16,
            handshake_timeout_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            close_grace_ms: 2_000,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            echo_mode: false,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: "certs/cert.pem".into(),
            key: "certs/key.pem".into(),
            generate_self_signed: false,
            profile: TlsProfile::Intermediate,
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            names: Vec::new(),
            auto_create: false,
            max_rooms: 100,
            max_members: 1_000,
            batch_ms: 20,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 4_096,
            messages_per_second: 5,
            burst: 10,
            max_violations: 10,
            handshakes_per_minute_per_ip: 30,
            outbound_queue_bytes: 1 << 20,
        }
    }
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        SanitizeConfig {
            mode: SanitizeMode::Strip,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// One line for a log: toml's messages may span several.
fn flatten(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each key of `section` deserialised alone as `T`, so every bad key is named. An array of
/// tables (such as `auth.users`) is checked entry by entry, as `auth.users[1]`.
fn check_keys<T: serde::de::DeserializeOwned>(
    section: &str,
    value: &toml::Value,
    problems: &mut Vec<Problem>,
) {
    let Some(table) = value.as_table() else {
        problems.push(Problem {
            key: section.into(),
            reason: "must be a table, as in [section]".into(),
        });
        return;
    };
    let alone = |key: &str, v: toml::Value| {
        let mut one = toml::Table::new();
        one.insert(key.to_string(), v);
        toml::Value::Table(one).try_into::<T>().err()
    };
    for (key, v) in table {
        let Some(err) = alone(key, v.clone()) else {
            continue;
        };
        let entries = v.as_array().filter(|a| a.iter().all(toml::Value::is_table));
        let mut named = false;
        for (i, entry) in entries.into_iter().flatten().enumerate() {
            if let Some(e) = alone(key, toml::Value::Array(vec![entry.clone()])) {
                problems.push(Problem {
                    key: format!("{section}.{key}[{i}]"),
                    reason: flatten(e.message()),
                });
                named = true;
            }
        }
        if !named {
            problems.push(Problem {
                key: format!("{section}.{key}"),
                reason: flatten(err.message()),
            });
        }
    }
}

impl AuthConfig {
    /// The HS256 secret, read from the one place the config names: the whole file (surrounding
    /// whitespace trimmed) or the environment variable. The only reader of the secret, so the
    /// checks at start, the server and `wss-chat token` agree on what it is.
    pub fn load_secret(&self, base: &Path) -> Result<Option<Vec<u8>>, Problem> {
        let Some((key, secret)) = read_secret(
            base,
            (self.jwt_secret_file.as_deref(), "auth.jwt_secret_file"),
            (self.jwt_secret_env.as_deref(), "auth.jwt_secret_env"),
        )?
        else {
            return Ok(None);
        };
        if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(Problem {
                key: key.into(),
                reason: format!("the secret must be at least {MIN_JWT_SECRET_BYTES} bytes"),
            });
        }
        Ok(Some(secret))
    }
}

/// A secret from a file (relative to `base`, read with a bound) or an environment variable,
/// trimmed; with the key it came from. Either or neither, never both. The one secret reader:
/// its errors name the file or variable, never the contents.
fn read_secret(
    base: &Path,
    (file, file_key): (Option<&Path>, &'static str),
    (env, env_key): (Option<&str>, &'static str),
) -> Result<Option<(&'static str, Vec<u8>)>, Problem> {
    let problem = |key: &str, reason: String| Problem {
        key: key.into(),
        reason,
    };
    match (file, env) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(problem(
            env_key,
            format!("set either {file_key} or {env_key}, not both"),
        )),
        (Some(f), None) => {
            let path = if f.is_absolute() {
                f.to_path_buf()
            } else {
                base.join(f)
            };
            let mut bytes = Vec::new();
            // Bounded, so a path such as /dev/zero fails the check instead of eating memory.
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
                .map_err(|e| problem(file_key, format!("cannot read {}: {e}", path.display())))?;
            if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
                return Err(problem(
                    file_key,
                    format!(
                        "{} is larger than {MAX_SECRET_FILE_BYTES} bytes",
                        path.display()
                    ),
                ));
            }
            Ok(Some((file_key, bytes.trim_ascii().to_vec())))
        }
        (None, Some(var)) => {
            let s = std::env::var(var).map_err(|_| {
                problem(
                    env_key,
                    format!("environment variable {var} is not set or not UTF-8"),
                )
            })?;
            Ok(Some((env_key, s.trim().as_bytes().to_vec())))
        }
    }
}

/// The 32 bytes of a SHA-256 written as 64 hex digits (`token_sha256`), or `None`.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The demo users and their published tokens (config.toml, README). A config that lets one of
/// them in is a demo: the server says so loudly, and prints how to connect.
pub const DEMO_TOKENS: [(&str, &str); 2] = [
    ("alice", "alice-demo-token-not-for-production"),
    ("bob", "bob-demo-token-not-for-production"),
];

/// Hard ceilings: past these a setting stops being a loosened default and becomes a hazard.
const MAX_MESSAGE_BYTES_CEILING: usize = 1 << 20;
/// Past this a busy room's messages visibly lag behind their senders.
const MAX_BATCH_MS: u64 = 1_000;
const MIN_JWT_SECRET_BYTES: usize = 32;
/// A secret file is a few dozen bytes; anything this large is the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![Problem {
                key: String::new(),
                reason: format!("cannot read file: {e}"),
            }])
        })?;
        let mut config = Config::parse(&text).map_err(fail)?;
        config.base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        config.validate().map_err(fail)?;
        Ok(config)
    }

    /// Parse TOML text into a config without validating it. On failure every problem is
    /// reported, each named by its key: a syntax error by its line, a value of the wrong type
    /// or an unknown key by its dotted name.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let first = match toml::from_str::<Config>(text) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let at_line = |e: &toml::de::Error| {
            e.span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_default()
        };
        // serde stops at the first error. The file parses as TOML (or that is the one problem),
        // so deserialise each key of each section on its own to find all of them: every
        // section struct has defaults, so a table of one key is a complete section.
        let Ok(table) = text.parse::<toml::Table>() else {
            return Err(vec![Problem {
                key: at_line(&first),
                reason: flatten(first.message()),
            }]);
        };
        let mut problems = Vec::new();
        for (section, value) in &table {
            let check = match section.as_str() {
                "server" => check_keys::<ServerConfig>,
                "tls" => check_keys::<TlsConfig>,
                "origins" => check_keys::<OriginsConfig>,
                "auth" => check_keys::<AuthConfig>,
                "rooms" => check_keys::<RoomsConfig>,
                "limits" => check_keys::<LimitsConfig>,
                "sanitize" => check_keys::<SanitizeConfig>,
                "log" => check_keys::<LogConfig>,
                "metrics" => check_keys::<MetricsConfig>,
                "history" => check_keys::<HistoryConfig>,
                "presence" => check_keys::<PresenceConfig>,
                "redis" => check_keys::<RedisConfig>,
                "api" => check_keys::<ApiConfig>,
                "moderation" => check_keys::<ModerationConfig>,
                _ => {
                    problems.push(Problem {
                        key: section.clone(),
                        reason: "unknown section".into(),
                    });
                    continue;
                }
            };
            check(section, value, &mut problems);
        }
        if problems.is_empty() {
            problems.push(Problem {
                key: at_line(&first),
                reason: flatten(first.message()),
            });
        }
        Err(problems)
    }

    /// Every semantic problem, each with its key.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut p = Vec::new();
        let mut bad = |key: &str, reason: String| {
            p.push(Problem {
                key: key.into(),
                reason,
            })
        };

        if self.server.listen.parse::<SocketAddr>().is_err() {
            bad(
                "server.listen",
                format!(
                    "{:?} is not an IP:port address such as 127.0.0.1:8443",
                    self.server.listen
                ),
            );
        }
        if self.server.max_connections == 0 {
            bad("server.max_connections", "must be at least 1".into());
        }
        if self.server.max_connections_per_ip == 0 {
            bad("server.max_connections_per_ip", "must be at least 1".into());
        }
        if !(100..=60_000).contains(&self.server.handshake_timeout_ms) {
            bad(
                "server.handshake_timeout_ms",
                "must be between 100 and 60000".into(),
            );
        }
        if self.server.max_connections_per_user == 0 {
            bad(
                "server.max_connections_per_user",
                "must be at least 1".into(),
            );
        }
        if !(100..=3_600_000).contains(&self.server.ping_interval_ms) {
            bad(
                "server.ping_interval_ms",
                "must be between 100 and 3600000".into(),
            );
        }
        if self.server.idle_timeout_ms <= self.server.ping_interval_ms
            || self.server.idle_timeout_ms > 86_400_000
        {
            bad(
                "server.idle_timeout_ms",
                "must be more than server.ping_interval_ms (so a live client can answer a ping) and at most 86400000".into(),
            );
        }
        if !(100..=10_000).contains(&self.server.close_grace_ms) {
            bad(
                "server.close_grace_ms",
                "must be between 100 and 10000".into(),
            );
        }
        if self.server.shutdown_timeout_ms > 300_000 {
            bad(
                "server.shutdown_timeout_ms",
                "must be at most 300000".into(),
            );
        }
        if self.server.echo_mode {
            if let Ok(addr) = self.server.listen.parse::<SocketAddr>() {
                if !addr.ip().is_loopback() {
                    bad(
                        "server.echo_mode",
                        "is a test mode and is refused unless server.listen is a loopback address"
                            .into(),
                    );
                }
            }
        }

        if self.tls.cert.as_os_str().is_empty() {
            bad("tls.cert", "must name a PEM certificate chain file".into());
        }
        if self.tls.key.as_os_str().is_empty() {
            bad("tls.key", "must name a PEM private key file".into());
        }

        if self.origins.allowed.is_empty() && !self.origins.allow_missing {
            bad(
                "origins.allowed",
                "is empty, so every browser would be refused; list the https origins of your pages"
                    .into(),
            );
        }
        for (i, o) in self.origins.allowed.iter().enumerate() {
            if let Err(e) = OriginRule::parse(o) {
                bad(&format!("origins.allowed[{i}]"), format!("{o:?}: {e}"));
            }
        }

        let mut names = std::collections::HashSet::new();
        for (i, u) in self.auth.users.iter().enumerate() {
            let key = format!("auth.users[{i}]");
            if !valid_user_name(&u.name) {
                bad(
                    &format!("{key}.name"),
                    "must be 1 to 64 characters without control characters".into(),
                );
            }
            if !names.insert(u.name.as_str()) {
                bad(
                    &format!("{key}.name"),
                    format!("{:?} is listed twice", u.name),
                );
            }
            if parse_sha256_hex(&u.token_sha256).is_none() {
                bad(
                    &format!("{key}.token_sha256"),
                    "must be 64 hex digits (the SHA-256 of the token; `wss-chat hash-token` prints it)"
                        .into(),
                );
            }
            for (j, r) in u.rooms.iter().flatten().enumerate() {
                if !valid_room_name(r) {
                    bad(
                        &format!("{key}.rooms[{j}]"),
                        format!("{r:?} is not a room name (1 to 64 of A-Z a-z 0-9 _ . -)"),
                    );
                }
            }
            for r in u.roles.iter().flat_map(|r| r.keys()) {
                if !valid_room_name(r) {
                    bad(
                        &format!("{key}.roles"),
                        format!("{r:?} is not a room name (1 to 64 of A-Z a-z 0-9 _ . -)"),
                    );
                }
            }
        }
        if let Err(problem) = self.auth.load_secret(&self.base_dir) {
            bad(&problem.key, problem.reason);
        }
        if self.auth.users.is_empty()
            && self.auth.jwt_secret_file.is_none()
            && self.auth.jwt_secret_env.is_none()
        {
            bad(
                "auth",
                "no way to log in: add [[auth.users]] or a jwt_secret_file / jwt_secret_env".into(),
            );
        }

        for (i, r) in self.rooms.names.iter().enumerate() {
            if !valid_room_name(r) {
                bad(
                    &format!("rooms.names[{i}]"),
                    format!("{r:?} is not a room name (1 to 64 of A-Z a-z 0-9 _ . -)"),
                );
            }
        }
        if self.rooms.names.is_empty() && !self.rooms.auto_create {
            bad(
                "rooms.names",
                "is empty and rooms.auto_create is off, so no room can be joined".into(),
            );
        }
        if self.rooms.max_rooms == 0 || self.rooms.max_rooms < self.rooms.names.len() {
            bad(
                "rooms.max_rooms",
                "must be at least 1 and at least the number of rooms.names".into(),
            );
        }
        if self.rooms.max_members == 0 {
            bad("rooms.max_members", "must be at least 1".into());
        }
        if self.rooms.batch_ms > MAX_BATCH_MS {
            bad(
                "rooms.batch_ms",
                format!("must be at most {MAX_BATCH_MS} (a busy room's messages would lag)"),
            );
        }

        let l = &self.limits;
        if l.max_message_bytes == 0 || l.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            bad(
                "limits.max_message_bytes",
                format!("must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"),
            );
        }
        if l.messages_per_second == 0 {
            bad("limits.messages_per_second", "must be at least 1".into());
        }
        if l.burst == 0 {
            bad("limits.burst", "must be at least 1".into());
        }
        if l.max_violations == 0 {
            bad("limits.max_violations", "must be at least 1".into());
        }
        if l.handshakes_per_minute_per_ip == 0 {
            bad(
                "limits.handshakes_per_minute_per_ip",
                "must be at least 1".into(),
            );
        }
        if l.outbound_queue_bytes < l.max_message_bytes * 8 {
            bad(
                "limits.outbound_queue_bytes",
                "must hold at least 8 messages of limits.max_message_bytes after escaping".into(),
            );
        }

        let h = &self.history;
        if !(1..=1_000_000).contains(&h.max_messages_per_room) {
            bad(
                "history.max_messages_per_room",
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=86_400).contains(&h.dedup_window_s) {
            bad(
                "history.dedup_window_s",
                "must be between 1 and 86400".into(),
            );
        }
        if !(1..=87_600).contains(&h.max_age_hours) {
            bad(
                "history.max_age_hours",
                "must be between 1 and 87600 (ten years)".into(),
            );
        }
        if h.store == HistoryStore::Sqlite && h.path.as_os_str().is_empty() {
            bad("history.path", "must name a file".into());
        }
        let r = &self.redis;
        if let Some(url) = &r.url {
            let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
            let rest = url.split_once("://").map_or("", |(_, rest)| rest);
            if !scheme_ok {
                bad("redis.url", "must start with redis:// or rediss://".into());
            } else if rest.split('/').next().unwrap_or("").contains('@') {
                // Never repeat the URL: it holds a secret.
                bad(
                    "redis.url",
                    "must not hold credentials: put the password in redis.password_file or redis.password_env".into(),
                );
            }
            if r.ca_file.is_some() && !url.starts_with("rediss://") {
                bad("redis.ca_file", "is only used with a rediss:// url".into());
            }
            if let Some(ca) = &r.ca_file {
                let path = self.resolve(ca);
                if let Err(e) = std::fs::metadata(&path) {
                    bad(
                        "redis.ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                }
            }
        } else if h.store == HistoryStore::Redis {
            bad(
                "redis.url",
                "must be set when history.store = \"redis\"".into(),
            );
        }
        if r.key_prefix.is_empty()
            || r.key_prefix.len() > 64
            || !r
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            bad(
                "redis.key_prefix",
                "must be 1 to 64 letters, digits, '-', '_', '.' or ':'".into(),
            );
        }
        if !(100..=60_000).contains(&r.connect_timeout_ms) {
            bad(
                "redis.connect_timeout_ms",
                "must be between 100 and 60000".into(),
            );
        }
        if !(50..=60_000).contains(&r.command_timeout_ms) {
            bad(
                "redis.command_timeout_ms",
                "must be between 50 and 60000".into(),
            );
        }
        if let Err(problem) = r.load_password(&self.base_dir) {
            bad(&problem.key, problem.reason);
        }
        if !(2..=3600).contains(&self.presence.ttl_s) {
            bad("presence.ttl_s", "must be between 2 and 3600".into());
        }
        if !(1..=100_000).contains(&self.presence.max_listed) {
            bad("presence.max_listed", "must be between 1 and 100000".into());
        }
        let mut key_names = std::collections::HashSet::new();
        let mut key_hashes = std::collections::HashSet::new();
        for (i, k) in self.api.keys.iter().enumerate() {
            let key = format!("api.keys[{i}]");
            if !valid_user_name(&k.name) {
                bad(
                    &format!("{key}.name"),
                    "must be 1 to 64 characters without control characters".into(),
                );
            }
            if !key_names.insert(k.name.as_str()) {
                bad(
                    &format!("{key}.name"),
                    format!("{:?} is listed twice", k.name),
                );
            }
            match parse_sha256_hex(&k.key_sha256) {
                Some(h) if !key_hashes.insert(h) => bad(
                    &format!("{key}.key_sha256"),
                    "is the hash of another key too".into(),
                ),
                Some(_) => {}
                None => bad(
                    &format!("{key}.key_sha256"),
                    "must be 64 hex digits (the SHA-256 of the key; `wss-chat gen-api-key` prints both)"
                        .into(),
                ),
            }
            if k.scopes.is_empty() {
                bad(
                    &format!("{key}.scopes"),
                    "is empty: list publish, read and/or moderate".into(),
                );
            }
        }
        if !(1..=10_000).contains(&self.api.requests_per_second) {
            bad(
                "api.requests_per_second",
                "must be between 1 and 10000".into(),
            );
        }
        if !(1..=10_000).contains(&self.api.burst) {
            bad("api.burst", "must be between 1 and 10000".into());
        }
        if !(1..=30 * 86_400).contains(&self.moderation.max_mute_s) {
            bad(
                "moderation.max_mute_s",
                "must be between 1 and 2592000".into(),
            );
        }
        if !(1..=30 * 86_400).contains(&self.moderation.kick_ban_s) {
            bad(
                "moderation.kick_ban_s",
                "must be between 1 and 2592000".into(),
            );
        }
        if h.on_join > 1000 || h.on_join > h.max_messages_per_room {
            bad(
                "history.on_join",
                "must be at most 1000 and at most history.max_messages_per_room".into(),
            );
        }

        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            bad(
                "log.level",
                format!("{:?} is not a log filter such as \"info\"", self.log.level),
            );
        }

        if p.is_empty() {
            Ok(())
        } else {
            Err(p)
        }
    }

    /// The configured users whose token is one of the published [`DEMO_TOKENS`]: (user, token).
    pub fn demo_users(&self) -> Vec<(&str, &'static str)> {
        let digest = |t: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
        self.auth
            .users
            .iter()
            .filter_map(|u| {
                let hash = parse_sha256_hex(&u.token_sha256)?;
                DEMO_TOKENS
                    .iter()
                    .find(|(_, t)| digest(t).as_ref() == hash)
                    .map(|(_, t)| (u.name.as_str(), *t))
            })
            .collect()
    }

    /// Each default this file loosens, worded for a warning at start.
    pub fn loosened(&self) -> Vec<String> {
        let d = Config::default();
        let mut w = Vec::new();
        for (user, _) in self.demo_users() {
            w.push(format!(
                "auth.users: {user} has a published demo token: anyone who read the README can log in as {user}"
            ));
        }
        match self.history.store {
            HistoryStore::Sqlite | HistoryStore::Redis => {}
            HistoryStore::Memory => {
                w.push("history.store = \"memory\": history is lost when the server stops".into())
            }
            HistoryStore::Off => w.push(
                "history.store = \"off\": nothing is kept; clients cannot resume or page".into(),
            ),
        }
        if self.history.store == HistoryStore::Sqlite
            && self.history.durability == Durability::Normal
        {
            w.push(
                "history.durability = \"normal\": acked messages may be lost on power failure"
                    .into(),
            );
        }
        if self.origins.allow_missing {
            w.push("origins.allow_missing = true: clients that send no Origin are let in".into());
        }
        if self.auth.allow_query_token {
            w.push(
                "auth.allow_query_token = true: tokens in URLs can leak through proxies and history"
                    .into(),
            );
        }
        if self.tls.generate_self_signed {
            w.push(
                "tls.generate_self_signed = true: a self-signed development certificate may be used"
                    .into(),
            );
        }
        if let Some(a) = self
            .metrics
            .listen
            .as_deref()
            .and_then(|m| m.parse::<SocketAddr>().ok())
        {
            if !a.ip().is_loopback() {
                w.push(format!(
                    "metrics.listen = {a} is not loopback: metrics are plain HTTP without auth"
                ));
            }
        }
        if self.server.echo_mode {
            w.push("server.echo_mode = true: test mode, messages are echoed, not broadcast".into());
        }
        if self.rooms.auto_create {
            w.push(format!(
                "rooms.auto_create = true: clients may create up to {} rooms",
                self.rooms.max_rooms
            ));
        }
        if self.sanitize.mode != d.sanitize.mode {
            w.push("sanitize.mode = \"basic\": some HTML formatting tags are delivered".into());
        }
        // Numeric limits: raising one above its default loosens it.
        let numbers = |c: &Config| -> [(&'static str, u64); 17] {
            let (l, s) = (&c.limits, &c.server);
            [
                ("limits.max_message_bytes", l.max_message_bytes as u64),
                ("limits.messages_per_second", l.messages_per_second.into()),
                ("limits.burst", l.burst.into()),
                ("limits.max_violations", l.max_violations.into()),
                (
                    "limits.handshakes_per_minute_per_ip",
                    l.handshakes_per_minute_per_ip.into(),
                ),
                ("limits.outbound_queue_bytes", l.outbound_queue_bytes as u64),
                ("server.max_connections", s.max_connections as u64),
                (
                    "server.max_connections_per_ip",
                    s.max_connections_per_ip as u64,
                ),
                (
                    "server.max_connections_per_user",
                    s.max_connections_per_user as u64,
                ),
                ("server.handshake_timeout_ms", s.handshake_timeout_ms),
                ("server.idle_timeout_ms", s.idle_timeout_ms),
                ("server.close_grace_ms", s.close_grace_ms),
                ("rooms.max_members", c.rooms.max_members as u64),
                ("rooms.max_rooms", c.rooms.max_rooms as u64),
                (
                    "api.requests_per_second",
                    u64::from(c.api.requests_per_second),
                ),
                ("api.burst", u64::from(c.api.burst)),
                ("moderation.max_mute_s", c.moderation.max_mute_s),
            ]
        };
        for ((name, v), (_, dv)) in numbers(self).into_iter().zip(numbers(&d)) {
            if v > dv {
                w.push(format!("{name} = {v} is above the default {dv}"));
            }
        }
        w
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .expect("validated in Config::validate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [origins]
        allowed = ["https://chat.example.com"]
        [rooms]
        names = ["lobby"]
        [[auth.users]]
        name = "alice"
        token_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    "#;

    #[test]
    fn minimal_file_gets_strict_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        c.validate().unwrap();
        assert!(c.loosened().is_empty(), "{:?}", c.loosened());
        assert_eq!(c.limits.max_message_bytes, 4096);
        assert!(!c.origins.allow_missing && !c.auth.allow_query_token);
        assert_eq!(c.sanitize.mode, SanitizeMode::Strip);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let e = Config::parse(&format!("{MINIMAL}\n[limits]\nmax_mesage_bytes = 5\n")).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "limits.max_mesage_bytes", "{e:?}");
        assert!(e[0].reason.contains("unknown field"), "{e:?}");
    }

    #[test]
    fn every_type_error_is_reported_with_its_key() {
        let text = format!(
            "{MINIMAL}\n[server]\nlisten = 8443\nmax_connections = \"many\"\n[limits]\nburst = -1\n\
             [[auth.users]]\nname = \"bob\"\n[nope]\nx = 1\n"
        );
        let e = Config::parse(&text).unwrap_err();
        let keys: Vec<_> = e.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.users[1]",
                "limits.burst",
                "nope",
                "server.listen",
                "server.max_connections"
            ],
            "{e:?}"
        );
        assert!(e[0].reason.contains("token_sha256"), "{e:?}");
        assert!(e[3].reason.contains("invalid type"), "{e:?}");
    }

    #[test]
    fn a_syntax_error_is_one_problem_with_its_line() {
        let e = Config::parse("[server]\nlisten = \n").unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "line 2", "{e:?}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let text = format!(
            "{MINIMAL}\n[server]\nlisten = \"nowhere\"\n[limits]\nburst = 0\nmax_message_bytes = 0\n"
        );
        let problems = Config::parse(&text).unwrap().validate().unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{keys:?}");
        assert!(keys.contains(&"limits.burst"), "{keys:?}");
        assert!(keys.contains(&"limits.max_message_bytes"), "{keys:?}");
    }

    #[test]
    fn batch_ms_is_bounded_and_named() {
        let with = |ms: u64| MINIMAL.replace("[rooms]\n", &format!("[rooms]\nbatch_ms = {ms}\n"));
        let c = Config::parse(&with(1000)).unwrap();
        assert_eq!(c.rooms.batch_ms, 1000);
        assert!(c.validate().is_ok());
        let problems = Config::parse(&with(1001)).unwrap().validate().unwrap_err();
        assert_eq!(problems[0].key, "rooms.batch_ms", "{problems:?}");
        assert_eq!(Config::parse(MINIMAL).unwrap().rooms.batch_ms, 20);
    }

    #[test]
    fn bad_origin_and_hash_are_named() {
        let text = MINIMAL
            .replace("https://chat.example.com", "https://chat.example.com/path")
            .replace("2cf24dba", "zz");
        let problems = Config::parse(&text).unwrap().validate().unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["origins.allowed[0]", "auth.users[0].token_sha256"]);
    }

    #[test]
    fn echo_mode_refused_off_loopback() {
        let text = format!("{MINIMAL}\n[server]\nlisten = \"0.0.0.0:8443\"\necho_mode = true\n");
        let problems = Config::parse(&text).unwrap().validate().unwrap_err();
        assert_eq!(problems[0].key, "server.echo_mode");
    }

    #[test]
    fn api_keys_and_moderation_are_checked_by_key() {
        let text = format!(
            "{MINIMAL}\n[api]\nburst = 0\n[[api.keys]]\nname = \"a\\nb\"\nkey_sha256 = \"zz\"\nscopes = []\n\
             [moderation]\nkick_ban_s = 0\n"
        );
        let problems = Config::parse(&text).unwrap().validate().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "api.keys[0].name",
            "api.keys[0].key_sha256",
            "api.keys[0].scopes",
            "api.burst",
            "moderation.kick_ban_s",
        ] {
            assert!(keys.contains(&k), "{k} not reported: {problems:?}");
        }
        let bad_scope = format!(
            "{MINIMAL}\n[[api.keys]]\nname = \"x\"\nkey_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
            "0".repeat(64)
        );
        assert!(Config::parse(&bad_scope).is_err());
        let bad_role = format!("{MINIMAL}\n[[auth.users]]\nname = \"x\"\ntoken_sha256 = \"{}\"\nroles = {{ lobby = \"owner\" }}\n", "0".repeat(64));
        assert!(Config::parse(&bad_role).is_err());
    }

    #[test]
    fn loosening_is_reported() {
        let text = format!("{MINIMAL}\n[limits]\nburst = 50\n");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.loosened(), ["limits.burst = 50 is above the default 10"]);
    }
}
