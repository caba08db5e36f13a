//! The `tls_records` property and the TLS client the record-layer tests share: a handshake
//! made by rustls's client, after which the client's traffic keys are taken out so that any
//! record can be written (forged, flipped, truncated, oversized, of any inner content type) and
//! everything the server sends back can be read record by record, alerts included.
//!
//! The property runs the same operations against `wss_chat::tls_io` and against rustls's
//! buffered `ServerConnection` (through tokio-rustls), both over an in-memory pipe with the
//! same `ServerConfig`, and requires the two to answer alike: the same data echoed, the same
//! alerts, nothing after a fatal alert, and the same end of stream. The session tickets are
//! left out of the comparison: tls_io holds them for its first write (by design), stock rustls
//! sends them at once.

use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, ConnectionTrafficSecrets, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use wss_chat::tls_io::{Accepted, TlsStream};

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
/// The largest record body a peer may send: 2^14 + 256 in TLS 1.3 (2^14 + 2048 in 1.2).
pub const MAX_CIPHERTEXT_13: usize = (1 << 14) + 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

/// One thing the client does after the handshake.
#[derive(Clone, Debug)]
pub enum Op {
    /// A valid application_data record carrying these bytes (the server echoes them).
    Data(Vec<u8>),
    /// An application_data record header followed by this body (which fails to decrypt).
    Forged(Vec<u8>),
    /// A valid record of this many bytes with one bit flipped at `at` (modulo its length).
    Flip { len: usize, at: usize, bit: u8 },
    /// A valid record of this many bytes, its last `cut` bytes not sent.
    Truncated { len: usize, cut: usize },
    /// A record header announcing `MAX_CIPHERTEXT_13 + extra` body bytes, then `sent` of them.
    Oversized { extra: usize, sent: usize },
    /// Bytes written as they are.
    Raw(Vec<u8>),
    /// TLS 1.3: a record whose decrypted content is this many zero bytes (no content type);
    /// TLS 1.2: a record of content type 0.
    ZeroInner(usize),
    /// A valid record of this content type and payload.
    Inner { typ: u8, payload: Vec<u8> },
    /// A valid application_data record of `len` bytes followed, in TLS 1.3, by `pad` zero
    /// bytes of padding inside the encryption (TLS 1.2: `len + pad` bytes of data).
    Padded { len: usize, pad: usize },
    /// The client's close_notify.
    CloseNotify,
    /// From now on, writes reach the server in pieces of this many bytes.
    Chunk(usize),
    /// The client ends its side of the TCP stream.
    Eof,
}

/// What the server sent, one entry per record (data merged by [`Outcome::compared`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Data(Vec<u8>),
    Alert {
        level: u8,
        description: u8,
    },
    /// A handshake message after the handshake: a session ticket.
    Handshake,
    /// A record that decrypted to some other content type.
    Other {
        typ: u8,
        len: usize,
    },
    /// A record the client's keys do not open (a replayed sequence number, say).
    Undecryptable {
        typ: u8,
        len: usize,
    },
    /// Bytes at the end that are not a whole record.
    Partial(usize),
}

/// Everything the server said after the handshake, and whether it closed the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub seen: Vec<Seen>,
    pub closed: bool,
}

impl Outcome {
    /// What two servers must agree on: tickets left out, echoed data joined across records.
    pub fn compared(&self) -> Outcome {
        let mut seen: Vec<Seen> = Vec::new();
        for s in &self.seen {
            match (s, seen.last_mut()) {
                (Seen::Handshake, _) => {}
                (Seen::Data(d), Some(Seen::Data(prev))) => prev.extend_from_slice(d),
                _ => seen.push(s.clone()),
            }
        }
        Outcome {
            seen,
            closed: self.closed,
        }
    }

    /// The alerts the server sent, as (level, description).
    pub fn alerts(&self) -> Vec<(u8, u8)> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Alert { level, description } => Some((*level, *description)),
                _ => None,
            })
            .collect()
    }
}

/// A transport to a server under test.
pub trait Wire {
    /// Hand these bytes to the server (errors once it has gone are ignored: what it said
    /// before going is what counts).
    fn send(&mut self, bytes: &[u8]);
    /// Some of what the server says next; empty at the end of its stream.
    fn recv_some(&mut self) -> Vec<u8>;
    /// Everything the server says from here until it closes (a socket) or until it waits for
    /// more input (in memory), and whether it closed.
    fn recv_rest(&mut self) -> (Vec<u8>, bool);
    /// End the client's side of the stream.
    fn close_write(&mut self);
    /// From now on, deliver writes in pieces of `n` bytes where the transport can.
    fn set_chunk(&mut self, _n: usize) {}
}

