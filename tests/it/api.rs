//! The HTTP API (`/api/v1`) on the real binary: publish, history and presence through the
//! same engine as sockets; keys only in the Authorization header, scopes, per-key rates, body
//! limits, JSON errors; no key in any log.

use serde_json::{json, Value};

use crate::support::*;

/// API keys of the test config: (name, key, scopes).
pub const KEYS: [(&str, &str, &[&str]); 4] = [
    ("orders", "wsc_orders_key_0123456789", &["publish", "read"]),
    ("reporting", "wsc_reporting_key_0123456789", &["read"]),
    ("trust", "wsc_trust_key_0123456789", &["moderate"]),
    (
        "ops",
        "wsc_ops_key_0123456789",
        &["publish", "read", "moderate"],
    ),
];

pub fn key(name: &str) -> &'static str {
    KEYS.iter().find(|k| k.0 == name).unwrap().1
}

/// The test config's API keys, added to `c`.
pub fn with_keys(c: &mut Config) {
    c.api.keys = KEYS
        .iter()
        .map(|(name, key, scopes)| wss_chat::config::ApiKey {
            name: name.to_string(),
            key_sha256: wss_chat::auth::sha256_hex(key.as_bytes()),
            scopes: scopes
                .iter()
                .map(|s| serde_json::from_value(json!(s)).unwrap())
                .collect(),
        })
        .collect();
}

/// An API answer: status, headers (lowercase names) and the JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An error answer: its status, its JSON error code, and JSON content.
    pub fn error(&self) -> (u16, &str) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        assert!(self.body["message"].is_string(), "{self:?}");
        (self.status, self.body["error"].as_str().unwrap_or(""))
    }
}

/// Parse a raw HTTP/1.1 response with a JSON (or empty) body.
pub fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// One API request with `Authorization: Bearer key` (when given) and a JSON body.
pub async fn call(
    s: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    call_raw(s, method, path, key, &body).await
}

