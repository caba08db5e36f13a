//! The HTTP API for back ends, `/api/v1` on the main TLS port: publish into a room, read its
//! history and presence, and moderate it, through the same engine calls a WebSocket session
//! makes (so sanitising, size, roles, seq and idempotency are one piece of code).
//!
//! A request passes, in order: no key in the query string (400, even beside a good header, so
//! a key never sits in a proxy's log) -> a known path (404) and method (405 with `Allow`) ->
//! `Authorization: Bearer KEY`, hashed and compared in constant time against every configured
//! key (401) -> the key's scope (403) -> the key's rate (429 with `Retry-After`) -> a body
//! within the limit, refused from its `Content-Length` or as soon as a chunked body passes it
//! (413) -> JSON of the right shape (400) -> the engine. Every answer is JSON
//! `{"error": CODE, "message": TEXT}` on failure. No key is logged, whole or in part: only
//! the key's configured name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::info;

use crate::auth::sha256;
use crate::config::{parse_sha256_hex, ApiConfig, Scope};
use crate::engine::{message_frame, Author, ModRefusal, Moderator, Rejection, Submitted};
use crate::moderation::Action;
use crate::protocol::{valid_room_name, valid_user_name, MAX_ID_CHARS};
use crate::roles::Role;
use crate::room::{next_conn_id, JoinError, Reservation};
use crate::Shared;

type Body = Full<Bytes>;

/// Query parameters that look like a credential: a request carrying one is refused.
const KEY_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "token",
    "auth",
    "authorization",
    "bearer",
    "secret",
    "password",
];

struct KeyEntry {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured API keys (as hashes) and each key's rate.
pub struct ApiKeys {
    keys: Vec<KeyEntry>,
    rate: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl ApiKeys {
    /// From a validated config (hashes already checked).
    pub fn new(cfg: &ApiConfig) -> ApiKeys {
        let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("max(1) is non-zero");
        let quota = Quota::per_second(nz(cfg.requests_per_second)).allow_burst(nz(cfg.burst));
        ApiKeys {
            keys: cfg
                .keys
                .iter()
                .filter_map(|k| {
                    Some(KeyEntry {
                        name: k.name.clone(),
                        hash: parse_sha256_hex(&k.key_sha256)?,
                        scopes: k.scopes.clone(),
                    })
                })
                .collect(),
            rate: RateLimiter::keyed(quota),
        }
    }

    /// The entry whose key this is. Every entry is compared, without stopping at a match, so
    /// the time taken does not say which one matched.
    fn find(&self, key: &str) -> Option<&KeyEntry> {
        let presented = sha256(key.as_bytes());
        let mut found = None;
        for e in &self.keys {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&presented, &e.hash).is_ok() {
                found = Some(e);
            }
        }
        found
    }
}

/// An API failure: its status, code and message.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
    /// For 405: the methods the path answers.
    allow: Option<&'static str>,
}

fn fail(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        message: message.into(),
        retry_after_s: None,
        allow: None,
    }
}

