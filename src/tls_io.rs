//! The TLS record layer on an accepted socket: rustls's unbuffered server connection driven by
//! our own buffers, so that an idle connection holds none.
//!
//! rustls's buffered `ServerConnection` (what tokio-rustls wraps) keeps a 4 KiB receive buffer
//! for the connection's whole life once it has read anything: a third of an idle chat
//! connection's memory. Here the socket is read into a buffer on the stack; only a partial
//! record is kept (on the heap, freed once the record completes), decrypted data waits only
//! until the reader takes it, and encrypted output only until the socket takes it (a write
//! with nothing else waiting is sealed into a per-thread buffer, and only what the socket does
//! not take is copied into the connection's).
//!
//! Limits: a partial record may not grow past the largest a peer may send (a joined handshake
//! message during the handshake, one TLS record after it); no more plaintext is taken than
//! keeps the waiting output within a record's worth, so a peer that does not read holds back
//! our writer rather than grow a buffer. The session tickets that end the handshake wait for
//! the first write, and output may be held back ([`Cork`]) while hyper writes a 101, so that
//! the tickets, the 101 and the session's first frames leave in one write.
//!
//! Errors: the first error from rustls (a bad record, a failed handshake) is final. The alert
//! rustls queued for it, if any, is taken out without letting rustls deframe the input again
//! (for a record-layer error the unbuffered API does not mark the connection failed, and the
//! failing record would be decrypted and refused once more, queueing another alert), sent
//! once, and never followed by a close_notify; every later call returns the same `InvalidData`
//! error without touching rustls. One fatal alert, then the end of the stream, as stock rustls
//! does.
//! The stream is generic over its transport so that tests and the `tls_records` fuzz target can
//! drive it in memory against rustls's buffered `ServerConnection`; the server uses TCP.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Socket reads go through a stack buffer this big (no heap while idle).
const READ_CHUNK: usize = 8 * 1024;
/// The most a partial record may hold: a handshake message joined from several records is
/// capped by rustls at 64 KiB; after the handshake one record is at most 16 KiB + 2 KiB.
const MAX_PENDING_HANDSHAKE: usize = 0xffff + 5 + 16 * 1024;
const MAX_PENDING_TRAFFIC: usize = 16 * 1024 + 2048 + 5;
/// Plaintext taken per write: one full record.
pub const WRITE_CHUNK: usize = 16 * 1024;

thread_local! {
    /// Where a write is sealed when nothing else waits to be sent: one per worker thread, at
    /// most a record's worth.
    static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A server-side TLS stream over a socket (TCP in the server).
pub struct TlsStream<S = TcpStream> {
    tcp: S,
    conn: UnbufferedServerConnection,
    /// Ciphertext read but not yet a whole record.
    incoming: Vec<u8>,
    /// Decrypted application data, from `taken` on, not yet read.
    plaintext: Vec<u8>,
    taken: usize,
    /// Encrypted bytes, from `sent` on, not yet written to the socket.
    outgoing: Vec<u8>,
    sent: usize,
    /// The handshake is over: application data may flow.
    traffic: bool,
    /// No more input: the peer's close_notify (or, after it, the end of the stream).
    read_closed: bool,
    /// Our close_notify is queued.
    write_closed: bool,
    /// While set and held, output waits in `outgoing` (see [`Cork`]).
    cork: Option<Cork>,
    /// The session tickets rustls queues as the handshake ends wait in `outgoing` for our
    /// first write (the 101, or a refusal) and leave in it: a system call and a loopback
    /// packet less per connection. No client waits for a ticket before it sends its request.
    tickets_wait: bool,
    /// The first error rustls reported: the stream is over, and says so on every call.
    failed: Option<String>,
}

/// What [`TlsStream::accept`] found on a socket.
// Made once per connection and moved straight into its session: a box would be one more
// allocation per connection, for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Accepted<S = TcpStream> {
    /// The handshake is done.
    Tls(TlsStream<S>),
    /// The peer spoke plain HTTP (what it sent is dropped): the caller tells it to use TLS.
    PlainHttp(S),
}

