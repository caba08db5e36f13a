//! The gate: the ordered checks an upgrade request must pass before it gets a 101.
//!
//! One function so the order is visible and testable: the cheapest checks first, no token work
//! for a request already refused, and the same answer for a room that is missing and a room
//! the token may not enter. Order: handshake rate per address (first, so refused attempts count
//! too and tokens cannot be guessed at line rate) -> a well-formed RFC 6455 upgrade -> Origin ->
//! token -> room rights -> join. Every refusal is an HTTP status with a short reason.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::header::{
    HeaderValue, CONNECTION, ORIGIN, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Method, Request, StatusCode, Version};

use crate::auth::{self, Identity};
use crate::headers;
use crate::limits::CapSlot;
use crate::origin;
use crate::protocol::SUBPROTOCOL;
use crate::room::{JoinError, Reservation};
use crate::Shared;

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Rate(Duration),
    /// Not an upgrade at all (a plain GET): 426.
    NotUpgrade,
    /// An upgrade we cannot speak (wrong version): 426 naming version 13.
    Version,
    Malformed(&'static str),
    Origin(origin::Refusal),
    Token(auth::Refusal),
    /// Room missing or not in the token: one answer for both.
    Room,
    RoomFull,
    /// The user already holds `server.max_connections_per_user` connections.
    UserCap,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Rate(_) | Refusal::UserCap => StatusCode::TOO_MANY_REQUESTS,
            Refusal::NotUpgrade | Refusal::Version => StatusCode::UPGRADE_REQUIRED,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Origin(_) | Refusal::Room => StatusCode::FORBIDDEN,
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
            Refusal::RoomFull => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The reason, for the log line and the response body. Names no secret and no room.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Rate(_) => "too many handshakes",
            Refusal::NotUpgrade => "websocket upgrade required",
            Refusal::Version => "unsupported websocket version",
            Refusal::Malformed(why) => why,
            Refusal::Origin(r) => r.as_str(),
            Refusal::Token(r) => r.as_str(),
            Refusal::Room => "room not available",
            Refusal::RoomFull => "room full",
            Refusal::UserCap => "too many connections for this user",
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::Rate(_) => "rate",
            Refusal::NotUpgrade | Refusal::Version | Refusal::Malformed(_) => "request",
            Refusal::Origin(_) => "origin",
            Refusal::Token(_) => "token",
            Refusal::Room => "room",
            Refusal::RoomFull | Refusal::UserCap => "cap",
        }
    }
}

/// Everything a session needs from a request that passed the gate.
#[derive(Debug)]
pub struct Admitted {
    pub identity: Identity,
    /// Counts this connection against `server.max_connections_per_user` while it lives.
    pub user_slot: CapSlot<String>,
    /// The place in the room, taken by the engine's join once the upgrade is done.
    pub reservation: Reservation,
    /// `Sec-WebSocket-Accept` for the 101.
    pub accept_key: String,
    /// Whether the client offered our subprotocol, which the 101 must then name.
    pub subprotocol: bool,
}

/// Run every check in order for an upgrade to `room`.
pub fn gate<B>(
    shared: &Shared,
    req: &Request<B>,
    peer: SocketAddr,
    room: &str,
) -> Result<Admitted, Refusal> {
    shared
        .limits
        .check_handshake(peer.ip())
        .map_err(Refusal::Rate)?;

    let h = req.headers();
    if !headers::lists(h, &UPGRADE, "websocket") {
        return Err(Refusal::NotUpgrade);
    }
    if req.method() != Method::GET {
        return Err(Refusal::Malformed("websocket upgrade must be GET"));
    }
    if req.version() != Version::HTTP_11 {
        return Err(Refusal::Malformed("websocket upgrade needs HTTP/1.1"));
    }
    if !headers::lists(h, &CONNECTION, "upgrade") {
        return Err(Refusal::Malformed("missing Connection: upgrade"));
    }
    if h.get(SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Refusal::Version);
    }
    let key = headers::single(h, &SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .ok_or(Refusal::Malformed("missing or bad Sec-WebSocket-Key"))?;

    let identity = identify(shared, req, room)?;

    let user_slot = shared
        .user_slots
        .try_take(identity.user.clone())
        .ok_or(Refusal::UserCap)?;

    let reservation = shared.engine.rooms.reserve(room).map_err(|e| match e {
        JoinError::Unavailable => Refusal::Room,
        JoinError::Full => Refusal::RoomFull,
    })?;

    let subprotocol = headers::list_items(h, &SEC_WEBSOCKET_PROTOCOL).any(|p| p == SUBPROTOCOL);

    Ok(Admitted {
        identity,
        user_slot,
        reservation,
        accept_key: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
        subprotocol,
    })
}

/// Who is asking, and may they enter `room`: Origin -> token -> room rights. Shared by the
/// upgrade and by [`check`], so both give the same answer.
fn identify<B>(shared: &Shared, req: &Request<B>, room: &str) -> Result<Identity, Refusal> {
    let h = req.headers();
    // A request with two Origin headers is treated as malformed rather than picking one.
    let origin = match h.get_all(ORIGIN).iter().count() {
        0 => None,
        1 => h.get(ORIGIN).map(HeaderValue::as_bytes),
        _ => return Err(Refusal::Origin(origin::Refusal::Malformed)),
    };
    shared.origins.check(origin).map_err(Refusal::Origin)?;

    let token = auth::find_token(h, req.uri().query(), shared.config.auth.allow_query_token)
        .ok_or(Refusal::Token(auth::Refusal::Missing))?;
    let identity = shared.auth.verify(token).map_err(Refusal::Token)?;

    if !identity.may_join(room) || !shared.engine.rooms.available(room) {
        return Err(Refusal::Room);
    }
    Ok(identity)
}

/// `POST /check/{room}`: would an upgrade from this page, with this token, be admitted? A
/// browser cannot read the status of a refused WebSocket upgrade (it sees only 1006), so the
/// page asks here to tell a refused token from a network failure. It runs the gate's own
/// checks and is charged to the same handshake rate, so it guesses tokens no faster than
/// upgrades do, and it answers only what the page's own upgrade would have been told.
pub fn check<B>(
    shared: &Shared,
    req: &Request<B>,
    peer: SocketAddr,
    room: &str,
) -> Result<(), Refusal> {
    shared
        .limits
        .check_handshake(peer.ip())
        .map_err(Refusal::Rate)?;
    identify(shared, req, room).map(|_| ())
}
