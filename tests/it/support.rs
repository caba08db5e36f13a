//! Starts the real `wss-chat` binary on an ephemeral port with a temporary config and a test
//! CA, captures its log, and provides verifying TLS clients: a WebSocket client for the
//! protocol, and a raw TLS socket for what a well-behaved client would never send.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
pub use wss_chat::config::{Config, HistoryStore, LogFormat, SanitizeMode, StaticUser, TlsProfile};

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

pub const ORIGIN: &str = "https://chat.example.com";
pub const JWT_SECRET: &str = "test-secret-0123456789abcdef0123456789";
/// Static users: (name, token). dave may only join "other".
pub const USERS: [(&str, &str); 4] = [
    ("alice", "alice-token-1"),
    ("bob", "bob-token-2"),
    ("carol", "carol-token-3"),
    ("dave", "dave-token-4"),
];

pub fn token(user: &str) -> &'static str {
    USERS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// A CA and a leaf for localhost/127.0.0.1 signed by it, made fresh for each server.
pub struct TestCa {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub leaf_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wss-chat test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        TestCa {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    /// The CA the client trusts; a test may swap it after a certificate reload.
    pub trusted_ca: CertificateDer<'static>,
    /// Holds the config, certificate and secret for as long as the server runs.
    _dir: tempfile::TempDir,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config every test starts from: the server's own [`Config`] struct with the strict
/// defaults, plus the test users, rooms and origins, and rates generous enough that tests not
/// about rates never trip them. A test changes fields of it, so a renamed key fails to compile
/// instead of silently testing the default.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.tls.cert = "cert.pem".into();
    c.tls.key = "key.pem".into();
    c.origins.allowed = vec![ORIGIN.into(), "https://*.corp.example.com".into()];
    c.auth.jwt_secret_file = Some("jwt-secret".into());
    c.auth.users = USERS
        .iter()
        .map(|(name, tok)| StaticUser {
            name: name.to_string(),
            token_sha256: wss_chat::auth::sha256_hex(tok.as_bytes()),
            rooms: (*name == "dave").then(|| vec!["other".to_string()]),
            roles: None,
        })
        .collect();
    c.rooms.names = vec!["lobby".into(), "other".into(), "secret".into()];
    c.limits.messages_per_second = 1000;
    c.limits.burst = 1000;
    c.limits.handshakes_per_minute_per_ip = 10_000;
    c.log.level = "debug".into();
    // Most tests are about live delivery, where a backlog on join would only be noise;
    // history.rs runs the default store (SQLite in the server's temp dir).
    c.history.store = HistoryStore::Off;
    // Likewise join/leave frames; presence.rs turns them on.
    c.presence.enabled = false;
    c
}

/// `config` as the TOML file the server reads.
pub fn config_toml(config: &Config) -> String {
    toml::to_string(config).expect("a Config serialises")
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(|_| {})
    }

    /// Start on [`test_config`] as changed by `change`.
    pub fn start_with(change: impl FnOnce(&mut Config)) -> Server {
        let mut c = test_config();
        change(&mut c);
        Server::start_config(&config_toml(&c))
    }

    /// Start the binary on `config` (written to config.toml beside a fresh cert and secret).
    pub fn start_config(config: &str) -> Server {
        let (dir, ca) = server_dir(config);
        let cfg_path = dir.path().join("config.toml");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = spawn(&cfg_path, &log);
        Server {
            addr,
            trusted_ca: ca.ca_der.clone(),
            _dir: dir,
            child,
            log,
        }
    }

    /// Kill the process and start it again on the same config (and so the same port, when
    /// the config names one); the log goes on in the same buffer.
    pub fn restart(&mut self) {
        self.kill();
        self.respawn();
    }

