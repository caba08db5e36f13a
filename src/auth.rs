//! Who is connecting: finding the token in an upgrade request and turning it into a user.
//!
//! Two kinds of token. Static tokens live in config only as their SHA-256, so a leaked config
//! file gives no working token; a presented token is hashed and compared against every entry
//! in constant time. Signed tokens are HS256 JWTs (`sub`, required `exp`, optional `nbf` and
//! `rooms`) whose secret comes from a file or an environment variable, never config.toml.
//! Nothing here logs or returns a token, whole or in part.

use std::path::Path;

use hyper::header::{HeaderMap, AUTHORIZATION, COOKIE, SEC_WEBSOCKET_PROTOCOL};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{parse_sha256_hex, AuthConfig, StaticUser};
use crate::protocol::{valid_user_name, BEARER_PROTOCOL_PREFIX, TOKEN_COOKIE};
use crate::roles::{role_in, Role, RoomRoles};

/// A user the server has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// The rooms this identity may join; `None` means any room that exists.
    pub rooms: Option<Vec<String>>,
    /// Unix seconds after which a signed token stops being valid; `None` for static tokens.
    pub expires_at: Option<u64>,
    /// Roles by room (member where a room is not named).
    pub roles: Option<RoomRoles>,
}

impl Identity {
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }

    pub fn role(&self, room: &str) -> Role {
        role_in(self.roles.as_ref(), room)
    }
}

/// Claims of a signed token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Roles by room, e.g. `{"announcements":"reader"}`; an unknown role makes the token
    /// invalid rather than quietly a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<RoomRoles>,
}

/// Why a request was not authenticated. The client only ever sees 401; the reason is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
    Expired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "token missing",
            Refusal::Invalid => "token invalid",
            Refusal::Expired => "token expired",
        }
    }
}

/// Find the token in precedence order: `Authorization: Bearer`, the subprotocol list, the
/// cookie, then `?token=` when the operator allowed it.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    allow_query: bool,
) -> Option<&'a str> {
    let bearer = crate::headers::values(headers, &AUTHORIZATION).find_map(|v| {
        let (scheme, t) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
    });
    let from_protocol = || {
        crate::headers::list_items(headers, &SEC_WEBSOCKET_PROTOCOL)
            .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
    };
    let from_cookie = || {
        crate::headers::values(headers, &COOKIE)
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == TOKEN_COOKIE).then_some(v)
            })
    };
    let from_query = || {
        if !allow_query {
            return None;
        }
        query?.split('&').find_map(|kv| kv.strip_prefix("token="))
    };
    bearer
        .or_else(from_protocol)
        .or_else(from_cookie)
        .or_else(from_query)
        .filter(|t| !t.is_empty())
}

struct StaticEntry {
    user: String,
    hash: [u8; 32],
    rooms: Option<Vec<String>>,
    roles: Option<RoomRoles>,
}

