//! The command line: parse arguments, set up logging, and hand over to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use wss_chat::config::Config;

#[derive(Parser)]
#[command(
    name = "wss-chat",
    version,
    about = "A secure WebSocket (wss://) chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    ///
    /// Example: wss-chat serve --config /etc/wss-chat/config.toml
    Serve {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every problem and exit 2.
    ///
    /// Example: wss-chat check-config --config config.toml
    CheckConfig {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Write a self-signed development certificate and key (not for production).
    ///
    /// Example: wss-chat gen-cert --host localhost --host 127.0.0.1
    GenCert {
        /// DNS names or IP addresses the certificate is for.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value = "certs/dev-cert.pem")]
        cert: PathBuf,
        #[arg(long, default_value = "certs/dev-key.pem")]
        key: PathBuf,
        /// Replace the files when they exist (refused otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Read a token on stdin and print the config line holding its SHA-256.
    ///
    /// Example: printf '%s' "$TOKEN" | wss-chat hash-token
    HashToken,
    /// Make a random API key and print it with the config lines for it.
    ///
    /// Example: wss-chat gen-api-key --name orders --scopes publish,read
    GenApiKey {
        /// The key's name: shown as the sender of what it posts, and in logs.
        #[arg(long)]
        name: String,
        /// publish, read and/or moderate.
        #[arg(long, value_delimiter = ',', default_value = "publish")]
        scopes: Vec<String>,
    },
    /// Mint a signed token with the secret the config names.
    ///
    /// Example: wss-chat token --user alice --rooms lobby,ops --ttl 1h
    Token {
        #[arg(long, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        user: String,
        /// Comma-separated rooms the token may join; all rooms when omitted.
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Roles by room, e.g. lobby=moderator,news=reader; member where not named.
        #[arg(long, value_delimiter = ',', value_parser = parse_role)]
        roles: Option<Vec<(String, wss_chat::roles::Role)>>,
        /// Lifetime: a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
}

fn parse_role(s: &str) -> Result<(String, wss_chat::roles::Role), String> {
    let (room, role) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ROOM=ROLE, e.g. lobby=moderator"))?;
    if !wss_chat::protocol::valid_room_name(room) {
        return Err(format!(
            "{room:?} is not a room name (1 to 64 of A-Z a-z 0-9 _ . -)"
        ));
    }
    let role = serde_json::from_value(serde_json::Value::String(role.into()))
        .map_err(|_| format!("{role:?}: a role is reader, member or moderator"))?;
    Ok((room.to_string(), role))
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 30m, 1h, 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: expected e.g. 30m, 1h, 7d")),
    };
    Ok(n * mult)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        config: "config.toml".into(),
    }) {
        Command::Serve { config } => serve(&config),
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                for w in c.loosened() {
                    println!("warning: loosened default: {w}");
                }
                if c.history.store == wss_chat::config::HistoryStore::Redis {
                    println!(
                        "note: with Redis, these stay per node (each node enforces its own): \
                         limits.* (rates per connection and user), server.max_connections, \
                         server.max_connections_per_ip, server.max_connections_per_user, \
                         rooms.max_members, rooms.max_rooms"
                    );
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::GenCert {
            hosts,
            cert,
            key,
            force,
        } => match wss_chat::tls::write_self_signed(&cert, &key, &hosts, force) {
            Ok(created) => {
                for what in created {
                    eprintln!("created {what}");
                }
                eprintln!("self-signed: for development only; clients must be told to trust it");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::HashToken => hash_token(),
        Command::GenApiKey { name, scopes } => gen_api_key(&name, &scopes),
        Command::Token {
            config,
            user,
            rooms,
            roles,
            ttl,
        } => mint(&config, user, rooms, roles, ttl),
    }
}

/// Load, validate and preflight a config; every failure is printed and exits 2.
fn load(path: &Path) -> Result<Config, ExitCode> {
    let config = Config::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(2)
    })?;
    wss_chat::preflight(&config).map_err(|e| {
        eprintln!("invalid config {}:\n  {e}", path.display());
        ExitCode::from(2)
    })?;
    Ok(config)
}

fn serve(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.log.format {
        wss_chat::config::LogFormat::Text => logs.init(),
        wss_chat::config::LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A broadcast wakes a writer per member, more than a worker's local run queue (256)
        // holds; the rest spill to the global queue, which by default is checked only every
        // 61 tasks, so those writers fall behind later messages. Checking it more often keeps
        // fan-out order fair and the latency tail short.
        .global_queue_interval(8)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(wss_chat::metrics::Metrics::new());
    // Opened inside the runtime, so the store's writer hands its deliveries to a task on it
    // (sqlite.rs, `settler`).
    let opened = {
        let _inside = runtime.enter();
        wss_chat::open_store(&config, &metrics)
    };
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot open the history store: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(wss_chat::run(
        config,
        store,
        metrics,
        shutdown_signal(),
        |_| {},
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn mint(
    path: &Path,
    user: String,
    rooms: Option<Vec<String>>,
    roles: Option<Vec<(String, wss_chat::roles::Role)>>,
    ttl: u64,
) -> ExitCode {
    // The same rules the server applies, so a minted token is never one it would refuse.
    if !wss_chat::protocol::valid_user_name(&user) {
        eprintln!(
            "error: --user {user:?}: a user name is 1 to 64 bytes without control characters"
        );
        return ExitCode::from(2);
    }
    if let Some(bad) = rooms
        .iter()
        .flatten()
        .find(|r| !wss_chat::protocol::valid_room_name(r))
    {
        eprintln!("error: --rooms: {bad:?} is not a room name (1 to 64 of A-Z a-z 0-9 _ . -)");
        return ExitCode::from(2);
    }
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let secret = match config.auth.load_secret(&config.base_dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "error: the config sets neither auth.jwt_secret_file nor auth.jwt_secret_env"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let claims = wss_chat::auth::Claims {
        sub: user,
        exp: jsonwebtoken::get_current_timestamp() + ttl,
        nbf: None,
        rooms,
        roles: roles.map(|r| r.into_iter().collect()),
    };
    println!("{}", wss_chat::auth::mint(&secret, &claims));
    ExitCode::SUCCESS
}

/// 32 random bytes as 64 hex digits, prefixed so a leaked key is recognisable in a scan.
fn gen_api_key(name: &str, scopes: &[String]) -> ExitCode {
    if !wss_chat::protocol::valid_user_name(name) {
        eprintln!("error: --name {name:?}: 1 to 64 characters without control characters");
        return ExitCode::from(2);
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !["publish", "read", "moderate"].contains(&s.as_str()))
    {
        eprintln!("error: --scopes: {bad:?} is not publish, read or moderate");
        return ExitCode::from(2);
    }
    let mut bytes = [0u8; 32];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        eprintln!("error: no randomness available");
        return ExitCode::FAILURE;
    }
    let key = format!(
        "wsc_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let scopes = scopes
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("# The key: give it to the back end (Authorization: Bearer KEY); it is not stored.");
    println!("# {key}");
    println!("[[api.keys]]");
    println!("name = {name:?}");
    println!(
        "key_sha256 = \"{}\"",
        wss_chat::auth::sha256_hex(key.as_bytes())
    );
    println!("scopes = [{scopes}]");
    ExitCode::SUCCESS
}

/// Read one token on stdin and print its config line. A token must be usable in every carrier
/// the server reads, the subprotocol list included, so only RFC 7230 token characters pass.
fn hash_token() -> ExitCode {
    use std::io::BufRead;
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_until(b'\n', &mut raw) {
        eprintln!("error: cannot read standard input: {e}");
        return ExitCode::FAILURE;
    }
    let Ok(line) = String::from_utf8(raw) else {
        eprintln!("error: the token on standard input is not UTF-8 text (tokens are ASCII)");
        return ExitCode::from(2);
    };
    let token = line.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        eprintln!("error: give the token on standard input, e.g. printf '%s' \"$TOKEN\" | wss-chat hash-token");
        return ExitCode::from(2);
    }
    if !wss_chat::protocol::valid_token(token) {
        eprintln!(
            "error: a token may hold only letters, digits and !#$%&'*+-.^_`|~ (no spaces or \
             other characters), so that it fits in a WebSocket subprotocol; choose another"
        );
        return ExitCode::from(2);
    }
    println!(
        "token_sha256 = \"{}\"",
        wss_chat::auth::sha256_hex(token.as_bytes())
    );
    ExitCode::SUCCESS
}
