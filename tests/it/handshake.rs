//! Every refused upgrade gets the exact HTTP status, and nothing reaches a room.

use crate::support::*;

fn bearer(user: &str) -> String {
    format!("Bearer {}", token(user))
}

#[tokio::test]
async fn origin_checks_refuse_with_403() {
    let s = Server::start();
    let auth = bearer("alice");
    let mut watcher = s.join("bob", "lobby").await;
    assert_eq!(
        s.upgrade("/rooms/lobby", &[("Authorization", &auth)])
            .await
            .err(),
        Some(403)
    );
    for origin in [
        "https://evil.example.net",
        "null",
        "https://chat.example.com.evil.net",
        "https://evil-chat.example.com",
        "https://chatexample.com",
        "https://other.example.com",
        "https://corp.example.com",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "https://chat.example.com/",
    ] {
        let r = s
            .upgrade(
                "/rooms/lobby",
                &[("Origin", origin), ("Authorization", &auth)],
            )
            .await;
        assert_eq!(r.err(), Some(403), "origin {origin}");
    }
    // Allowed after normalising case and default port, and by the subdomain pattern.
    for origin in ["https://CHAT.example.com:443", "https://a.corp.example.com"] {
        assert!(
            s.upgrade(
                "/rooms/lobby",
                &[("Origin", origin), ("Authorization", &auth)]
            )
            .await
            .is_ok(),
            "origin {origin}"
        );
    }
    expect_silence(&mut watcher, 200).await;
    let log = s.log().join("\n");
    assert!(
        log.contains("origin not allowed") && log.contains("origin missing"),
        "{log}"
    );
}

#[tokio::test]
async fn token_checks_refuse_with_401() {
    let s = Server::start();
    let o = ("Origin", ORIGIN);
    assert_eq!(s.upgrade("/rooms/lobby", &[o]).await.err(), Some(401));
    for auth in [
        "Bearer wrong-token".to_string(),
        // Differs from alice's token only in its last character.
        "Bearer alice-token-2".to_string(),
        "Bearer ".to_string() + &mint_jwt("alice", -3600, None, JWT_SECRET),
        "Bearer ".to_string()
            + &mint_jwt("alice", 3600, None, "some-other-secret-0123456789abcdef"),
        "Bearer not.a.jwt".to_string(),
    ] {
        assert_eq!(
            s.upgrade("/rooms/lobby", &[o, ("Authorization", &auth)])
                .await
                .err(),
            Some(401),
            "{auth}"
        );
    }
    // The query string carries no token while allow_query_token is off.
    let path = format!("/rooms/lobby?token={}", token("alice"));
    assert_eq!(s.upgrade(&path, &[o]).await.err(), Some(401));
    let log = s.log().join("\n");
    assert!(
        log.contains("token missing") && log.contains("token expired"),
        "{log}"
    );
    for (_, tok) in USERS {
        assert!(!log.contains(tok), "a token leaked into the log");
    }
}

