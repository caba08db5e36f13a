//! HTTP/1.1 in front of the WebSocket: routing, refusals with a status, and the upgrade.
//!
//! `/rooms/{room}` goes through the gate (handshake.rs) and, when admitted, answers 101 and
//! hands the upgraded stream to a session; a plain GET there gets 426. `/` serves the chat
//! page (HTML, CSS and JS compiled into the binary, no inline script, so the page carries a
//! strict Content-Security-Policy); `POST /check/{room}` tells that page whether its upgrade
//! would be admitted, since a browser cannot read a refused upgrade's status; `/healthz`
//! answers 200; `/api/...` goes to the HTTP API (api.rs). Anything else is 404. [`route`] is
//! the whole table. Every answer
//! but a 101 closes the connection, so only an upgrade keeps a socket. The query string is
//! never logged: it may carry a token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{error, info, warn};

use crate::api;
use crate::handshake::{self, Refusal};
use crate::limits::ConnGuard;
use crate::protocol::{valid_room_name, SUBPROTOCOL};
use crate::session;
use crate::tls_io::{Cork, TlsStream};
use crate::Shared;

pub type Body = Full<Bytes>;

/// The TLS connection a request came on.
pub struct Conn {
    pub peer: SocketAddr,
    /// When its TCP connection was accepted.
    pub accepted: std::time::Instant,
    /// Counts it against the caps for as long as it lives.
    pub guard: Arc<ConnGuard>,
    /// Holds its output back from the 101 until the session's first frames.
    pub cork: Cork,
}

/// Answer one HTTP request on a TLS connection.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Conn {
        peer,
        accepted,
        guard,
        cork,
    } = conn;
    if api::is_api(req.uri().path()) {
        return Ok(with_security_headers(api::handle(shared, peer, req).await));
    }
    let resp = match route(req.uri().path()) {
        Route::Room(room) => {
            let room = room.to_string();
            match handshake::gate(&shared, &req, peer, &room) {
                Ok(admitted) => {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    let resp = switching_protocols(&admitted.accept_key, admitted.subprotocol);
                    cork.hold();
                    shared
                        .metrics
                        .handshake_seconds
                        .observe(accepted.elapsed().as_secs_f64());
                    let shared = shared.clone();
                    // Two tasks: this one waits for the upgrade and ends; the session gets a
                    // task of its own, so its future carries nothing of the upgrade's.
                    tokio::spawn(async move {
                        let upgraded = match on_upgrade.await {
                            Ok(upgraded) => upgraded,
                            Err(e) => {
                                warn!(%peer, error = %e, "upgrade failed after 101");
                                return;
                            }
                        };
                        // The TLS stream itself, not hyper's boxed wrapper of it: one layer
                        // less on every read and write of the session.
                        let Ok(parts) = upgraded.downcast::<TokioIo<TlsStream>>() else {
                            error!(%peer, "upgraded stream is not a TLS stream");
                            return;
                        };
                        let mut tls = parts.io.into_inner();
                        tls.uncork();
                        // Bytes hyper read past the request (a client that sent its first
                        // frame without waiting for the 101) are the start of the stream.
                        let ws = WebSocketStream::from_partially_read(
                            tls,
                            parts.read_buf.to_vec(),
                            Role::Server,
                            Some(shared.ws_config),
                        )
                        .await;
                        tokio::spawn(session::run(shared, ws, admitted, peer, guard));
                    });
                    return Ok(resp);
                }
                Err(refusal) => refused(&shared, peer, &room, refusal, "handshake"),
            }
        }
        Route::Check(room) if req.method() == hyper::Method::POST => {
            match handshake::check(&shared, &req, peer, room) {
                Ok(()) => {
                    let mut r = Response::new(Body::default());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Err(refusal) => refused(&shared, peer, room, refusal, "check"),
            }
        }
        Route::Check(_) => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        Route::Health => plain(StatusCode::OK, "ok"),
        // For load balancers: this node can serve new clients (its store answers).
        Route::Ready if shared.engine.rooms.ready() => plain(StatusCode::OK, "ready"),
        Route::Ready => {
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
            r
        }
        Route::Favicon => {
            // Browsers ask on every page load; no icon rather than a 404 in their console.
            let mut r = Response::new(Body::default());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Route::Page(body, content_type) => {
            let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Route::NotFound => plain(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(with_security_headers(resp))
}

/// Where a request path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/rooms/{room}` with a valid room name: the upgrade gate.
    Room(&'a str),
    /// `/check/{room}`: would the upgrade be admitted (for the page, which cannot see why an
    /// upgrade was refused).
    Check(&'a str),
    Health,
    /// `/readyz`: 200 while the store answers, else 503 (`/healthz` stays 200).
    Ready,
    Favicon,
    /// A file of the browser client, compiled in: body and content type.
    Page(&'static str, &'static str),
    /// Anything else, a `/rooms/` path with an invalid room name included.
    NotFound,
}

/// The route table, one match so every path the server answers is listed here.
pub fn route(path: &str) -> Route<'_> {
    match path {
        "/healthz" => Route::Health,
        "/readyz" => Route::Ready,
        "/favicon.ico" => Route::Favicon,
        "/" | "/index.html" => {
            Route::Page(include_str!("web/index.html"), "text/html; charset=utf-8")
        }
        "/app.js" => Route::Page(include_str!("web/app.js"), "text/javascript; charset=utf-8"),
        "/app.css" => Route::Page(include_str!("web/app.css"), "text/css; charset=utf-8"),
        _ => {
            if let Some(room) = path.strip_prefix("/rooms/").filter(|r| valid_room_name(r)) {
                Route::Room(room)
            } else if let Some(room) = path.strip_prefix("/check/").filter(|r| valid_room_name(r)) {
                Route::Check(room)
            } else {
                Route::NotFound
            }
        }
    }
}

/// Only same-origin script, style and WebSocket; nothing framed, no plugins, no base URL.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn with_security_headers(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    // One request per connection: the page is three small files, and a socket that is not
    // upgraded should not outlive its answer.
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    h.insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    r
}

fn switching_protocols(accept_key: &str, subprotocol: bool) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(accept_key).expect("base64 is a valid header value"),
    );
    if subprotocol {
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    r
}

/// Count and log a refusal of `what` (an upgrade or a check), and answer it. The log names the
/// room and the reason, never the token or the query string.
fn refused(
    shared: &Shared,
    peer: SocketAddr,
    room: &str,
    refusal: Refusal,
    what: &str,
) -> Response<Body> {
    shared.metrics.refused(refusal.kind());
    info!(
        %peer,
        room = %room,
        status = refusal.status().as_u16(),
        kind = refusal.kind(),
        reason = refusal.reason(),
        "{what} refused"
    );
    refusal_response(refusal)
}

fn refusal_response(refusal: Refusal) -> Response<Body> {
    let mut r = plain(refusal.status(), refusal.reason());
    let h = r.headers_mut();
    match refusal {
        Refusal::Rate(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        Refusal::Unavailable => {
            h.insert(RETRY_AFTER, HeaderValue::from(5));
        }
        Refusal::NotUpgrade | Refusal::Version => {
            h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
        _ => {}
    }
    r
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