    /// SIGKILL the process (kill -9) and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the process again on the same config, after [`Server::kill`].
    pub fn respawn(&mut self) {
        let (child, addr) = spawn(&self.path("config.toml"), &self.log);
        self.child = child;
        self.addr = addr;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A file in the server's directory (config.toml, cert.pem, key.pem).
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self._dir.path().join(name)
    }

    /// Send a signal (TERM, HUP, ...) to the server process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Wait up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait up to 5 s for a log line containing `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        for _ in 0..250 {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no log line with {needle:?}: {:#?}", self.log());
    }

    /// The server's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.trusted_ca.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(cfg))
    }

    /// A TLS connection that verified the server's certificate against the test CA.
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        self.try_tls(tcp).await.unwrap()
    }

    /// TLS over a given TCP stream; `Err` when the handshake fails.
    pub async fn try_tls(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector()
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// A TCP connection from a chosen loopback source address, with an optional small
    /// receive buffer (to make a slow reader's socket fill quickly).
    pub async fn tcp_from(&self, src: &str, recv_buf: Option<u32>) -> TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buf {
            sock.set_recv_buffer_size(n).unwrap();
        }
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        sock.connect(self.addr).await.unwrap()
    }

    /// Join over a given TCP stream (see `tcp_from`), after the welcome.
    pub async fn join_over(&self, tcp: TcpStream, user: &str, room: &str) -> Ws {
        let tls = self.try_tls(tcp).await.unwrap();
        self.join_over_tls(tls, user, room).await
    }

    /// Join over a TLS connection made by the caller (see `connector`), after the welcome.
    pub async fn join_over_tls(&self, tls: TlsStream<TcpStream>, user: &str, room: &str) -> Ws {
        let mut req = format!("wss://localhost:{}/rooms/{room}", self.addr.port())
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("Origin", ORIGIN.parse().unwrap());
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", token(user)).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        assert_eq!(recv_json(&mut ws).await["type"], "welcome");
        ws
    }

    /// Upgrade with the given headers; `Err` is the refusal's HTTP status.
    pub async fn upgrade(&self, path: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
        self.upgrade_full(path, headers).await.map(|(ws, _)| ws)
    }

    /// Like `upgrade`, also returning the 101's headers.
    pub async fn upgrade_full(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, tungstenite::handshake::client::Response), u16> {
        let mut req = format!("wss://localhost:{}{path}", self.addr.port())
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let tls = self.tls().await;
        match tokio_tungstenite::client_async(req, tls).await {
            Ok(x) => Ok(x),
            Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("handshake failed without an HTTP status: {e}"),
        }
    }

    /// Join `path` (`ROOM` or `ROOM?QUERY`) as `user` with the browser-like Origin: the
    /// socket after its welcome, and the welcome; `Err` is the refusal's HTTP status.
    pub async fn try_enter(&self, user: &str, path: &str) -> Result<(Ws, Value), u16> {
        let auth = format!("Bearer {}", token(user));
        let mut ws = self
            .upgrade(
                &format!("/rooms/{path}"),
                &[("Origin", ORIGIN), ("Authorization", &auth)],
            )
            .await?;
        let welcome = recv_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        Ok((ws, welcome))
    }

    /// Like `try_enter`; a refusal fails the test.
    pub async fn enter(&self, user: &str, path: &str) -> (Ws, Value) {
        self.try_enter(user, path)
            .await
            .unwrap_or_else(|s| panic!("{user} could not join {path}: HTTP {s}"))
    }

    /// Join `room` as `user`; returns the socket after its welcome.
    pub async fn join(&self, user: &str, room: &str) -> Ws {
        let (ws, welcome) = self.enter(user, room).await;
        assert_eq!(welcome["user"], user);
        assert_eq!(welcome["room"], room);
        ws
    }

    /// Send one raw HTTP/1.1 request over TLS; returns the whole response as text.
    pub async fn https_raw(&self, request: &[u8]) -> String {
        let mut tls = self.tls().await;
        // The server may answer and hang up before a huge request is fully written.
        let _ = tls.write_all(request).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// A temp dir with `config` as config.toml beside a fresh certificate (cert.pem, key.pem,
/// ca.pem) and the JWT secret.
pub fn server_dir(config: &str) -> (tempfile::TempDir, TestCa) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("cert.pem"), &ca.leaf_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.ca_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &ca.key_pem).unwrap();
    std::fs::write(dir.path().join("jwt-secret"), JWT_SECRET).unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    (dir, ca)
}