/// A client config offering only `version` with AES-128-GCM (the suite [`Keys`] implements),
/// trusting `root`, with secret extraction on.
pub fn client_config(version: Version, root: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| {
        matches!(
            s.suite(),
            CipherSuite::TLS13_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let v: &'static rustls::SupportedProtocolVersion = match version {
        Version::Tls12 => &rustls::version::TLS12,
        Version::Tls13 => &rustls::version::TLS13,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("a usable root certificate");
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[v])
        .expect("the version is supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One direction's AES-128-GCM key, IV and record sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Direction {
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = secrets else {
            panic!("the client offers AES-128-GCM only");
        };
        Direction {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    /// The IV with the sequence number XORed into its last eight bytes.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// The client's record layer after the handshake, both directions.
pub struct Keys {
    version: Version,
    tx: Direction,
    rx: Direction,
}

impl Keys {
    /// A record of content type `typ` carrying `payload`, sealed with the next sequence number.
    pub fn seal(&mut self, typ: u8, payload: &[u8]) -> Vec<u8> {
        match self.version {
            Version::Tls13 => {
                let mut inner = payload.to_vec();
                inner.push(typ);
                self.seal_inner(&inner)
            }
            Version::Tls12 => {
                let nonce = self.tx.nonce();
                let mut aad = self.tx.seq.to_be_bytes().to_vec();
                aad.extend_from_slice(&[typ, 3, 3]);
                aad.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                let mut body = payload.to_vec();
                self.tx
                    .key
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut body,
                    )
                    .unwrap();
                self.tx.seq += 1;
                let mut record = header(typ, 8 + body.len());
                record.extend_from_slice(&nonce[4..]);
                record.extend_from_slice(&body);
                record
            }
        }
    }

    /// TLS 1.3: an application_data record whose decrypted content is `inner` exactly (the
    /// content type and padding are the caller's).
    pub fn seal_inner(&mut self, inner: &[u8]) -> Vec<u8> {
        assert_eq!(self.version, Version::Tls13);
        let mut record = header(APPLICATION_DATA, inner.len() + 16);
        let mut body = inner.to_vec();
        self.tx
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(self.tx.nonce()),
                Aad::from(&record[..]),
                &mut body,
            )
            .unwrap();
        self.tx.seq += 1;
        record.extend_from_slice(&body);
        record
    }

    /// Open one record from the server: its content type and payload.
    fn open(&mut self, record: &[u8]) -> Option<(u8, Vec<u8>)> {
        let (head, body) = record.split_at(5);
        let mut body = body.to_vec();
        let plain = match self.version {
            Version::Tls13 => {
                if head[0] != APPLICATION_DATA {
                    return None;
                }
                let mut plain = self
                    .rx
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(self.rx.nonce()),
                        Aad::from(head),
                        &mut body,
                    )
                    .ok()?
                    .to_vec();
                while plain.last() == Some(&0) {
                    plain.pop();
                }
                let typ = plain.pop()?;
                (typ, plain)
            }
            Version::Tls12 => {
                if body.len() < 8 + 16 {
                    return None;
                }
                let mut nonce = self.rx.iv;
                nonce[4..].copy_from_slice(&body[..8]);
                let mut aad = self.rx.seq.to_be_bytes().to_vec();
                aad.extend_from_slice(&head[..3]);
                aad.extend_from_slice(&((body.len() - 24) as u16).to_be_bytes());
                let plain = self
                    .rx
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut body[8..],
                    )
                    .ok()?
                    .to_vec();
                (head[0], plain)
            }
        };
        self.rx.seq += 1;
        Some(plain)
    }

    /// Read what the server sent, record by record.
    pub fn decode(&mut self, mut bytes: &[u8]) -> Vec<Seen> {
        let mut seen = Vec::new();
        while bytes.len() >= 5 {
            let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
            if bytes.len() < 5 + len {
                break;
            }
            let (record, rest) = bytes.split_at(5 + len);
            bytes = rest;
            seen.push(match self.open(record) {
                Some((APPLICATION_DATA, payload)) => Seen::Data(payload),
                Some((ALERT, payload)) if payload.len() == 2 => Seen::Alert {
                    level: payload[0],
                    description: payload[1],
                },
                Some((HANDSHAKE, _)) => Seen::Handshake,
                Some((typ, payload)) => Seen::Other {
                    typ,
                    len: payload.len(),
                },
                None => Seen::Undecryptable {
                    typ: record[0],
                    len,
                },
            });
        }
        if !bytes.is_empty() {
            seen.push(Seen::Partial(bytes.len()));
        }
        seen
    }
}