pub async fn call_raw(
    s: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Reply {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    parse_reply(&s.https_raw(req.as_bytes()).await)
}

fn api_server(change: impl FnOnce(&mut Config)) -> Server {
    Server::start_with(|c| {
        with_keys(c);
        change(c);
    })
}

#[tokio::test]
async fn a_back_end_posts_to_every_member_via_api_and_a_resend_is_answered_once() {
    let s = api_server(|c| c.history.store = HistoryStore::Sqlite);
    let (mut alice, welcome) = s.enter("alice", "lobby").await;
    let mut bob = s.join("bob", "lobby").await;
    let epoch = welcome["epoch"].as_str().unwrap();
    let post = json!({"text": "order <b>7</b> shipped<script>x</script>", "id": "o7"});
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/messages",
        Some(key("orders")),
        Some(post.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body, json!({"seq": 1, "epoch": epoch}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    for ws in [&mut alice, &mut bob] {
        let m = recv_json(ws).await;
        assert_eq!(
            (
                m["type"].as_str(),
                m["from"].as_str(),
                m["via"].as_str(),
                m["seq"].as_u64()
            ),
            (Some("message"), Some("orders"), Some("api"), Some(1)),
            "{m}"
        );
        assert_eq!(
            m["text"], "order 7 shipped",
            "sanitised as for sockets: {m}"
        );
    }
    // The same id again: the original seq, delivered to nobody a second time.
    let again = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/messages",
        Some(key("orders")),
        Some(post),
    )
    .await;
    assert_eq!(
        (again.status, &again.body),
        (200, &json!({"seq": 1, "epoch": epoch}))
    );
    // `from` names the sender; a person's messages never carry `via`.
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/messages",
        Some(key("ops")),
        Some(json!({"text": "invoice ready", "from": "billing"})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let m = recv_json(&mut alice).await;
    assert_eq!(
        (m["from"].as_str(), m["via"].as_str(), m["seq"].as_u64()),
        (Some("billing"), Some("api"), Some(2))
    );
    say(&mut alice, "from a person").await;
    let m = recv_json(&mut bob).await;
    assert_eq!(m["seq"], 2, "{m}");
    let m = recv_json(&mut bob).await;
    assert_eq!(
        (m["text"].as_str(), m.get("via")),
        (Some("from a person"), None),
        "{m}"
    );
    expect_nothing_more(&s, &mut alice, "lobby").await;
}

#[tokio::test]
async fn every_refusal_is_json_with_the_right_status() {
    let s = api_server(|c| c.limits.max_message_bytes = 100);
    let path = "/api/v1/rooms/lobby/messages";
    let good = Some(json!({"text": "hi"}));
    let orders = Some(key("orders"));
    // A key in the query string is refused even beside a good header.
    for q in ["key", "api_key", "access_token", "token", "Token"] {
        let r = call(&s, "POST", &format!("{path}?{q}=x"), orders, good.clone()).await;
        assert_eq!(r.error(), (400, "key_in_query"), "{q}");
    }
    let r = call(
        &s,
        "GET",
        &format!("{path}?limit=1&access_token={}", key("orders")),
        None,
        None,
    )
    .await;
    assert_eq!(r.error(), (400, "key_in_query"));
    // No key, a wrong key, a key in another scheme.
    let r = call(&s, "POST", path, None, good.clone()).await;
    assert_eq!(r.error(), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        call(&s, "POST", path, Some("wsc_wrong"), good.clone())
            .await
            .error(),
        (401, "unauthorized")
    );
    let basic = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Length: 13\r\n\r\n{{\"text\":\"hi\"}}",
        key("orders")
    );
    assert_eq!(
        parse_reply(&s.https_raw(basic.as_bytes()).await).error(),
        (401, "unauthorized")
    );
    // A key without the scope.
    let r = call(&s, "POST", path, Some(key("reporting")), good.clone()).await;
    assert_eq!(r.error(), (403, "forbidden"));
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/kick",
        orders,
        Some(json!({"user": "bob"})),
    )
    .await;
    assert_eq!(r.error(), (403, "forbidden"));
    // Unknown paths and methods.
    assert_eq!(
        call(&s, "GET", "/api/v1/nope", orders, None).await.error(),
        (404, "not_found")
    );
    assert_eq!(
        call(&s, "GET", "/api/v1/rooms/lobby/other", orders, None)
            .await
            .error(),
        (404, "not_found")
    );
    let r = call(&s, "PUT", path, orders, good.clone()).await;
    assert_eq!(r.error(), (405, "method_not_allowed"));
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = call(&s, "POST", "/api/v1/rooms/lobby/presence", orders, None).await;
    assert_eq!(
        (r.error(), r.header("allow")),
        ((405, "method_not_allowed"), Some("GET"))
    );
    // Bodies: malformed, wrong shape, empty after sanitising, too long, over the limit.
    for (body, want) in [
        (r#"{"text":"#.to_string(), (400, "bad_request")),
        (json!({"text": 5}).to_string(), (400, "bad_request")),
        (
            json!({"text": "x", "to": "all"}).to_string(),
            (400, "bad_request"),
        ),
        (
            json!({"text": "x", "from": "a\nb"}).to_string(),
            (400, "bad_request"),
        ),
        (
            json!({"text": "<script>x</script>"}).to_string(),
            (400, "empty"),
        ),
        (
            json!({"text": "x".repeat(101)}).to_string(),
            (413, "too_long"),
        ),
    ] {
        let r = call_raw(&s, "POST", path, orders, &body).await;
        assert_eq!(r.error(), want, "{body}");
    }
    // Content-Length past the limit: refused before the body is sent at all.
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 10000000\r\n\r\n",
        key("orders")
    );
    assert_eq!(
        parse_reply(&s.https_raw(head.as_bytes()).await).error(),
        (413, "too_large")
    );
    // A chunked body is cut as soon as it passes the limit, whatever follows.
    let chunk = "y".repeat(2000);
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n",
        key("orders"),
        chunk.len(),
        chunk.len()
    );
    assert_eq!(
        parse_reply(&s.https_raw(chunked.as_bytes()).await).error(),
        (413, "too_large")
    );
    // A room that does not exist (auto_create is off).
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/nowhere/messages",
        orders,
        good.clone(),
    )
    .await;
    assert_eq!(r.error(), (404, "room_not_found"));
    let r = call(&s, "GET", "/api/v1/rooms/nowhere/presence", orders, None).await;
    assert_eq!(r.error(), (404, "room_not_found"));
    // Nothing of this reached the room: the first message still gets seq 1.
    let r = call(&s, "POST", path, orders, good).await;
    assert_eq!((r.status, r.body["seq"].as_u64()), (201, Some(1)), "{r:?}");
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_and_other_keys_are_unaffected() {
    let s = api_server(|c| {
        c.api.requests_per_second = 1;
        c.api.burst = 2;
    });
    let path = "/api/v1/rooms/lobby/presence";
    for _ in 0..2 {
        assert_eq!(
            call(&s, "GET", path, Some(key("orders")), None)
                .await
                .status,
            200
        );
    }
    let r = call(&s, "GET", path, Some(key("orders")), None).await;
    assert_eq!(r.error(), (429, "rate_limited"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{r:?}");
    assert_eq!(
        call(&s, "GET", path, Some(key("reporting")), None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn history_and_presence_read_as_the_socket_does_and_no_key_is_logged() {
    let s = api_server(|c| c.history.store = HistoryStore::Sqlite);
    let mut alice = s.join("alice", "lobby").await;
    let _alice2 = s.join("alice", "lobby").await;
    let _bob = s.join("bob", "lobby").await;
    for i in 1..=3 {
        send_json(
            &mut alice,
            json!({"type": "message", "text": format!("m{i}"), "id": format!("m{i}")}),
        )
        .await;
        assert_eq!(recv_json(&mut alice).await["seq"], i);
    }
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/messages",
        Some(key("orders")),
        Some(json!({"text": "from the api"})),
    )
    .await;
    assert_eq!(r.body["seq"], 4, "{r:?}");
    assert_eq!(recv_json(&mut alice).await["seq"], 4);
    let reader = Some(key("reporting"));
    let page = call(
        &s,
        "GET",
        "/api/v1/rooms/lobby/messages?limit=2",
        reader,
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.body["has_more"], true);
    let msgs = page.body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        (
            msgs[0]["seq"].as_u64(),
            msgs[0]["text"].as_str(),
            msgs[0].get("via")
        ),
        (Some(3), Some("m3"), None)
    );
    assert_eq!(
        (msgs[1]["seq"].as_u64(), msgs[1]["via"].as_str()),
        (Some(4), Some("api"))
    );
    // The same page the socket gets.
    send_json(
        &mut alice,
        json!({"type": "history", "limit": 2, "id": "h"}),
    )
    .await;
    let frame = recv_json(&mut alice).await;
    assert_eq!(
        (&frame["messages"], &frame["has_more"]),
        (&page.body["messages"], &page.body["has_more"])
    );
    let older = call(
        &s,
        "GET",
        "/api/v1/rooms/lobby/messages?before=2",
        reader,
        None,
    )
    .await;
    assert_eq!(
        older.body,
        json!({"messages": [page_of(&older)[0].clone()], "has_more": false})
    );
    assert_eq!(page_of(&older)[0]["seq"], 1);
    for bad in [
        "limit=0",
        "limit=abc",
        "before=-1",
        "limit=1&limit=2",
        "before=1.5",
    ] {
        let r = call(
            &s,
            "GET",
            &format!("/api/v1/rooms/lobby/messages?{bad}"),
            reader,
            None,
        )
        .await;
        assert_eq!(r.error(), (400, "bad_request"), "{bad}");
    }
    let all = call(
        &s,
        "GET",
        "/api/v1/rooms/lobby/messages?limit=1000",
        reader,
        None,
    )
    .await;
    assert_eq!(page_of(&all).len(), 4);
    let p = call(&s, "GET", "/api/v1/rooms/lobby/presence", reader, None).await;
    assert_eq!(p.body, json!({"members": ["alice", "bob"]}));
    // Debug logging is on in tests: no key, whole or in part, in any line.
    for (_, k, _) in KEYS {
        let tail = &k[k.len() - 12..];
        assert!(
            !s.log().iter().any(|l| l.contains(tail)),
            "a key reached the log"
        );
    }
}

fn page_of(r: &Reply) -> Vec<Value> {
    r.body["messages"].as_array().cloned().unwrap_or_default()
}
