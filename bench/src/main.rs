//! loadgen: drives a running wss-chat (or a peer server) over real TLS WebSockets, the way real
//! clients do (Origin, token), and prints what it measured. Not part of the server binary.
//!
//! `soak` holds thousands of connections for minutes with traffic and churn and checks that
//! healthy clients lose nothing. See scripts/soak.sh for the whole run.

mod bench;
mod cluster_soak;
mod soak;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for wss-chat")]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args)]
struct TargetArgs {
    /// Server address (IP:port).
    #[arg(long)]
    addr: SocketAddr,
    /// More nodes of the same cluster: client `i` connects to the `i mod n`-th of all of them.
    #[arg(long, value_delimiter = ',')]
    also: Vec<SocketAddr>,
    /// Name to verify the certificate against (and to send as SNI).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// PEM CA certificate to trust.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// File holding the server's HS256 secret, to mint a token per simulated user.
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "https://localhost")]
    origin: String,
    /// Server process id, to sample its RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Spread client connections over this many loopback source addresses (127.0.1.0 up).
    #[arg(long, default_value_t = 1)]
    source_ips: u32,
    /// Send this static token instead of minting a signed one per user (for peer servers).
    #[arg(long)]
    token: Option<String>,
    /// In full handshakes offer only X25519, as clients without post-quantum key exchange do
    /// (by default rustls offers X25519MLKEM768 first, which costs the server an ML-KEM step).
    #[arg(long)]
    classic_kx: bool,
    /// Offer TLS 1.3 suites in browsers' order (AES-128-GCM/SHA-256 first) rather than
    /// rustls's (AES-256-GCM/SHA-384 first); the server picks by the client's order.
    #[arg(long)]
    browser_suites: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Hold many connections for a long time with traffic, joins, leaves and deaths mid-frame.
    Soak(soak::Args),
    /// Many nodes on one Redis: clients spread over the nodes resume wherever they can while
    /// nodes and Redis are killed; count acked, delivered, lost and duplicated messages.
    ClusterSoak(cluster_soak::Args),
    /// Broadcast at a fixed open-loop rate; latency from the intended send time.
    Broadcast(bench::BroadcastArgs),
    /// Step the rate up until p99 > 250 ms or deliveries < 90 %; report the last passing rate.
    Saturate(bench::SaturateArgs),
    /// Server RSS growth per idle connection.
    Idle(bench::IdleArgs),
    /// Full TLS 1.3 handshakes (no resumption) + upgrade + token check per second.
    Handshakes(bench::HandshakeArgs),
    /// Direct messages: many rooms of two at a total open-loop rate.
    Direct(bench::DirectArgs),
    /// Broadcast while clients keep joining and leaving the room (presence churn).
    Churn(bench::ChurnArgs),
}

/// Where and how to connect; shared by every simulated client.
pub struct Target {
    addr: SocketAddr,
    also: Vec<SocketAddr>,
    host: ServerName<'static>,
    origin: String,
    connector: TlsConnector,
    /// TLS 1.3 only and no session cache: every handshake is a full one.
    fresh_connector: TlsConnector,
    secret: Vec<u8>,
    token: Option<String>,
    source_ips: u32,
    pub server_pid: Option<u32>,
}

impl Target {
    fn new(a: &TargetArgs) -> Result<Arc<Target>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&a.ca).map_err(|e| format!("--ca: {e}"))? {
            roots
                .add(c.map_err(|e| format!("--ca: {e}"))?)
                .map_err(|e| format!("--ca: {e}"))?;
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if a.classic_kx {
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        }
        if a.browser_suites {
            use rustls::crypto::aws_lc_rs::cipher_suite as cs;
            provider.cipher_suites = vec![
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
            ];
        }
        let mut fresh = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        fresh.resumption = rustls::client::Resumption::disabled();
        let secret = match &a.secret_file {
            Some(f) => std::fs::read(f)
                .map_err(|e| format!("--secret-file: {e}"))?
                .trim_ascii()
                .to_vec(),
            None if a.token.is_some() => Vec::new(),
            None => return Err("give --secret-file or --token".into()),
        };
        Ok(Arc::new(Target {
            addr: a.addr,
            also: a.also.clone(),
            host: ServerName::try_from(a.host.clone()).map_err(|e| format!("--host: {e}"))?,
            origin: a.origin.clone(),
            connector: TlsConnector::from(Arc::new(cfg)),
            fresh_connector: TlsConnector::from(Arc::new(fresh)),
            secret,
            token: a.token.clone(),
            source_ips: a.source_ips.max(1),
            server_pid: a.server_pid,
        }))
    }

    /// The loopback source address for client number `i`.
    fn source(&self, i: usize) -> IpAddr {
        let n = (i as u32) % self.source_ips;
        IpAddr::from([127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8])
    }

    /// Connect client `i` as `user` to `room`: TCP from its source address, TLS, upgrade.
    pub async fn connect(&self, i: usize, user: &str, room: &str) -> Result<Ws, String> {
        self.connect_with(&self.connector, i, user, room).await
    }

    /// Like `connect`, with a full TLS 1.3 handshake (no resumption).
    pub async fn connect_fresh(&self, i: usize, user: &str, room: &str) -> Result<Ws, String> {
        self.connect_with(&self.fresh_connector, i, user, room)
            .await
    }

    async fn connect_with(
        &self,
        connector: &TlsConnector,
        i: usize,
        user: &str,
        room: &str,
    ) -> Result<Ws, String> {
        let addr = match i % (1 + self.also.len()) {
            0 => self.addr,
            k => self.also[k - 1],
        };
        self.connect_at(connector, addr, i, user, room).await
    }

    /// Connect to `addr` (another node of a cluster) with `path` = `ROOM[?QUERY]`.
    pub async fn connect_node(
        &self,
        addr: SocketAddr,
        i: usize,
        user: &str,
        path: &str,
    ) -> Result<Ws, String> {
        self.connect_at(&self.connector, addr, i, user, path).await
    }

    async fn connect_at(
        &self,
        connector: &TlsConnector,
        addr: SocketAddr,
        i: usize,
        user: &str,
        room: &str,
    ) -> Result<Ws, String> {
        let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        sock.bind(SocketAddr::new(self.source(i), 0))
            .map_err(|e| format!("bind: {e}"))?;
        let tcp = sock
            .connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = connector
            .connect(self.host.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                wss_chat::auth::mint(
                    &self.secret,
                    &wss_chat::auth::Claims {
                        sub: user.to_string(),
                        exp: now + 86_400,
                        nbf: None,
                        rooms: None,
                        roles: None,
                    },
                )
            }
        };
        let mut req = format!("wss://localhost:{}/rooms/{room}", addr.port())
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        h.insert("Origin", self.origin.parse().unwrap());
        h.insert("Authorization", format!("Bearer {token}").parse().unwrap());
        // tungstenite zeroes a whole read chunk before every read, the last one that finds
        // nothing included: at 4 KiB that memset was 38 % of the load generator's instructions
        // (bench/count.sh WHO=loadgen). A chat frame is ~200 bytes; bigger ones take more reads.
        let cfg = WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(cfg))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok(ws)
    }
}