#[tokio::test]
async fn room_not_in_token_and_missing_room_get_the_same_403() {
    let s = Server::start();
    let o = ("Origin", ORIGIN);
    let dave = bearer("dave");
    assert!(s
        .upgrade("/rooms/other", &[o, ("Authorization", &dave)])
        .await
        .is_ok());
    assert_eq!(
        s.upgrade("/rooms/lobby", &[o, ("Authorization", &dave)])
            .await
            .err(),
        Some(403)
    );
    let alice = bearer("alice");
    assert_eq!(
        s.upgrade("/rooms/no-such-room", &[o, ("Authorization", &alice)])
            .await
            .err(),
        Some(403)
    );
    let jwt = format!(
        "Bearer {}",
        mint_jwt("erin", 3600, Some(vec!["other"]), JWT_SECRET)
    );
    assert_eq!(
        s.upgrade("/rooms/lobby", &[o, ("Authorization", &jwt)])
            .await
            .err(),
        Some(403)
    );
    // The bodies match too, so a client cannot tell a missing room from a forbidden one.
    let forbidden = s
        .https_raw(
            format!(
                "GET /rooms/lobby HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ORIGIN}\r\n\
                 Authorization: {dave}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let missing = s
        .https_raw(
            format!(
                "GET /rooms/nope HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ORIGIN}\r\n\
                 Authorization: {dave}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let strip_date = |r: &str| {
        r.lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(forbidden.starts_with("HTTP/1.1 403"), "{forbidden}");
    assert_eq!(strip_date(&forbidden), strip_date(&missing));
}

#[tokio::test]
async fn signed_token_and_every_token_carrier() {
    let s = Server::start();
    let o = ("Origin", ORIGIN);
    let jwt = mint_jwt("erin", 3600, Some(vec!["lobby"]), JWT_SECRET);
    let mut ws = s
        .upgrade(
            "/rooms/lobby",
            &[o, ("Authorization", &format!("Bearer {jwt}"))],
        )
        .await
        .unwrap();
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["user"], "erin");
    assert_eq!(welcome["limits"]["max_message_bytes"], 4096);

    // Browsers: the token rides in the subprotocol list and the 101 names wss-chat.v1 only.
    let proto = format!("wss-chat.v1, bearer.{}", token("bob"));
    let (mut ws, resp) = s
        .upgrade_full("/rooms/lobby", &[o, ("Sec-WebSocket-Protocol", &proto)])
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "wss-chat.v1");
    assert_eq!(recv_json(&mut ws).await["user"], "bob");

    let cookie = format!("theme=dark; wss_chat_token={}", token("carol"));
    let mut ws = s
        .upgrade("/rooms/lobby", &[o, ("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await["user"], "carol");
}

#[tokio::test]
async fn query_token_only_when_allowed_and_never_logged() {
    let s = Server::start_with(&Opts {
        allow_query_token: true,
        ..Opts::default()
    });
    let path = format!("/rooms/lobby?token={}", token("alice"));
    let mut ws = s.upgrade(&path, &[("Origin", ORIGIN)]).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["user"], "alice");
    let bad = s
        .upgrade("/rooms/lobby?token=guessed-secret", &[("Origin", ORIGIN)])
        .await;
    assert_eq!(bad.err(), Some(401));
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = s.log().join("\n");
    assert!(
        log.contains("loosened default: auth.allow_query_token"),
        "{log}"
    );
    assert!(
        !log.contains(token("alice")) && !log.contains("guessed-secret"),
        "{log}"
    );
}

#[tokio::test]
async fn handshake_rate_per_address_gets_429_with_retry_after() {
    let s = Server::start_with(&Opts {
        handshakes_per_minute_per_ip: 3,
        ..Opts::default()
    });
    for _ in 0..3 {
        assert_eq!(
            s.upgrade("/rooms/lobby", &[("Origin", ORIGIN)]).await.err(),
            Some(401)
        );
    }
    assert_eq!(
        s.upgrade("/rooms/lobby", &[("Origin", ORIGIN)]).await.err(),
        Some(429)
    );
    let raw = s
        .https_raw(b"GET /rooms/lobby HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    let retry: u64 = raw
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_owned)
        })
        .expect("Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn plain_https_gets_426_404_and_healthz() {
    let s = Server::start();
    let r = s
        .https_raw(b"GET /rooms/lobby HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("sec-websocket-version: 13"),
        "{r}"
    );
    let r = s
        .https_raw(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = s
        .https_raw(
            b"GET /rooms/bad%2Fname HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = s
        .https_raw(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
    let r = s
        .https_raw(
            format!(
                "GET /rooms/lobby HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ORIGIN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("sec-websocket-version: 13"),
        "{r}"
    );
}

#[tokio::test]
async fn tls_13_with_post_quantum_hybrid_key_exchange() {
    let s = Server::start();
    let tls = s.tls().await;
    let conn = tls.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}
