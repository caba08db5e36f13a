//! The properties the fuzz targets check, one public function per target, each taking the
//! fuzzer's bytes and panicking when a property fails.
//!
//! The same file is compiled into the stable test suite (tests/it/fuzz_corpus.rs, by
//! `#[path]`), which replays every file of `fuzz/corpus/<target>/` through these functions, so
//! CI guards the corpus and every fixed finding without nightly. Each check calls the server's
//! own function (no copy of it) and compares what it returns with a rule written here
//! independently: the HTML5 tokenizer for the sanitiser, the RFC 6454 normalisation for
//! origins, the room-name alphabet for paths.

use std::cell::RefCell;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE, SEC_WEBSOCKET_PROTOCOL};
use wss_chat::auth::{self, Authenticator, Claims};
use wss_chat::config::{Config, SanitizeMode, StaticUser};
use wss_chat::http::{route, Route};
use wss_chat::origin::{Origin, OriginPolicy, OriginRule};
use wss_chat::protocol::{valid_room_name, ClientFrame, ServerFrame};
use wss_chat::sanitize::Sanitizer;

thread_local! {
    // Built once per thread: the fuzzer calls a target millions of times.
    static STRIP: Sanitizer = Sanitizer::new(SanitizeMode::Strip);
    static BASIC: Sanitizer = Sanitizer::new(SanitizeMode::Basic);
}

/// Tags basic mode may deliver; strip mode delivers none.
pub const BASIC_TAGS: [&str; 7] = ["<b>", "<i>", "<em>", "<strong>", "<code>", "<pre>", "<a>"];

/// Everything the HTML5 tokenizer finds in `html` that could run script or that is markup at
/// all: each start tag as `<tag>`, and `tag attr=value` for event handlers, `style`, and
/// script-bearing URLs. Written independently of ammonia so it can disagree with it.
pub fn dangerous(html: &str) -> Vec<String> {
    use html5ever::tendril::StrTendril;
    use html5ever::tokenizer::{
        BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
    };

    struct Sink(RefCell<Vec<String>>);
    impl TokenSink for Sink {
        type Handle = ();
        fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
            if let Token::TagToken(tag) = token {
                if tag.kind == TagKind::StartTag {
                    let name = tag.name.to_string().to_ascii_lowercase();
                    self.0.borrow_mut().push(format!("<{name}>"));
                    for a in tag.attrs {
                        let attr = a.name.local.to_string().to_ascii_lowercase();
                        let value: String = a
                            .value
                            .chars()
                            .filter(|c| !c.is_whitespace() && !c.is_control())
                            .collect::<String>()
                            .to_ascii_lowercase();
                        let url_attr = matches!(
                            &*attr,
                            "href"
                                | "src"
                                | "action"
                                | "formaction"
                                | "xlink:href"
                                | "data"
                                | "srcdoc"
                                | "background"
                                | "poster"
                        );
                        let allowed_url = ["http:", "https:"].iter().any(|p| value.starts_with(p));
                        if attr.starts_with("on") || attr == "style" || (url_attr && !allowed_url) {
                            self.0.borrow_mut().push(format!("{name} {attr}={value}"));
                        }
                    }
                }
            }
            TokenSinkResult::Continue
        }
    }
    let tok = Tokenizer::new(Sink(RefCell::new(Vec::new())), TokenizerOpts::default());
    let q = BufferQueue::default();
    q.push_back(StrTendril::from(html));
    let _ = tok.feed(&q);
    tok.end();
    let found = tok.sink.0.borrow().clone();
    found
}

/// Client frames: any bytes parse to a frame or an error, never a panic; a message's text,
/// sanitised and encoded as the server sends it, is valid JSON that carries exactly that text.
pub fn client_frame(data: &[u8]) {
    let Ok(frame) = serde_json::from_slice::<ClientFrame>(data) else {
        return;
    };
    let ClientFrame::Message { text, id } = frame else {
        return;
    };
    let Some(clean) = STRIP.with(|s| s.clean(&text)) else {
        return;
    };
    let json = ServerFrame::Message {
        room: "lobby",
        from: "alice",
        text: &clean,
        seq: u64::MAX,
        ts: 0,
        via: None,
        deleted: false,
    }
    .to_json();
    let back: serde_json::Value = serde_json::from_str(&json).expect("server frame is JSON");
    assert_eq!(back["text"].as_str(), Some(clean.as_str()));
    assert_eq!(back["seq"].as_u64(), Some(u64::MAX));
    if let Some(id) = id {
        let ack = ServerFrame::Ack {
            id: &id,
            seq: 1,
            text: &clean,
        }
        .to_json();
        let back: serde_json::Value = serde_json::from_str(&ack).expect("ack is JSON");
        assert_eq!(back["id"].as_str(), Some(id.as_str()));
    }
}