type Answer = Result<(StatusCode, serde_json::Value), Failure>;

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    Messages(&'a str),
    Message(&'a str, &'a str),
    Presence(&'a str),
    Kick(&'a str),
    Mute(&'a str),
}

impl Endpoint<'_> {
    /// The methods this path answers, for 405's `Allow`.
    fn allowed(self) -> &'static str {
        match self {
            Endpoint::Messages(_) => "GET, POST",
            Endpoint::Message(..) => "DELETE",
            Endpoint::Presence(_) => "GET",
            Endpoint::Kick(_) | Endpoint::Mute(_) => "POST",
        }
    }
}

/// The API's route table; `None` for a path it does not have.
fn endpoint(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/api/v1/rooms/")?;
    let (room, what) = rest.split_once('/')?;
    if !valid_room_name(room) {
        return None;
    }
    Some(match what {
        "messages" => Endpoint::Messages(room),
        "presence" => Endpoint::Presence(room),
        "kick" => Endpoint::Kick(room),
        "mute" => Endpoint::Mute(room),
        _ => Endpoint::Message(room, what.strip_prefix("messages/")?),
    })
}

/// Whether `path` is the API's, so http.rs hands it here.
pub fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Answer one API request.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let answer = serve(&shared, peer, req).await;
    match answer {
        Ok((status, body)) => json(status, &body),
        Err(f) => {
            shared.metrics.api_refused(f.code);
            let mut r = json(
                f.status,
                &serde_json::json!({ "error": f.code, "message": f.message }),
            );
            if let Some(s) = f.retry_after_s {
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
            }
            if f.status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            if let Some(allow) = f.allow {
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            r
        }
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn serve(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Answer {
    // Before anything else: a key in the URL is refused even when the header is good, so
    // the client learns to stop putting it where logs keep it.
    let in_query = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|kv| {
            let name = kv.split('=').next().unwrap_or("");
            KEY_PARAMS.iter().any(|k| name.eq_ignore_ascii_case(k))
        });
    if in_query {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "key_in_query",
            "send the key only as Authorization: Bearer KEY, never in the URL",
        ));
    }
    let path = req.uri().path().to_string();
    let Some(ep) = endpoint(&path) else {
        return Err(fail(StatusCode::NOT_FOUND, "not_found", "no such API path"));
    };
    let method = req.method().clone();
    let (scope, allowed) = match (ep, &method) {
        (Endpoint::Messages(_), &Method::POST) => (Scope::Publish, true),
        (Endpoint::Messages(_) | Endpoint::Presence(_), &Method::GET) => (Scope::Read, true),
        (Endpoint::Message(..), &Method::DELETE)
        | (Endpoint::Kick(_) | Endpoint::Mute(_), &Method::POST) => (Scope::Moderate, true),
        _ => (Scope::Read, false),
    };
    if !allowed {
        return Err(Failure {
            allow: Some(ep.allowed()),
            ..fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here; use {}", ep.allowed()),
            )
        });
    }
    let key = authenticate(shared, peer, &req)?;
    if !key.scopes.contains(&scope) {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key lacks the {scope:?} scope").to_lowercase(),
        ));
    }
    let keys = &shared.api;
    if let Err(nu) = keys.rate.check_key(&key.name) {
        let wait = nu.wait_time_from(keys.rate.clock().now());
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(Failure {
            retry_after_s: Some(secs.max(1)),
            ..fail(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "over this key's request rate; slow down",
            )
        });
    }
    if !shared.engine.rooms.ready() {
        return Err(Failure {
            retry_after_s: Some(5),
            ..fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage unavailable, try again shortly",
            )
        });
    }
    let name = key.name.clone();
    let query = req.uri().query().map(str::to_string);
    let body = match method {
        Method::POST => read_body(shared, req).await?,
        _ => Bytes::new(),
    };
    match ep {
        Endpoint::Messages(room) if method == Method::POST => {
            publish(shared, room, &name, &body).await
        }
        Endpoint::Messages(room) => history(shared, room, query.as_deref()),
        Endpoint::Presence(room) => {
            let visit = visit(shared, room)?;
            Ok((
                StatusCode::OK,
                serde_json::json!({ "members": visit.room().present() }),
            ))
        }
        Endpoint::Kick(room) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Kick {
                user: String,
                #[serde(default)]
                reason: String,
            }
            let k: Kick = parse(&body)?;
            let action = Action::Kick {
                user: k.user,
                reason: k.reason,
            };
            moderate(shared, room, &name, action).await
        }
        Endpoint::Mute(room) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Mute {
                user: String,
                seconds: u64,
            }
            let m: Mute = parse(&body)?;
            let action = Action::Mute {
                user: m.user,
                seconds: m.seconds,
            };
            moderate(shared, room, &name, action).await
        }
        Endpoint::Message(room, seq) => {
            let seq = whole(seq)
                .ok_or_else(|| fail(StatusCode::NOT_FOUND, "not_found", "no such API path"))?;
            moderate(shared, room, &name, Action::Delete { seq }).await
        }
    }
}

/// The key in `Authorization: Bearer KEY`: exactly one such header, a known key. A request
/// without one is charged to its address's handshake rate, so guessing costs as much as
/// guessing tokens.
fn authenticate<'a>(
    shared: &'a Shared,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Result<&'a KeyEntry, Failure> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    let key = match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok().and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        }),
        _ => None,
    };
    match key
        .filter(|k| !k.is_empty())
        .and_then(|k| shared.api.find(k))
    {
        Some(entry) => Ok(entry),
        None => {
            if let Err(wait) = shared.limits.check_handshake(peer.ip()) {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Failure {
                    retry_after_s: Some(secs.max(1)),
                    ..fail(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many requests without a valid key from this address",
                    )
                });
            }
            info!(%peer, "API request refused: no valid key");
            Err(fail(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send a valid key as Authorization: Bearer KEY",
            ))
        }
    }
}

/// The most an API body may be: a message at the size limit in its JSON envelope.
fn body_limit(shared: &Shared) -> usize {
    shared.config.limits.max_message_bytes + crate::ENVELOPE_ALLOWANCE
}

/// The whole body, refused with 413 as soon as it is known to pass the limit: from its
/// declared length before reading anything, or while reading a chunked one.
async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, Failure> {
    let limit = body_limit(shared);
    let too_big = || {
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over {limit} bytes"),
        )
    };
    if req.body().size_hint().lower() > limit as u64 {
        return Err(too_big());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(_) => Err(fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body could not be read",
        )),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
    })
}

