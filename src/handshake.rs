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
use crate::engine::Resume;
use crate::headers;
use crate::limits::CapSlot;
use crate::moderation::Kind;
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
    /// Kicked from this room by a moderator, and the ban has not ended.
    Banned,
    RoomFull,
    /// The user already holds `server.max_connections_per_user` connections.
    UserCap,
    /// The shared store does not answer: refused rather than served by this node alone.
    Unavailable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Rate(_) | Refusal::UserCap => StatusCode::TOO_MANY_REQUESTS,
            Refusal::NotUpgrade | Refusal::Version => StatusCode::UPGRADE_REQUIRED,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Origin(_) | Refusal::Room | Refusal::Banned => StatusCode::FORBIDDEN,
            Refusal::Token(_) => StatusCode::UNAUTHORIZED,
            Refusal::RoomFull | Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
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
            Refusal::Banned => "kicked from this room; try again later",
            Refusal::RoomFull => "room full",
            Refusal::UserCap => "too many connections for this user",
            Refusal::Unavailable => "storage unavailable, try again shortly",
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
            Refusal::Banned => "banned",
            Refusal::RoomFull | Refusal::UserCap => "cap",
            Refusal::Unavailable => "unavailable",
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
    /// `?since=SEQ&epoch=E`: the client asks for what it missed.
    pub resume: Option<Resume>,
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
    if !shared.engine.rooms.ready() {
        return Err(Refusal::Unavailable);
    }

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

    let resume = parse_resume(req.uri().query()).map_err(Refusal::Malformed)?;
    let identity = identify(shared, req, room)?;

    let user_slot = shared
        .user_slots
        .try_take(identity.user.clone())
        .ok_or(Refusal::UserCap)?;

    let reservation = shared.engine.rooms.reserve(room).map_err(|e| match e {
        JoinError::Unavailable => Refusal::Room,
        JoinError::Full => Refusal::RoomFull,
    })?;
    // After the reservation: opening the room loads its bans from a shared store.
    not_banned(shared, room, &identity.user)?;

    let subprotocol = headers::list_items(h, &SEC_WEBSOCKET_PROTOCOL).any(|p| p == SUBPROTOCOL);

    Ok(Admitted {
        identity,
        user_slot,
        reservation,
        resume,
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
    let identity = identify(shared, req, room)?;
    not_banned(shared, room, &identity.user)
}

/// Refused (403) while a moderator's kick keeps `user` out of `room`.
fn not_banned(shared: &Shared, room: &str, user: &str) -> Result<(), Refusal> {
    match shared
        .engine
        .rooms
        .sanctions
        .remaining(room, user, Kind::Ban)
    {
        Some(_) => Err(Refusal::Banned),
        None => Ok(()),
    }
}

/// `since` and `epoch` from the upgrade's query. `since` must be a whole number of digits that
/// fits in a u64 (not `-1`, `1.5`, `abc`, empty, or given twice); without `since` there is no
/// resume. A missing `epoch` can never match, so such a resume gets `recovered: false`.
pub fn parse_resume(query: Option<&str>) -> Result<Option<Resume>, &'static str> {
    let mut since = None;
    let mut epoch = None;
    for (key, value) in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
    {
        match key {
            "since" => {
                if since.is_some() {
                    return Err("since given twice");
                }
                let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                since = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| ok)
                        .ok_or("since must be a non-negative whole number")?,
                );
            }
            "epoch" => {
                if epoch.is_some() || value.len() > 64 {
                    return Err("epoch given twice or longer than 64 characters");
                }
                epoch = Some(value.to_string());
            }
            _ => {}
        }
    }
    Ok(since.map(|since| Resume {
        since,
        epoch: epoch.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_must_be_a_whole_number_that_fits() {
        let r = parse_resume(Some("token=x&since=5&epoch=ab12"))
            .unwrap()
            .unwrap();
        assert_eq!((r.since, r.epoch.as_str()), (5, "ab12"));
        assert_eq!(parse_resume(Some("token=x")).unwrap(), None);
        assert_eq!(parse_resume(None).unwrap(), None);
        assert_eq!(parse_resume(Some("since=0")).unwrap().unwrap().epoch, "");
        for bad in [
            "since=abc",
            "since=-1",
            "since=1.5",
            "since=",
            "since",
            "since=+1",
            "since=18446744073709551616",
            "since=1&since=2",
        ] {
            assert!(parse_resume(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            parse_resume(Some("since=18446744073709551615"))
                .unwrap()
                .unwrap()
                .since,
            u64::MAX
        );
    }
}