/// Holds a stream's output back while set. The 101 is written by hyper, which flushes it
/// alone; the session's welcome follows moments later in a record and a write of its own.
/// Held from the moment the gate admits the upgrade until the session takes the stream over
/// ([`TlsStream::uncork`]), the two leave in one write: a system call and a loopback packet
/// less per connection. The connection's task and the HTTP service share it, hence atomic.
#[derive(Clone, Default)]
pub struct Cork(Arc<AtomicBool>);

impl Cork {
    pub fn hold(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn held(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where processing the buffered input came to rest.
enum Rest {
    /// The handshake needs more input.
    NeedInput,
    /// Application data may be written; more input is read when wanted.
    Traffic,
    /// Both sides have closed.
    Closed,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Run the TLS handshake on `tcp` (the caller bounds its time), unless the peer speaks
    /// plain HTTP.
    pub async fn accept(config: Arc<ServerConfig>, tcp: S) -> io::Result<Accepted<S>> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut s = TlsStream {
            tcp,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            sent: 0,
            traffic: false,
            read_closed: false,
            write_closed: false,
            cork: None,
            tickets_wait: false,
            failed: None,
        };
        // A TLS connection opens with a handshake record (0x16); a letter is someone speaking
        // plain HTTP to this port. Told from the first read the handshake needs anyway (a
        // `peek` before it was a system call per connection); an empty read is the handshake's
        // to report.
        std::future::poll_fn(|cx| s.poll_fill(cx)).await?;
        if s.incoming.first().is_some_and(u8::is_ascii_alphabetic) {
            return Ok(Accepted::PlainHttp(s.tcp));
        }
        std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
        Ok(Accepted::Tls(s))
    }

    /// The cork this stream obeys from now on (released: output flows as before).
    pub fn cork(&mut self) -> Cork {
        let cork = Cork::default();
        self.cork = Some(cork.clone());
        cork
    }

    /// Let held output go with the next write or flush, and forget the cork for good.
    pub fn uncork(&mut self) {
        self.cork = None;
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.process_or_alert(cx)? {
                // TLS 1.3: the flight before this was sent whole (the peer answered it); what
                // rustls queued since, its tickets, waits for our first write. TLS 1.2: the
                // server's Finished is queued now and the client waits for it, so it goes.
                Rest::Traffic => {
                    if self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                        self.tickets_wait = true;
                    } else {
                        ready!(self.poll_send(cx))?;
                    }
                    return Poll::Ready(Ok(()));
                }
                Rest::Closed => {
                    ready!(self.poll_send(cx))?;
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Rest::NeedInput => {
                    ready!(self.poll_send(cx))?;
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }

    /// As [`Self::process`], and on an error the alert it queued leaves at once (as far as the
    /// socket takes it without waiting; the rest goes with the shutdown that follows).
    fn process_or_alert(&mut self, cx: &mut Context<'_>) -> io::Result<Rest> {
        let result = self.process();
        if result.is_err() {
            // Best effort: the stream ends with this error whatever the socket does.
            let _ = self.poll_send(cx);
        }
        result
    }

    /// Feed what was read to rustls until it needs more input or may send application data:
    /// decrypted data goes to `plaintext`, anything rustls wants sent to `outgoing`.
    fn process(&mut self) -> io::Result<Rest> {
        if let Some(e) = &self.failed {
            return Err(invalid(e));
        }
        let Self {
            conn,
            incoming,
            plaintext,
            taken,
            outgoing,
            traffic,
            read_closed,
            ..
        } = self;
        let error = loop {
            let status = conn.process_tls_records(incoming);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    incoming.drain(..discard);
                    break e;
                }
            };
            let rest = match state {
                ConnectionState::ReadTraffic(mut read) => {
                    let mut error = None;
                    while let Some(record) = read.next_record() {
                        match record {
                            Ok(record) => {
                                if *taken == plaintext.len() {
                                    plaintext.clear();
                                    *taken = 0;
                                }
                                plaintext.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = error {
                        incoming.drain(..discard);
                        break e;
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    encode(outgoing, |buf| enc.encode(buf))?;
                    None
                }
                // What was encoded is in `outgoing`, which is written in order before anything
                // queued after it.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    *read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    *read_closed = true;
                    Some(Rest::Closed)
                }
                ConnectionState::BlockedHandshake => Some(Rest::NeedInput),
                ConnectionState::WriteTraffic(_) => {
                    *traffic = true;
                    Some(Rest::Traffic)
                }
                // Early data is never enabled in our config.
                _ => break rustls::Error::General("unexpected TLS state".into()),
            };
            incoming.drain(..discard);
            if let Some(rest) = rest {
                if incoming.is_empty() {
                    // Free it: an idle connection keeps no buffer.
                    *incoming = Vec::new();
                }
                return Ok(rest);
            }
        };
        Err(self.fail(error))
    }

    /// Make `error` final: queue the alert rustls prepared for it, if any, drop all input, and
    /// send everything waiting (held tickets included) from now on, uncorked.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        // rustls hands out what it queued before it deframes anything, so asking only while it
        // has something to send never looks at the failing record again (it may have been
        // decrypted in place; a second look fails differently and queues a second alert).
        while self.conn.wants_write() {
            match self.conn.process_tls_records(&mut self.incoming).state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    if encode(&mut self.outgoing, |buf| enc.encode(buf)).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.incoming = Vec::new();
        self.tickets_wait = false;
        self.cork = None;
        // Nothing follows the alert (or, for an error rustls sends none for, the failure):
        // no close_notify, however the stream is closed.
        self.write_closed = true;
        let message = error.to_string();
        self.failed = Some(message.clone());
        invalid(message)
    }

    /// Read from the socket into `incoming`; Ready(0) at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let cap = if self.traffic {
            MAX_PENDING_TRAFFIC
        } else {
            MAX_PENDING_HANDSHAKE
        };
        let room = cap.saturating_sub(self.incoming.len()).min(READ_CHUNK);
        if room == 0 {
            return Poll::Ready(Err(invalid("TLS record too large")));
        }
        // Uninitialised: zeroing 8 KiB on every read attempt showed in profiles (a reader is
        // polled on every wake-up of its connection's task, writes included).
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk[..room]);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.incoming.extend_from_slice(buf.filled());
        Poll::Ready(Ok(n))
    }

    /// Write `outgoing` to the socket; Ready once all of it is written, or at once while
    /// corked (it then waits there, bounded: only hyper writes before the session uncorks).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tickets_wait || self.cork.as_ref().is_some_and(Cork::held) {
            return Poll::Ready(Ok(()));
        }
        ready!(send_from(&mut self.tcp, cx, &self.outgoing, &mut self.sent))?;
        // Freed rather than kept: most connections write rarely.
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// Write `buf` from `sent` on to the socket, `sent` counting what it takes; Pending once it
/// is full.
fn send_from<S: AsyncWrite + Unpin>(
    tcp: &mut S,
    cx: &mut Context<'_>,
    buf: &[u8],
    sent: &mut usize,
) -> Poll<io::Result<()>> {
    while *sent < buf.len() {
        let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &buf[*sent..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *sent += n;
    }
    Poll::Ready(Ok(()))
}

/// Append what `f` encodes to `out`, growing it to the size rustls asks for.
fn encode(
    out: &mut Vec<u8>,
    f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    append(out, 512, f, |e| match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    })
}

/// As [`encode`], for encryption.
fn encrypt(
    out: &mut Vec<u8>,
    f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
    hint: usize,
) -> io::Result<()> {
    append(out, hint, f, |e| match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    })
}

/// Append what `f` writes to `out`, starting with room for `hint` bytes and growing to the
/// size `needs` reads from an error that asks for more; any other error leaves `out` as it was.
fn append<E: std::fmt::Display>(
    out: &mut Vec<u8>,
    hint: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    let start = out.len();
    let mut want = hint;
    loop {
        out.resize(start + want, 0);
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match needs(&e) {
                Some(required) if required > want => want = required,
                _ => {
                    out.truncate(start);
                    return Err(invalid(e));
                }
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.taken);
                buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(invalid(e)));
            }
            // Nothing read since the last processing and nothing left to send: rustls has
            // nothing new to say, so go straight to the socket (the common case: a wake-up
            // that was for the writer).
            if this.traffic && this.incoming.is_empty() && this.outgoing.is_empty() {
                if ready!(this.poll_fill(cx))? == 0 {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                continue;
            }
            this.process_or_alert(cx)?;
            // What rustls wants sent while reading (a key update's answer) goes out when the
            // socket takes it; a full socket does not stop reading.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if this.taken < this.plaintext.len() || this.read_closed {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                // The socket ended without the peer's close_notify: a truncation, reported as
                // such (an attacker could otherwise cut a message short unnoticed).
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(invalid(e)));
        }
        this.tickets_wait = false;
        // Earlier output first when this write would take the waiting output past a record's
        // worth: this is the back-pressure on a peer that does not read, and what bounds
        // `outgoing`. Below that, it leaves along with this write (a held 101 with the welcome).
        if this.outgoing.len() - this.sent + data.len().min(WRITE_CHUNK) > WRITE_CHUNK {
            ready!(this.poll_send(cx))?;
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(WRITE_CHUNK)];
        // Whatever rustls has to do first (a queued handshake message, a record read along
        // with the last one) is done here; it then rests ready for application data.
        if !matches!(this.process_or_alert(cx)?, Rest::Traffic) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Nothing waiting and nothing held: sealed into this thread's buffer and handed to the
        // socket from there, so a write the socket takes whole allocates nothing (a
        // per-connection buffer, allocated and freed for every write, was ~4 % of a
        // delivery's instructions); only what the socket leaves is kept.
        let direct = this.outgoing.is_empty() && !this.cork.as_ref().is_some_and(Cork::held);
        let Self {
            tcp,
            conn,
            incoming,
            outgoing,
            ..
        } = this;
        let mut w = match conn.process_tls_records(incoming).state {
            Ok(ConnectionState::WriteTraffic(w)) => w,
            Ok(_) => return Poll::Ready(Err(invalid("TLS stream not ready to write"))),
            Err(e) => {
                let e = this.fail(e);
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(e));
            }
        };
        if direct {
            SEALED.with_borrow_mut(|sealed| {
                sealed.clear();
                encrypt(sealed, |buf| w.encrypt(data, buf), data.len() + 64)?;
                let mut done = 0;
                if let Poll::Ready(Err(e)) = send_from(tcp, cx, sealed, &mut done) {
                    return Err(e);
                }
                // `sent` is already 0: it is reset whenever `outgoing` empties.
                outgoing.extend_from_slice(&sealed[done..]);
                Ok(())
            })?;
            return Poll::Ready(Ok(data.len()));
        }
        encrypt(outgoing, |buf| w.encrypt(data, buf), data.len() + 64)?;
        // Start sending now; what the socket does not take yet waits for the next write or
        // the flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tickets_wait = false;
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Closing sends everything, held or not. After a fatal error `write_closed` is set:
        // what is left of the alert goes, and no close_notify after it.
        this.uncork();
        this.tickets_wait = false;
        if !this.write_closed {
            ready!(this.poll_send(cx))?;
            this.write_closed = true;
            if matches!(this.process(), Ok(Rest::Traffic)) {
                let Self {
                    conn,
                    incoming,
                    outgoing,
                    ..
                } = this;
                if let Ok(ConnectionState::WriteTraffic(mut w)) =
                    conn.process_tls_records(incoming).state
                {
                    encrypt(outgoing, |buf| w.queue_close_notify(buf), 64)?;
                }
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}