/// A whole number in ASCII digits only (no sign, no space).
fn whole(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Use `room` for this request: it exists (or is created as a join would create it).
fn visit(shared: &Shared, room: &str) -> Result<Reservation, Failure> {
    shared.engine.rooms.visit(room).map_err(|e| match e {
        JoinError::Unavailable | JoinError::Full => fail(
            StatusCode::NOT_FOUND,
            "room_not_found",
            "no such room (and rooms.auto_create does not make it)",
        ),
    })
}

async fn publish(shared: &Shared, room: &str, key_name: &str, body: &[u8]) -> Answer {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Post {
        text: String,
        id: Option<String>,
        from: Option<String>,
    }
    let post: Post = parse(body)?;
    if post
        .id
        .as_ref()
        .is_some_and(|i| i.chars().count() > MAX_ID_CHARS)
    {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "id longer than 64 characters",
        ));
    }
    if post.from.as_ref().is_some_and(|f| !valid_user_name(f)) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "from must be 1 to 64 characters without control characters",
        ));
    }
    let visit = visit(shared, room)?;
    let room = visit.room();
    let author = Author {
        room,
        conn: next_conn_id(),
        name: post.from.as_deref().unwrap_or(key_name),
        role: Role::Member,
        via_api: true,
    };
    let (tx, rx) = oneshot::channel();
    let reply = move || -> crate::room::Reply {
        Box::new(move |settled| {
            let _ = tx.send(settled.map(|(event, fanout)| (event.seq, fanout.is_some())));
        })
    };
    let (seq, fresh) = match shared
        .engine
        .submit(author, &post.text, post.id.as_deref(), reply)
    {
        Ok(Submitted::New(p)) => (p.seq, true),
        Ok(Submitted::Again(p)) => (p.seq, false),
        Ok(Submitted::Queued) => match rx.await {
            Ok(Ok(done)) => done,
            _ => return Err(rejected(Rejection::Unavailable)),
        },
        Err(r) => return Err(rejected(r)),
    };
    let status = if fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        serde_json::json!({ "seq": seq, "epoch": &*room.epoch() }),
    ))
}

fn rejected(r: Rejection) -> Failure {
    let status = match r {
        Rejection::TooLong => StatusCode::PAYLOAD_TOO_LARGE,
        Rejection::Empty => StatusCode::BAD_REQUEST,
        Rejection::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Rejection::Forbidden | Rejection::Muted(_) => StatusCode::FORBIDDEN,
    };
    Failure {
        retry_after_s: r.retry_after_ms().map(|ms| ms.div_ceil(1000)),
        ..fail(status, r.code().as_str(), r.message())
    }
}

fn history(shared: &Shared, room: &str, query: Option<&str>) -> Answer {
    let mut params: HashMap<&str, &str> = HashMap::new();
    for kv in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|kv| !kv.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if params.insert(k, v).is_some() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{k} given twice"),
            ));
        }
    }
    let value = |name: &str| -> Result<serde_json::Value, Failure> {
        match params.get(name) {
            None => Ok(serde_json::Value::Null),
            Some(v) => whole(v).map(serde_json::Value::from).ok_or_else(|| {
                fail(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{name} must be a whole number"),
                )
            }),
        }
    };
    let (before, limit) = (value("before")?, value("limit")?);
    let visit = visit(shared, room)?;
    let room = visit.room();
    let (events, has_more) = shared.engine.page(room, &before, &limit).ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be at least 1",
        )
    })?;
    let messages: Vec<_> = events
        .iter()
        .map(|e| message_frame(&room.name, e.seq, e.ts, &e.kind))
        .collect();
    Ok((
        StatusCode::OK,
        serde_json::json!({ "messages": messages, "has_more": has_more }),
    ))
}

async fn moderate(shared: &Shared, room: &str, key_name: &str, action: Action) -> Answer {
    let visit = visit(shared, room)?;
    let by = Moderator {
        name: key_name,
        conn: None,
        role: Role::Moderator,
        via: "api",
    };
    let (tx, rx) = oneshot::channel();
    shared.engine.moderate(
        visit.room(),
        by,
        action,
        None,
        Box::new(move |done| {
            let _ = tx.send(done);
        }),
    );
    let refusal = match rx.await {
        Ok(Ok(frame)) => {
            let body = serde_json::from_str(frame.to_text().unwrap_or("{}"))
                .unwrap_or(serde_json::Value::Null);
            return Ok((StatusCode::OK, body));
        }
        Ok(Err(refusal)) => refusal,
        Err(_) => ModRefusal::Unavailable,
    };
    let status = match refusal {
        ModRefusal::Forbidden(_) => StatusCode::FORBIDDEN,
        ModRefusal::NotPresent => StatusCode::CONFLICT,
        ModRefusal::NotFound => StatusCode::NOT_FOUND,
        ModRefusal::Bad(_) => StatusCode::BAD_REQUEST,
        ModRefusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    Err(fail(status, refusal.code().as_str(), refusal.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            endpoint("/api/v1/rooms/lobby/messages"),
            Some(Endpoint::Messages("lobby"))
        );
        assert_eq!(
            endpoint("/api/v1/rooms/lobby/messages/7"),
            Some(Endpoint::Message("lobby", "7"))
        );
        assert_eq!(endpoint("/api/v1/rooms/a%2Fb/messages"), None);
        assert_eq!(endpoint("/api/v1/rooms/lobby/other"), None);
        assert_eq!(endpoint("/api/v2/rooms/lobby/messages"), None);
        assert_eq!(whole("12"), Some(12));
        assert_eq!(whole("-1"), None);
        assert_eq!(whole("+1"), None);
        assert_eq!(whole(""), None);
    }
}
