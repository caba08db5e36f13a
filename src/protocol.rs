//! Every type that crosses the wire, and every close and error code, in one place.
//!
//! Clients send JSON text frames shaped like [`ClientFrame`]; the server sends [`ServerFrame`].
//! README.md documents the same shapes for client authors: keep the two in step.

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The one subprotocol we speak; a browser offers it beside `bearer.<token>`.
pub const SUBPROTOCOL: &str = "wss-chat.v1";
/// Prefix of the subprotocol entry that carries a token (browsers cannot set headers).
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
/// The cookie that may carry a token.
pub const TOKEN_COOKIE: &str = "wss_chat_token";
/// Longest client-chosen message id echoed back in an ack.
pub const MAX_ID_CHARS: usize = 64;
/// Room names are short and plain so they are safe in URLs, logs and metrics labels.
pub const MAX_ROOM_NAME: usize = 64;

/// A frame a client may send. Unknown fields (such as a forged `from`) are ignored, not trusted.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Message {
        text: String,
        id: Option<String>,
    },
    /// A page of older messages. `before` and `limit` are checked by the engine (any JSON is
    /// accepted here, so a bad value is answered with the request's id).
    History {
        id: Option<String>,
        #[serde(default)]
        before: serde_json::Value,
        #[serde(default)]
        limit: serde_json::Value,
    },
    /// Moderators: close every connection of `user` in this room (4003) and keep them out
    /// for `moderation.kick_ban_s`.
    Kick {
        user: String,
        #[serde(default)]
        reason: Option<String>,
        id: Option<String>,
    },
    /// Moderators: refuse `user`'s messages in this room for `seconds`.
    Mute {
        user: String,
        seconds: u64,
        id: Option<String>,
    },
    /// Moderators: make message `seq` a tombstone.
    Delete {
        seq: u64,
        id: Option<String>,
    },
}

impl ClientFrame {
    /// The client's id for this frame, echoed in its answer.
    pub fn id(&self) -> Option<&str> {
        match self {
            ClientFrame::Message { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Kick { id, .. }
            | ClientFrame::Mute { id, .. }
            | ClientFrame::Delete { id, .. } => id.as_deref(),
        }
    }
}

/// The limits a client is told about in its welcome, so it can pace itself.
#[derive(Debug, Clone, Serialize)]
pub struct WelcomeLimits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub burst: u32,
}

/// A frame the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Welcome {
        user: &'a str,
        room: &'a str,
        limits: &'a WelcomeLimits,
        /// The room's epoch and its last seq when this welcome was built.
        epoch: &'a str,
        seq: u64,
        /// Only when the client asked to resume: whether exactly what it missed follows.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Users with a connection in the room, sorted, self included (with presence on).
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<&'a str>>,
        /// More users are present than `presence.max_listed`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        members_truncated: bool,
        /// What this connection may do here: reader, member or moderator.
        role: &'a str,
    },
    /// The room's history was lost by the shared store (a new epoch): drop the view; what
    /// follows starts again at seq 1.
    Resync { reason: &'a str },
    /// A user's first connection to the room opened (presence; no seq, not stored).
    Join { user: &'a str, ts: u64 },
    /// A user's last connection to the room closed.
    Leave { user: &'a str, ts: u64 },
    Message {
        room: &'a str,
        from: &'a str,
        text: &'a str,
        seq: u64,
        ts: u64,
        /// "api" for a message a back end posted through the HTTP API; absent for a person's.
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<&'a str>,
        /// A moderator deleted it: a tombstone, `text` empty.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
    },
    /// Message `seq` was deleted by moderator `by`: show it as deleted.
    Deleted { seq: u64, by: &'a str },
    /// A moderator acted in the room. To the moderator who acted, with the request's `id`.
    Moderation {
        action: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        by: &'a str,
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// A page of stored messages, oldest first, each a message frame; `has_more` when older
    /// ones are retained.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        messages: Vec<ServerFrame<'a>>,
        has_more: bool,
    },
    /// The message with this id was stored and delivered; `text` is what the others received
    /// (the sanitised text), so the sender shows the same and never its raw input.
    Ack {
        id: &'a str,
        seq: u64,
        text: &'a str,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

/// Why a client's message was refused without closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not a known `type`, or a field of the wrong shape.
    BadRequest,
    /// `text` longer than `limits.max_message_bytes`.
    TooLong,
    /// Nothing left after sanitising.
    Empty,
    /// Over the per-connection or per-user message rate.
    RateLimited,
    /// The message could not be stored; it reached nobody.
    Unavailable,
    /// The connection's role does not allow this frame (a reader posting, a member
    /// moderating), or its target is a moderator.
    Forbidden,
    /// A moderator muted this user here; `retry_after_ms` says until when.
    Muted,
    /// The user to act on is not in the room.
    NotPresent,
    /// The room never had a message with that seq.
    NotFound,
}

impl ErrorCode {
    /// The wire name, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Empty => "empty",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Muted => "muted",
            ErrorCode::NotPresent => "not_present",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// RFC 6455 close codes the server sends, named for why we send them.
pub mod close {
    use super::CloseCode;
    /// Server shutting down.
    pub const GOING_AWAY: CloseCode = CloseCode::Away;
    /// Malformed framing.
    pub const PROTOCOL: CloseCode = CloseCode::Protocol;
    /// Binary frames: we only speak JSON text.
    pub const UNSUPPORTED: CloseCode = CloseCode::Unsupported;
    /// Text that is not UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode::Invalid;
    /// Repeated rate-limit violations, expired token.
    pub const POLICY: CloseCode = CloseCode::Policy;
    /// Frame or message over the size limit.
    pub const TOO_BIG: CloseCode = CloseCode::Size;
    /// Outbound queue overflowed (slow consumer).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode::Again;
    /// Kicked by a moderator (private use range, RFC 6455 section 7.4.2; mirrors HTTP 403).
    pub const KICKED: CloseCode = CloseCode::Library(4003);
}

/// Longest token a client may present, in bytes (a signed token with many rooms is long).
pub const MAX_TOKEN: usize = 4096;

/// Whether `token` is 1 to [`MAX_TOKEN`] RFC 7230 token characters, the only ones a
/// `Sec-WebSocket-Protocol` entry (`bearer.<token>`) can carry; static tokens must be so.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Longest user name, in bytes.
pub const MAX_USER_NAME: usize = 64;

/// Whether a user name is 1 to 64 bytes with no control character: it is shown to every
/// member and written to logs, where a newline or an escape sequence could forge a line.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_USER_NAME && !name.chars().any(char::is_control)
}

/// Whether a room name is 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(valid_room_name("lobby"));
        assert!(valid_room_name("a.b-c_D9"));
        assert!(valid_room_name(&"x".repeat(64)));
        assert!(!valid_room_name(&"x".repeat(65)));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("a/b"));
        assert!(!valid_room_name("caf\u{e9}"));
        assert!(!valid_room_name("a%20b"));
    }

    #[test]
    fn forged_from_is_ignored_and_unknown_type_rejected() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"message","text":"hi","from":"admin"}"#).unwrap();
        let ClientFrame::Message { text, id } = f else {
            panic!("a message frame")
        };
        assert_eq!(text, "hi");
        assert_eq!(id, None);
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"join","room":"x"}"#).is_err());
    }

    #[test]
    fn error_frame_shape() {
        let j = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down",
            id: Some("7"),
            retry_after_ms: Some(120),
        }
        .to_json();
        assert_eq!(
            j,
            r#"{"type":"error","code":"rate_limited","message":"slow down","id":"7","retry_after_ms":120}"#
        );
    }
}
