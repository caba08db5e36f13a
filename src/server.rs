//! Accepting connections: the caps checked before any TLS work, the handshake deadline, and
//! graceful shutdown.
//!
//! A connection over `server.max_connections` or `server.max_connections_per_ip` (IPv6 by /64)
//! is closed as soon as it is accepted, before a single TLS byte is read, so a flood costs us
//! a socket and not a handshake. TLS plus the HTTP upgrade must finish within
//! `server.handshake_timeout_ms`. On shutdown the listener closes, every session sends Close
//! 1001, and [`serve`] waits up to `server.shutdown_timeout_ms` for them to go.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::limits::{CapCounter, ConnGuard};
use crate::tls_io::{Accepted, TlsStream};
use crate::Shared;

/// Largest HTTP request head we read (request line plus headers); past it hyper answers 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Most headers in one request; a browser's upgrade sends about 15.
const MAX_HEADERS: usize = 64;
/// The answer to plain HTTP sent to the TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 46\r\nConnection: close\r\n\r\n\
this port speaks TLS; use https:// or wss://\r\n";
/// How often idle rate-limiter keys are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Accept on `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    stop: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let cfg = &shared.config.server;
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let per_ip = CapCounter::new(cfg.max_connections_per_ip);
    let pruner = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_INTERVAL);
            loop {
                tick.tick().await;
                shared.limits.prune();
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(guard) = ConnGuard::admit(&slots, &per_ip, peer.ip()) else {
            debug!(%peer, "connection refused at accept: over a connection cap");
            shared.metrics.refused("cap");
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            connection(shared, tls, tcp, peer, Arc::new(guard)).await;
        });
    }
    drop(listener);
    pruner.abort();
    info!("shutting down: closing connections");
    let _ = stop.send(true);
    shared.engine.rooms.stop_all();
    let all = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(
        Duration::from_millis(cfg.shutdown_timeout_ms),
        slots.acquire_many(all),
    )
    .await;
    match drained {
        Ok(_) => info!("all connections closed"),
        Err(_) => warn!("shutdown timeout reached with connections still open"),
    }
}

/// TLS, then HTTP until the upgrade, all within the handshake deadline.
async fn connection(
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
) {
    let _ = tcp.set_nodelay(true);
    let accepted = std::time::Instant::now();
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(shared.config.server.handshake_timeout_ms);
    let mut shutdown = shared.shutdown.clone();
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, TlsStream::accept(tls, tcp)) => r,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let mut tls = match handshake {
        Ok(Ok(Accepted::Tls(tls))) => tls,
        Ok(Ok(Accepted::PlainHttp(tcp))) => {
            debug!(%peer, "plain HTTP on the TLS port");
            shared.metrics.refused("request");
            answer_plain_http(tcp, deadline).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            shared.metrics.refused("timeout");
            return;
        }
    };
    let cork = tls.cork();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let conn = crate::http::Conn {
            peer,
            accepted,
            guard: guard.clone(),
            cork: cork.clone(),
        };
        crate::http::handle(svc_shared.clone(), conn, req)
    });
    let conn = http1::Builder::new()
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!(%peer, error = %e, "HTTP connection error");
        },
        _ = tokio::time::sleep_until(deadline) => {
            debug!(%peer, "HTTP phase timed out");
            shared.metrics.refused("timeout");
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

/// Tell a peer that spoke plain HTTP to the TLS port (a wrong URL scheme, a misrouted proxy)
/// to use TLS, rather than close in silence as a failed TLS handshake would; then read what is
/// left of its request before closing, so the answer is not lost to a reset.
async fn answer_plain_http(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    let _ = tokio::time::timeout_at(deadline, tcp.write_all(PLAIN_HTTP_ANSWER)).await;
    let mut sink = vec![0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut sink)).await;
}