fn header(typ: u8, len: usize) -> Vec<u8> {
    let mut h = vec![typ, 3, 3];
    h.extend_from_slice(&(len as u16).to_be_bytes());
    h
}

/// Complete a handshake over `wire` as rustls's client does, then take the traffic keys out.
pub fn handshake(
    wire: &mut impl Wire,
    version: Version,
    root: &CertificateDer<'static>,
) -> Result<Keys, String> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(client_config(version, root), name).unwrap();
    loop {
        while conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            wire.send(&out);
        }
        if !conn.is_handshaking() {
            break;
        }
        let got = wire.recv_some();
        if got.is_empty() {
            return Err("the server closed during the handshake".into());
        }
        let mut rd = &got[..];
        while !rd.is_empty() {
            conn.read_tls(&mut rd).map_err(|e| e.to_string())?;
            conn.process_new_packets().map_err(|e| e.to_string())?;
        }
    }
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| e.to_string())?;
    Ok(Keys {
        version,
        tx: Direction::new(secrets.tx.0, secrets.tx.1),
        rx: Direction::new(secrets.rx.0, secrets.rx.1),
    })
}

/// The bytes one operation puts on the wire (None: it acts on the wire instead).
fn bytes_of(keys: &mut Keys, op: &Op) -> Vec<u8> {
    match op {
        Op::Data(d) => keys.seal(APPLICATION_DATA, d),
        Op::Forged(body) => {
            let mut r = header(APPLICATION_DATA, body.len());
            r.extend_from_slice(body);
            r
        }
        Op::Flip { len, at, bit } => {
            let mut r = keys.seal(APPLICATION_DATA, &vec![b'f'; *len]);
            let at = at % r.len();
            r[at] ^= 1 << (bit % 8);
            r
        }
        Op::Truncated { len, cut } => {
            let mut r = keys.seal(APPLICATION_DATA, &vec![b't'; *len]);
            r.truncate(r.len() - cut.min(&r.len()));
            r
        }
        Op::Oversized { extra, sent } => {
            let len = (MAX_CIPHERTEXT_13 + extra).min(0xffff);
            let mut r = header(APPLICATION_DATA, len);
            r.extend((0..*sent.min(&len)).map(|i| (i * 7) as u8));
            r
        }
        Op::Raw(b) => b.clone(),
        Op::ZeroInner(len) => match keys.version {
            Version::Tls13 => keys.seal_inner(&vec![0; *len]),
            Version::Tls12 => keys.seal(0, &vec![b'z'; *len]),
        },
        Op::Inner { typ, payload } => keys.seal(*typ, payload),
        Op::Padded { len, pad } => match keys.version {
            Version::Tls13 => {
                let mut inner: Vec<u8> = (0..*len).map(|i| (i % 251) as u8).collect();
                inner.push(APPLICATION_DATA);
                inner.resize(inner.len() + pad, 0);
                keys.seal_inner(&inner)
            }
            Version::Tls12 => keys.seal(
                APPLICATION_DATA,
                &(0..len + pad).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
            ),
        },
        Op::CloseNotify => keys.seal(ALERT, &[1, 0]),
        Op::Chunk(_) | Op::Eof => Vec::new(),
    }
}

/// Run `ops` after a handshake and read what the server answers.
pub fn run(
    wire: &mut impl Wire,
    version: Version,
    root: &CertificateDer<'static>,
    ops: &[Op],
) -> Result<Outcome, String> {
    let mut keys = handshake(wire, version, root)?;
    wire.set_chunk(usize::MAX);
    for op in ops {
        match op {
            Op::Chunk(n) => wire.set_chunk(*n),
            Op::Eof => wire.close_write(),
            op => {
                let bytes = bytes_of(&mut keys, op);
                wire.send(&bytes);
            }
        }
    }
    let (bytes, closed) = wire.recv_rest();
    Ok(Outcome {
        seen: keys.decode(&bytes),
        closed,
    })
}