/// The sanitiser, both modes: whatever goes in, what comes out has no element, attribute or
/// URL that can run script (strip mode: no element at all), and sanitising it again changes
/// nothing.
pub fn sanitizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for (mode, allowed) in [("strip", &[][..]), ("basic", &BASIC_TAGS[..])] {
        let clean = |t: &str| {
            if mode == "strip" {
                STRIP.with(|s| s.clean(t))
            } else {
                BASIC.with(|s| s.clean(t))
            }
        };
        let Some(out) = clean(&text) else { continue };
        for found in dangerous(&out) {
            assert!(
                allowed.contains(&found.as_str()),
                "{mode}: {text:?} -> {out:?} holds {found}"
            );
        }
        assert_eq!(
            clean(&out).as_deref(),
            Some(out.as_str()),
            "{mode}: sanitising {out:?} again changed it"
        );
    }
}

/// The Origin check: never panics on any header or rule; a header is allowed only when it
/// names, after RFC 6454 normalisation (lower-case scheme and host, default port), the same
/// origin as an exact rule or a subdomain of a wildcard rule; and an allowed origin stays
/// allowed when its scheme and host change case or its default port is written out.
/// Input: the rule, a newline, the header bytes.
pub fn origin(data: &[u8]) {
    let (rule_bytes, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let fixed = OriginPolicy::new(
        &[
            "https://chat.example.com".into(),
            "https://*.corp.example.com".into(),
        ],
        false,
    );
    let _ = fixed.check(Some(header));
    let Ok(rule_text) = std::str::from_utf8(rule_bytes) else {
        return;
    };
    let Ok(rule) = OriginRule::parse(rule_text) else {
        return;
    };
    let policy = OriginPolicy::new(&[rule_text.to_string()], false);
    if policy.check(Some(header)).is_err() {
        return;
    }
    let header = std::str::from_utf8(header).expect("an allowed Origin is UTF-8");
    let o = Origin::parse(header).expect("an allowed Origin parses");
    let (scheme, rest) = o
        .to_string()
        .split_once("://")
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("scheme://");
    let (host, port) = rest.rsplit_once(':').expect("host:port");
    assert!(scheme == "https" || scheme == "http", "{header:?}");
    assert!(
        !host.contains('*'),
        "{header:?}: a wildcard host was allowed"
    );
    assert_eq!(host, host.to_ascii_lowercase());
    match &rule {
        OriginRule::Exact(e) => {
            assert_eq!(e.to_string(), o.to_string(), "{header:?} vs {rule_text:?}")
        }
        OriginRule::Subdomains {
            scheme: s,
            suffix,
            port: p,
        } => {
            assert_eq!(
                (s.as_str(), p.to_string().as_str()),
                (scheme.as_str(), port)
            );
            let label = host
                .strip_suffix(suffix.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .expect("host under the wildcard's suffix");
            assert!(
                !label.is_empty(),
                "{header:?} matched {rule_text:?} with no label"
            );
        }
    }
    let upper = header.to_ascii_uppercase();
    assert!(
        policy.check(Some(upper.as_bytes())).is_ok(),
        "{upper:?} refused while {header:?} is allowed"
    );
    let explicit = format!("{scheme}://{host}:{port}");
    assert!(
        policy.check(Some(explicit.as_bytes())).is_ok(),
        "{explicit:?} refused while {header:?} is allowed"
    );
}

const STATIC_TOKEN: &str = "alice-token-1";
const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789";

/// Token carriers and verifiers. Input: Authorization, Sec-WebSocket-Protocol, Cookie and the
/// query, separated by newlines. A token found is non-empty and a piece of one carrier, never
/// of the query unless the query is allowed; verifying any of it never panics and admits only
/// the static user's token or a token signed with our secret; a token minted with our secret
/// for any subject is admitted exactly when the subject is a valid user name.
pub fn token(data: &[u8]) {
    let mut parts = data.splitn(5, |&b| b == b'\n');
    let mut headers = HeaderMap::new();
    let mut carriers: Vec<String> = Vec::new();
    for name in [AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL, COOKIE] {
        let part = parts.next().unwrap_or_default();
        if let Ok(v) = HeaderValue::from_bytes(part) {
            if let Ok(s) = v.to_str() {
                carriers.push(s.to_string());
            }
            headers.append(name, v);
        }
    }
    let query = parts.next().and_then(|q| std::str::from_utf8(q).ok());
    let users = [StaticUser {
        name: "alice".into(),
        token_sha256: auth::sha256_hex(STATIC_TOKEN.as_bytes()),
        rooms: None,
        roles: None,
    }];
    let authn = Authenticator::new(&users, Some(SECRET)).expect("valid users");

    let strict = auth::find_token(&headers, query, false);
    let loose = auth::find_token(&headers, query, true);
    if let Some(t) = strict {
        assert!(!t.is_empty());
        assert!(carriers.iter().any(|c| c.contains(t)), "{t:?} from nowhere");
        assert_eq!(loose, strict, "allowing the query changed a header's token");
    }
    if let (None, Some(t)) = (strict, loose) {
        assert!(
            query.is_some_and(|q| q.contains(t)),
            "{t:?} not from the query"
        );
    }
    for t in [strict, loose].into_iter().flatten() {
        if let Ok(id) = authn.verify(t) {
            if t == STATIC_TOKEN {
                assert_eq!(id.user, "alice");
            } else {
                // Only a token we signed gets past; its subject is what we signed.
                assert_eq!(
                    t.bytes().filter(|&b| b == b'.').count(),
                    2,
                    "{t:?} admitted"
                );
                assert!(id.expires_at.is_some());
            }
        }
    }

    // The signed path: our own token for an arbitrary subject.
    let sub = String::from_utf8_lossy(data).into_owned();
    let minted = auth::mint(
        SECRET,
        &Claims {
            sub: sub.clone(),
            exp: u64::from(u32::MAX),
            nbf: None,
            rooms: None,
            roles: None,
        },
    );
    let admitted = authn.verify(&minted);
    let valid_sub = !sub.is_empty() && sub.len() <= 64 && !sub.chars().any(char::is_control);
    assert_eq!(admitted.is_ok(), valid_sub, "{sub:?}: {admitted:?}");
    if let Ok(id) = admitted {
        assert_eq!(id.user, sub);
    }
    // A token signed with another secret never gets in.
    let forged = auth::mint(
        b"another-secret-0123456789abcdef0123456",
        &Claims {
            sub,
            exp: u64::from(u32::MAX),
            nbf: None,
            rooms: None,
            roles: None,
        },
    );
    assert!(authn.verify(&forged).is_err());
}

/// The upgrade request target: any bytes that make a URI route without panicking; a room
/// route names a room of 1 to 64 of `A-Z a-z 0-9 _ . -` (so it is safe in logs, metrics and
/// file names) and is exactly what follows `/rooms/`; a token in the query is a piece of it.
pub fn upgrade_path(data: &[u8]) {
    let Ok(uri) = hyper::Uri::try_from(data) else {
        return;
    };
    let path = uri.path();
    match route(path) {
        Route::Room(name) => {
            assert_eq!(path.strip_prefix("/rooms/"), Some(name));
            assert!((1..=64).contains(&name.len()), "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                "{name:?}"
            );
        }
        Route::Check(name) => {
            assert_eq!(path.strip_prefix("/check/"), Some(name));
            assert!(valid_room_name(name), "{name:?}");
        }
        Route::NotFound => {
            if let Some(rest) = path.strip_prefix("/rooms/") {
                assert!(
                    !valid_room_name(rest),
                    "{rest:?} is a room but was not routed"
                );
            }
        }
        Route::Health | Route::Ready | Route::Favicon | Route::Page(..) => {
            assert!(!path.starts_with("/rooms/") && !path.starts_with("/check/"));
        }
    }
    // A resume's since is digits of the query that fit a u64; a refused one changes nothing.
    if let Ok(Some(r)) = wss_chat::handshake::parse_resume(uri.query()) {
        let q = uri.query().expect("a resume comes from the query");
        assert!(
            q.contains(&format!("since={}", r.since)) || q.contains("since=0"),
            "{q:?}"
        );
        assert!(r.epoch.len() <= 64);
    }
    if let Some(t) = auth::find_token(&HeaderMap::new(), uri.query(), true) {
        assert!(uri.query().is_some_and(|q| q.contains(t)));
    }
    assert!(auth::find_token(&HeaderMap::new(), uri.query(), false).is_none());
}

/// The config loader: arbitrary TOML gives a config or problems, never a panic; a config that
/// validates can be used (its listen address, its loosened list).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            if c.validate().is_ok() {
                let _ = c.listen_addr();
                let _ = c.loosened();
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            assert!(problems.iter().all(|p| !p.reason.is_empty()));
        }
    }
}

#[path = "tls_records.rs"]
pub mod tls_records;
pub use tls_records::tls_records;