/// The machine around a measurement: what the host took from this VM's CPUs (steal) and what
/// the load generator itself used. Both make a run's figures worth less: steal slows the
/// server without showing in its CPU time (on these VMs it reached 30-47 % in some runs), and a
/// load generator near a full core adds its own queueing to every latency it reports.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    steal: u64,
    total: u64,
    cpus: u64,
    own_us: u64,
}

/// `Machine::since`'s readings, in percent.
#[derive(Debug, Clone, Copy)]
pub struct MachineUse {
    /// Steal over all CPUs, as a share of their time.
    pub steal_pct: f64,
    /// The load generator's CPU, as a share of one core's time over the same interval.
    pub loadgen_pct: f64,
    /// The load generator's CPU over the interval, in microseconds.
    pub loadgen_us: u64,
}

impl MachineUse {
    /// The load generator's CPU per delivery, in microseconds.
    pub fn loadgen_us_per(&self, delivered: u64) -> f64 {
        self.loadgen_us as f64 / delivered.max(1) as f64
    }
}

impl Machine {
    pub fn now() -> Option<Machine> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // "cpu  user nice system idle iowait irq softirq steal ...": the sum over all CPUs.
        let f: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // Every online CPU, not this process's affinity (the load generator runs on one).
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u64;
        Some(Machine {
            steal: *f.get(7)?,
            total: f.iter().sum(),
            cpus: cpus.max(1),
            own_us: cpu_us(std::process::id())?,
        })
    }

    pub fn since(&self) -> Option<MachineUse> {
        let now = Machine::now()?;
        let total = now.total.checked_sub(self.total).filter(|&t| t > 0)?;
        // Jiffies are 10 ms (USER_HZ 100): the interval in microseconds, per CPU.
        let wall_us = total as f64 * 10_000.0 / self.cpus as f64;
        Some(MachineUse {
            steal_pct: 100.0 * now.steal.saturating_sub(self.steal) as f64 / total as f64,
            loadgen_pct: 100.0 * now.own_us.saturating_sub(self.own_us) as f64 / wall_us,
            loadgen_us: now.own_us.saturating_sub(self.own_us),
        })
    }
}

/// A process's CPU time (user + system) in microseconds, from /proc.
pub fn cpu_us(pid: u32) -> Option<u64> {
    cpu_split_us(pid).map(|(user, system)| user + system)
}

/// A process's CPU time in user space and in the kernel, in microseconds, from /proc. The
/// kernel's part of a delivery (the write, and on loopback the receiver's TCP path too) is
/// the same for every server; the user part is where servers differ.
pub fn cpu_split_us(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name; utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = f.get(11)?.parse().ok()?;
    let system: u64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((user * 10_000, system * 10_000))
}

/// A process's resident memory in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let target = match Target::new(&cli.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let ok = match cli.mode {
        Mode::Soak(args) => soak::run(target, args).await,
        Mode::ClusterSoak(args) => cluster_soak::run(target, args).await,
        Mode::Broadcast(args) => bench::broadcast(target, args).await,
        Mode::Saturate(args) => bench::saturate(target, args).await,
        Mode::Idle(args) => bench::idle(target, args).await,
        Mode::Handshakes(args) => bench::handshakes(target, args).await,
        Mode::Direct(args) => bench::direct(target, args).await,
        Mode::Churn(args) => bench::churn(target, args).await,
    };
    std::process::exit(if ok { 0 } else { 1 });
}