/// Start the binary on a config file; returns it once it logs its address.
fn spawn(cfg_path: &std::path::Path, log: &Arc<Mutex<Vec<String>>>) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wss-chat"))
        .args(["serve", "--config"])
        .arg(cfg_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("listening on ") {
                // Text or JSON log: the address is the run of address characters after it.
                let addr: String = line[i + 13..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                    .collect();
                let _ = tx.send(addr);
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(a) => (child, a.parse().unwrap()),
        Err(_) => {
            let _ = child.kill();
            panic!("server did not start: {:?}", log.lock().unwrap());
        }
    }
}

/// Run `cmd` (the binary, or a wrapper of it) as `COMMAND --config DIR/config.toml`: its exit
/// code and stderr.
pub fn run_bin(mut cmd: Command, command: &str, dir: &std::path::Path) -> (Option<i32>, String) {
    let out = cmd
        .args([command, "--config"])
        .arg(dir.join("config.toml"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The server binary, for command-line tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wss-chat"))
}

/// A free loopback port (bound and released; a test that needs a fixed port uses it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mint_jwt(sub: &str, exp_offset: i64, rooms: Option<Vec<&str>>, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    wss_chat::auth::mint(
        secret.as_bytes(),
        &wss_chat::auth::Claims {
            sub: sub.into(),
            exp: (now + exp_offset) as u64,
            nbf: None,
            rooms: rooms.map(|r| r.into_iter().map(String::from).collect()),
            roles: None,
        },
    )
}

/// The next data frame as JSON; fails the test after 5 s or on a close.
/// A server whose outboxes hold 64 KiB and whose rate limits are out of the way (plus
/// `change`), and "dave" in room "other" over a 4 KiB receive window, not reading: a slow
/// consumer once the room is busy.
pub async fn with_slow_reader(change: impl FnOnce(&mut Config)) -> (Server, Ws) {
    let s = Server::start_with(|c| {
        c.limits.outbound_queue_bytes = 64 * 1024;
        c.limits.messages_per_second = 100_000;
        c.limits.burst = 100_000;
        change(c);
    });
    let slow = s
        .join_over(s.tcp_from("127.0.0.1", Some(4096)).await, "dave", "other")
        .await;
    (s, slow)
}

pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("read error");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next frame that is not a chat message (acks, errors, moderation, presence...).
pub async fn next_non_message(ws: &mut Ws) -> Value {
    loop {
        let v = recv_json(ws).await;
        if v["type"] != "message" {
            return v;
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

pub async fn say(ws: &mut Ws, text: &str) {
    send_json(ws, serde_json::json!({"type": "message", "text": text})).await;
}

/// Read until the server's Close frame and return its code; data frames before it are skipped.
pub async fn expect_close(ws: &mut Ws) -> CloseCode {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timed out waiting for a close frame");
        match next {
            Some(Ok(Message::Close(Some(f)))) => return f.code,
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection ended without a close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Say a unique marker into `room` from a new connection (kept open by the caller). Whatever
/// the test already did was processed before it, so a frame that must not arrive would be
/// delivered before the marker: silence is proven by order, not by a timeout.
pub async fn send_marker(s: &Server, room: &str) -> (String, Ws) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let marker = format!(
        "marker-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut ws = s.join("carol", room).await;
    say(&mut ws, &marker).await;
    (marker, ws)
}

/// The next text frame on `ws` is `marker`: nothing else arrived before it.
pub async fn expect_marker_next(ws: &mut Ws, marker: &str) {
    let m = recv_json(ws).await;
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str()),
        (Some("message"), Some(marker)),
        "expected only the marker, got {m}"
    );
}

/// Nothing reached `ws` (a member of `room`) before a marker said now.
pub async fn expect_nothing_more(s: &Server, ws: &mut Ws, room: &str) {
    let (marker, _marker_ws) = send_marker(s, room).await;
    expect_marker_next(ws, &marker).await;
}

/// The code of the last Close frame in a stream of unmasked server frames read raw.
pub fn last_close_code(mut bytes: &[u8]) -> Option<u16> {
    let mut code = None;
    while bytes.len() >= 2 {
        let (op, len7) = (bytes[0] & 0x0f, (bytes[1] & 0x7f) as usize);
        let (len, head) = match len7 {
            126 => (
                u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes.get(2..10)?.try_into().unwrap()) as usize,
                10,
            ),
            n => (n, 2),
        };
        let Some(payload) = bytes.get(head..head + len) else {
            break;
        };
        if op == 0x8 && len >= 2 {
            code = Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
        bytes = &bytes[head + len..];
    }
    code
}

/// A masked client frame with the given first byte (FIN, RSV, opcode) and payload.
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A real `redis-server` (the Debian package) on a free loopback port, with a password and
/// its own temp dir; stopped when dropped.
pub struct Redis {
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        assert!(
            std::path::Path::new("/usr/bin/redis-server").exists(),
            "the cluster tests need redis-server: apt-get install -y redis-server (scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let password = "redis-test-password-4f1c9a".to_string();
        std::fs::write(dir.path().join("password"), &password).unwrap();
        let port = free_port();
        let child = Redis::spawn(port, &password, dir.path());
        let r = Redis {
            port,
            password,
            dir,
            child,
        };
        r.wait_ready();
        r
    }

    /// As the README advises: every write in the append-only file before it is answered.
    fn spawn(port: u16, password: &str, dir: &std::path::Path) -> Child {
        Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--requirepass", password, "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn wait_ready(&self) {
        for _ in 0..250 {
            if self.connection().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// A redis-server that speaks only TLS (`rediss://localhost:PORT`), with a certificate from
    /// a fresh test CA, whose PEM is at [`Redis::ca_file`].
    pub fn start_tls() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let password = "redis-tls-password-77d2".to_string();
        std::fs::write(dir.path().join("password"), &password).unwrap();
        let ca = TestCa::new();
        for (name, pem) in [
            ("cert.pem", &ca.leaf_pem),
            ("key.pem", &ca.key_pem),
            ("ca.pem", &ca.ca_pem),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        let port = free_port();
        let d = dir.path();
        let child = Command::new("/usr/bin/redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--requirepass",
                &password,
                "--save",
                "",
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(d.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(d.join("key.pem"))
            .arg("--tls-ca-cert-file")
            .arg(d.join("ca.pem"))
            .arg("--dir")
            .arg(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned at once, so a failed start still stops and reaps it (Drop).
        let r = Redis {
            port,
            password,
            dir,
            child,
        };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server (TLS) did not start on port {port}");
    }

    /// The CA that signed a TLS Redis's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Stop it (SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port, with its data unless `wipe`.
    pub fn start_again(&mut self, wipe: bool) {
        if wipe {
            let _ = std::fs::remove_dir_all(self.dir.path().join("appendonlydir"));
        }
        self.child = Redis::spawn(self.port, &self.password, self.dir.path());
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The file a node reads the password from.
    pub fn password_file(&self) -> std::path::PathBuf {
        self.dir.path().join("password")
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::open(format!(
            "redis://:{}@127.0.0.1:{}",
            self.password, self.port
        ))?;
        let mut con = c.get_connection_with_timeout(Duration::from_secs(1))?;
        redis::cmd("PING").query::<String>(&mut con)?;
        Ok(con)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