/// Checks tokens against the configured users and signing secret.
pub struct Authenticator {
    statics: Vec<StaticEntry>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in a debug dump.
        f.debug_struct("Authenticator")
            .field("static_users", &self.statics.len())
            .field("signed_tokens", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Build from a validated config; `base` resolves a relative secret file.
    pub fn from_config(cfg: &AuthConfig, base: &Path) -> Result<Authenticator, String> {
        let secret = cfg.load_secret(base).map_err(|p| p.to_string())?;
        Authenticator::new(&cfg.users, secret.as_deref())
    }

    /// Static users and, when given, the HS256 secret for signed tokens.
    pub fn new(users: &[StaticUser], secret: Option<&[u8]>) -> Result<Authenticator, String> {
        let statics = users
            .iter()
            .map(|u| {
                Ok(StaticEntry {
                    user: u.name.clone(),
                    hash: parse_sha256_hex(&u.token_sha256)
                        .ok_or_else(|| format!("auth.users {}: bad token_sha256", u.name))?,
                    rooms: u.rooms.clone(),
                    roles: u.roles.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        let jwt = secret.map(|secret| {
            let mut v = Validation::new(Algorithm::HS256);
            v.validate_nbf = true;
            v.leeway = 5;
            v.set_required_spec_claims(&["exp", "sub"]);
            (DecodingKey::from_secret(secret), v)
        });
        Ok(Authenticator { statics, jwt })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        // A JWT has exactly two dots; static tokens are checked otherwise, so a signed token
        // is never hashed and compared, nor a static one parsed as JSON.
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            if let Some((key, validation)) = &self.jwt {
                return verify_jwt(token, key, validation);
            }
        }
        self.verify_static(token)
    }

    fn verify_static(&self, token: &str) -> Result<Identity, Refusal> {
        let presented = sha256(token.as_bytes());
        // Compare against every entry, without stopping at a match, so the time taken does not
        // reveal which entry (or how much of a hash) matched.
        let mut found = None;
        for e in &self.statics {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&presented, &e.hash).is_ok() {
                found = Some(e);
            }
        }
        found
            .map(|e| Identity {
                user: e.user.clone(),
                rooms: e.rooms.clone(),
                expires_at: None,
                roles: e.roles.clone(),
            })
            .ok_or(Refusal::Invalid)
    }
}

fn verify_jwt(token: &str, key: &DecodingKey, v: &Validation) -> Result<Identity, Refusal> {
    use jsonwebtoken::errors::ErrorKind;
    match jsonwebtoken::decode::<Claims>(token, key, v) {
        Ok(data) if valid_user_name(&data.claims.sub) => Ok(Identity {
            user: data.claims.sub,
            rooms: data.claims.rooms,
            expires_at: Some(data.claims.exp),
            roles: data.claims.roles,
        }),
        Ok(_) => Err(Refusal::Invalid),
        Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(Refusal::Expired),
        Err(_) => Err(Refusal::Invalid),
    }
}

/// Mint a signed token (used by `wss-chat token` and by tests).
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing with an HMAC key cannot fail")
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub fn sha256_hex(data: &[u8]) -> String {
    sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticUser;
    use hyper::header::HeaderValue;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn auth() -> Authenticator {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        Authenticator::from_config(
            &AuthConfig {
                users: vec![StaticUser {
                    name: "alice".into(),
                    token_sha256: sha256_hex(b"alice-token"),
                    rooms: Some(vec!["lobby".into()]),
                    roles: None,
                }],
                jwt_secret_file: Some("secret".into()),
                jwt_secret_env: None,
                allow_query_token: false,
            },
            dir.path(),
        )
        .unwrap()
    }

    #[test]
    fn static_token() {
        let a = auth();
        let id = a.verify("alice-token").unwrap();
        assert_eq!(id.user, "alice");
        assert!(id.may_join("lobby") && !id.may_join("ops"));
        assert_eq!(a.verify("alice-tokeN"), Err(Refusal::Invalid));
        assert_eq!(a.verify(""), Err(Refusal::Invalid));
    }

    #[test]
    fn signed_tokens() {
        let a = auth();
        let claims = |exp, nbf| Claims {
            sub: "bob".into(),
            exp,
            nbf,
            rooms: None,
            roles: None,
        };
        let ok = mint(SECRET, &claims(now() + 60, None));
        assert_eq!(a.verify(&ok).unwrap().user, "bob");
        let expired = mint(SECRET, &claims(now() - 3600, None));
        assert_eq!(a.verify(&expired), Err(Refusal::Expired));
        let early = mint(SECRET, &claims(now() + 7200, Some(now() + 3600)));
        assert_eq!(a.verify(&early), Err(Refusal::Invalid));
        let forged = mint(
            b"another secret of thirty-two bytes!",
            &claims(now() + 60, None),
        );
        assert_eq!(a.verify(&forged), Err(Refusal::Invalid));
        // alg "none": header {"alg":"none","typ":"JWT"} with an empty signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            ok.split('.').nth(1).unwrap()
        );
        assert_eq!(a.verify(&none), Err(Refusal::Invalid));
    }

    #[test]
    fn token_precedence() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=b; wss_chat_token=cookie"),
        );
        assert_eq!(find_token(&h, None, false).unwrap(), "cookie");
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("wss-chat.v1, bearer.proto"),
        );
        assert_eq!(find_token(&h, None, false).unwrap(), "proto");
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer header"));
        assert_eq!(find_token(&h, None, false).unwrap(), "header");
        let empty = HeaderMap::new();
        assert!(find_token(&empty, Some("token=q"), false).is_none());
        assert_eq!(find_token(&empty, Some("x=1&token=q"), true).unwrap(), "q");
    }

    #[test]
    fn hex() {
        assert_eq!(parse_sha256_hex(&sha256_hex(b"x")), Some(sha256(b"x")));
        assert_eq!(parse_sha256_hex("zz"), None);
        assert_eq!(parse_sha256_hex(&"g".repeat(64)), None);
    }
}