/// A TCP connection to a running server (blocking, every read bounded by a timeout that fails
/// the test rather than waits forever).
pub struct TcpWire(pub std::net::TcpStream);

impl TcpWire {
    pub fn connect(addr: std::net::SocketAddr) -> TcpWire {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        TcpWire(tcp)
    }
}

impl Wire for TcpWire {
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.0.write_all(bytes);
    }

    fn recv_some(&mut self) -> Vec<u8> {
        let mut buf = vec![0; 64 * 1024];
        match self.0.read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Vec::new(),
            Err(e) => panic!("reading from the server: {e}"),
        }
    }

    fn recv_rest(&mut self) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        loop {
            let got = self.recv_some();
            if got.is_empty() {
                return (all, true);
            }
            all.extend_from_slice(&got);
        }
    }

    fn close_write(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

/// A server running in memory: its future is polled (with a waker that does nothing) whenever
/// the client has written, until it waits for more input; nothing runs in the background.
pub struct MemWire {
    server: Pin<Box<dyn Future<Output = ()>>>,
    done: bool,
    client: DuplexStream,
    closed: bool,
    /// Writes reach the server in pieces of this many bytes.
    pub chunk: usize,
}

/// Which server a [`MemWire`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// wss-chat's own record layer.
    TlsIo,
    /// rustls's buffered `ServerConnection`, through tokio-rustls.
    Stock,
}

/// Echo what is read until the stream ends or fails, flushing before each read as hyper does.
/// A stream that ended cleanly is shut down; one that failed is shut down too when `shut_failed`
/// (what hyper does with wss-chat's streams, so the path that sent the alert twice is run) and
/// dropped otherwise (what a stock rustls server does; tokio-rustls's shutdown after an error
/// that sent no alert would add a close_notify that the stock servers measured in issue 30 do
/// not send).
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, shut_failed: bool) {
    let mut buf = vec![0; 16 * 1024];
    let clean = loop {
        if s.flush().await.is_err() {
            break false;
        }
        match s.read(&mut buf).await {
            Ok(0) => break true,
            // rustls refused the stream; any other error is the transport's end.
            Err(e) => break e.kind() != std::io::ErrorKind::InvalidData,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    break false;
                }
            }
        }
    };
    if clean || shut_failed {
        let _ = s.shutdown().await;
    }
}

impl MemWire {
    pub fn new(which: Impl, config: Arc<ServerConfig>) -> MemWire {
        let (client, server) = tokio::io::duplex(1 << 20);
        let server: Pin<Box<dyn Future<Output = ()>>> = match which {
            Impl::TlsIo => Box::pin(async move {
                if let Ok(Accepted::Tls(s)) = TlsStream::accept(config, server).await {
                    echo(s, true).await;
                }
            }),
            Impl::Stock => Box::pin(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                if let Ok(s) = acceptor.accept(server).await {
                    echo(s, false).await;
                }
            }),
        };
        MemWire {
            server,
            done: false,
            client,
            closed: false,
            chunk: usize::MAX,
        }
    }

    /// Poll the server until it has nothing more to do with what it was given.
    fn settle(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        // A pending future here waits on the pipe; polling twice more guards against one that
        // yields without waiting.
        for _ in 0..3 {
            if self.done {
                return;
            }
            if self.server.as_mut().poll(&mut cx).is_ready() {
                self.done = true;
            }
        }
    }
}

impl Wire for MemWire {
    fn send(&mut self, bytes: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        for piece in bytes.chunks(self.chunk.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                match Pin::new(&mut self.client).poll_write(&mut cx, rest) {
                    Poll::Ready(Ok(n)) if n > 0 => rest = &rest[n..],
                    // Gone, or full while the server does not read: nothing more is taken.
                    _ => {
                        self.settle();
                        if self.done {
                            return;
                        }
                        if let Poll::Ready(Ok(n @ 1..)) =
                            Pin::new(&mut self.client).poll_write(&mut cx, rest)
                        {
                            rest = &rest[n..];
                        } else {
                            return;
                        }
                    }
                }
            }
            self.settle();
        }
    }

    fn recv_some(&mut self) -> Vec<u8> {
        self.recv_rest().0
    }

    fn recv_rest(&mut self) -> (Vec<u8>, bool) {
        self.settle();
        let mut cx = Context::from_waker(Waker::noop());
        let mut all = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.client).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    self.closed = true;
                    break;
                }
                Poll::Ready(Ok(())) => all.extend_from_slice(rb.filled()),
                Poll::Ready(Err(_)) => {
                    self.closed = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        (all, self.closed)
    }

    fn close_write(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(&mut self.client).poll_shutdown(&mut cx);
        self.settle();
    }

    fn set_chunk(&mut self, n: usize) {
        self.chunk = n;
    }
}

/// The server config both in-memory servers use: wss-chat's own (`tls::CertStore`), over a
/// self-signed certificate for localhost made once per process.
pub fn memory_pki() -> &'static (Arc<ServerConfig>, CertificateDer<'static>) {
    static PKI: OnceLock<(Arc<ServerConfig>, CertificateDer<'static>)> = OnceLock::new();
    PKI.get_or_init(|| {
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = wss_chat::tls::self_signed(&["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("wss-chat-tls-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let store = wss_chat::tls::CertStore::load(
            &cert_path,
            &key_path,
            wss_chat::config::TlsProfile::Intermediate,
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let root = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        (store.server_config().unwrap(), root)
    })
}

/// Run `ops` against both servers in memory, the handshake delivered in pieces of
/// `hs_chunk` bytes; their outcomes, tls_io's first.
pub fn differential(version: Version, hs_chunk: usize, ops: &[Op]) -> (Outcome, Outcome) {
    let (config, root) = memory_pki();
    let one = |which| {
        let mut wire = MemWire::new(which, config.clone());
        wire.chunk = hs_chunk;
        run(&mut wire, version, root, ops)
            .unwrap_or_else(|e| panic!("{which:?}: the handshake in memory failed: {e}"))
    };
    (one(Impl::TlsIo), one(Impl::Stock))
}

/// The fuzz input as a version, a handshake chunk size and operations: a head byte, then
/// per operation a code byte and two argument bytes (zeros past the end).
pub fn parse(data: &[u8]) -> (Version, usize, Vec<Op>) {
    let head = data.first().copied().unwrap_or(0);
    let version = if head & 1 == 0 {
        Version::Tls13
    } else {
        Version::Tls12
    };
    let hs_chunk = match (head >> 1) & 7 {
        0 => usize::MAX,
        n => (n as usize).pow(3),
    };
    let at = std::cell::Cell::new(1);
    let next = || {
        at.set(at.get() + 1);
        data.get(at.get() - 1).copied().unwrap_or(0)
    };
    let mut ops = Vec::new();
    while ops.len() < 24 && at.get() < data.len() {
        let (code, a, b) = (next(), next(), next());
        let len = (a as usize) << 8 | b as usize;
        ops.push(match code % 12 {
            0 => Op::Data((0..len % 17_000).map(|i| (i % 251) as u8).collect()),
            1 => Op::Forged(
                (0..len % 20_000)
                    .map(|i| (i * 13 + a as usize) as u8)
                    .collect(),
            ),
            2 => Op::Flip {
                len: b as usize * 4,
                at: a as usize,
                bit: b,
            },
            3 => Op::Truncated {
                len: a as usize * 8,
                cut: b as usize % 40,
            },
            4 => Op::Oversized {
                extra: a as usize * 8,
                sent: b as usize * 128,
            },
            5 => Op::Raw((0..a % 64).map(|_| next()).collect()),
            6 => Op::ZeroInner(a as usize),
            7 => Op::Inner {
                typ: a,
                payload: vec![b; len % 300],
            },
            8 => Op::CloseNotify,
            9 => Op::Chunk((a as usize).max(1)),
            10 => Op::Padded {
                len: len % 16_500,
                pad: b as usize,
            },
            _ => Op::Eof,
        });
    }
    (version, hs_chunk, ops)
}

/// The property: wss-chat's record layer answers every sequence of records as stock rustls
/// does, and never says anything after a fatal alert.
pub fn tls_records(data: &[u8]) {
    let (version, hs_chunk, ops) = parse(data);
    let (ours, stock) = differential(version, hs_chunk, &ops);
    let (ours_c, stock_c) = (ours.compared(), stock.compared());
    assert_eq!(
        ours_c, stock_c,
        "{version:?}, handshake in pieces of {hs_chunk}, ops {ops:?}: tls_io {ours:?}, stock rustls {stock:?}"
    );
    if let Some(i) = ours_c
        .seen
        .iter()
        .position(|s| matches!(s, Seen::Alert { level: 2, .. }))
    {
        assert_eq!(
            i + 1,
            ours_c.seen.len(),
            "something after a fatal alert: {ours:?}"
        );
    }
}
