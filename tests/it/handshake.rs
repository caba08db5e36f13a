//! Every refused upgrade gets the exact HTTP status, and nothing reaches a room.

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

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
    expect_nothing_more(&s, &mut watcher, "lobby").await;
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
    let raw_upgrade = |room: &str| {
        format!(
            "GET /rooms/{room} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ORIGIN}\r\n\
             Authorization: {dave}\r\n\r\n"
        )
    };
    let forbidden = s.https_raw(raw_upgrade("lobby").as_bytes()).await;
    let missing = s.https_raw(raw_upgrade("nope").as_bytes()).await;
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
    let s = Server::start_with(|c| {
        c.auth.allow_query_token = true;
    });
    let path = format!("/rooms/lobby?token={}", token("alice"));
    let mut ws = s.upgrade(&path, &[("Origin", ORIGIN)]).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["user"], "alice");
    let bad = s
        .upgrade("/rooms/lobby?token=guessed-secret", &[("Origin", ORIGIN)])
        .await;
    assert_eq!(bad.err(), Some(401));
    drop(ws);
    // The last line this connection can log, so the whole log is in.
    s.wait_log("reason=\"connection lost\"").await;
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
    let s = Server::start_with(|c| {
        c.limits.handshakes_per_minute_per_ip = 3;
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

#[tokio::test]
async fn a_returning_client_resumes_its_tls_session_with_the_ticket_it_was_given() {
    // The tickets leave with the 101 rather than on their own (tls_io.rs): a client that
    // read its welcome holds one, and its next connection skips the full handshake.
    let s = Server::start();
    let connector = s.connector();
    for (i, kind) in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed]
        .into_iter()
        .enumerate()
    {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(kind),
            "connection {i}"
        );
        let mut ws = s.join_over_tls(tls, "alice", "lobby").await;
        let id = format!("m{i}");
        send_json(
            &mut ws,
            serde_json::json!({"type": "message", "text": "hello", "id": id}),
        )
        .await;
        let ack = recv_json(&mut ws).await;
        assert_eq!((&ack["type"], &ack["id"]), (&"ack".into(), &id.into()));
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn more_token_attacks_get_401_and_a_token_for_another_room_403() {
    let s = Server::start();
    let o = ("Origin", ORIGIN);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let not_yet = wss_chat::auth::mint(
        JWT_SECRET.as_bytes(),
        &wss_chat::auth::Claims {
            sub: "erin".into(),
            exp: now + 7200,
            nbf: Some(now + 3600),
            rooms: None,
            roles: None,
        },
    );
    let valid = mint_jwt("erin", 3600, None, JWT_SECRET);
    let payload = valid.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"} with no signature, and the same with "HS512".
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    let alg_hs512 = format!("eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.{payload}.");
    // The signature of a valid token on a payload it was not made for.
    let sig = valid.split('.').nth(2).unwrap();
    let other_payload = mint_jwt("mallory", 3600, None, "x".repeat(40).as_str());
    let spliced = format!(
        "{}.{}.{sig}",
        valid.split('.').next().unwrap(),
        other_payload.split('.').nth(1).unwrap()
    );
    for (name, auth) in [
        ("malformed", "Bearer %%%not a token%%%".to_string()),
        ("wrong scheme", format!("Basic {}", token("alice"))),
        ("alg none", format!("Bearer {alg_none}")),
        ("alg HS512 unsigned", format!("Bearer {alg_hs512}")),
        ("spliced payload", format!("Bearer {spliced}")),
        ("not yet valid", format!("Bearer {not_yet}")),
    ] {
        assert_eq!(
            s.upgrade("/rooms/lobby", &[o, ("Authorization", &auth)])
                .await
                .err(),
            Some(401),
            "{name}"
        );
    }
    let for_other = format!(
        "Bearer {}",
        mint_jwt("erin", 3600, Some(vec!["other"]), JWT_SECRET)
    );
    assert_eq!(
        s.upgrade("/rooms/lobby", &[o, ("Authorization", &for_other)])
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test]
async fn upper_case_look_alikes_are_refused_and_nothing_reaches_any_room() {
    let s = Server::start();
    let mut lobby = s.join("bob", "lobby").await;
    let mut other = s.join("dave", "other").await;
    let auth = format!("Bearer {}", token("alice"));
    for origin in [
        "HTTPS://CHAT.EXAMPLE.COM.EVIL.NET",
        "https://EVIL-chat.example.com",
        "https://Chat.Example.Com:8443",
        "HTTP://CHAT.EXAMPLE.COM",
    ] {
        for room in ["lobby", "other"] {
            let r = s
                .upgrade(
                    &format!("/rooms/{room}"),
                    &[("Origin", origin), ("Authorization", &auth)],
                )
                .await;
            assert_eq!(r.err(), Some(403), "{origin}");
        }
    }
    expect_nothing_more(&s, &mut lobby, "lobby").await;
    expect_nothing_more(&s, &mut other, "other").await;
}

fn upgrade_request(method: &str, version: &str, extra: &str) -> String {
    format!(
        "{method} /rooms/lobby {version}\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\
         Authorization: Bearer {}\r\n{extra}\r\n",
        token("alice")
    )
}

#[tokio::test]
async fn malformed_upgrades_never_get_101_and_the_server_keeps_serving() {
    let s = Server::start();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let huge = format!("{key}X-Big: {}\r\n", "a".repeat(100 * 1024));
    let many: String = key.to_string()
        + &(0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>();
    for (name, req, want) in [
        ("POST", upgrade_request("POST", "HTTP/1.1", key), "400"),
        ("HTTP/1.0", upgrade_request("GET", "HTTP/1.0", key), "400"),
        ("no key", upgrade_request("GET", "HTTP/1.1", ""), "400"),
        (
            "short key",
            upgrade_request("GET", "HTTP/1.1", "Sec-WebSocket-Key: abc\r\n"),
            "400",
        ),
        (
            "100 KB header",
            upgrade_request("GET", "HTTP/1.1", &huge),
            "431",
        ),
        (
            "500 headers",
            upgrade_request("GET", "HTTP/1.1", &many),
            "431",
        ),
    ] {
        let start = std::time::Instant::now();
        let resp = s.https_raw(req.as_bytes()).await;
        assert!(!resp.contains(" 101 "), "{name}: {resp}");
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        let version = if name == "HTTP/1.0" { "1.0" } else { "1.1" };
        assert!(
            resp.starts_with(&format!("HTTP/{version} {want} ")),
            "{name}: {resp}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{name}: slow close"
        );
    }
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    say(&mut a, "still serving").await;
    assert_eq!(recv_json(&mut b).await["text"], "still serving");
}

/// A ClientHello offering only `version` (no supported_versions extension) and `suites`.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]); // groups
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // point formats
    ext.extend_from_slice(&[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]); // sig algs
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

async fn tls_reply(s: &Server, hello: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
    buf
}

#[tokio::test]
async fn old_tls_versions_and_cbc_only_suites_are_refused() {
    let s = Server::start();
    const CBC: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    const GCM: [u16; 2] = [0xc02b, 0xc02f];
    for (name, hello, alert) in [
        ("TLS 1.0", client_hello([3, 1], &GCM), 70u8),
        ("TLS 1.1", client_hello([3, 2], &GCM), 70),
        (
            "TLS 1.2 with CBC suites only",
            client_hello([3, 3], &CBC),
            40,
        ),
    ] {
        let reply = tls_reply(&s, &hello).await;
        // A fatal alert record and nothing else: no ServerHello (a handshake record, 0x16).
        assert_eq!(reply.first(), Some(&0x15), "{name}: {reply:02x?}");
        assert_eq!(
            reply.get(5..7),
            Some(&[2, alert][..]),
            "{name}: {reply:02x?}"
        );
    }
    // The same hello with a suite we support gets a ServerHello, so the refusals above are
    // about the version and the suites, not a broken hello.
    let ok = tls_reply(&s, &client_hello([3, 3], &GCM)).await;
    assert_eq!(ok.first(), Some(&0x16), "{ok:02x?}");
}

#[tokio::test]
async fn plain_ws_to_the_tls_port_gets_400_never_101() {
    let s = Server::start();
    let reply = tls_reply(
        &s,
        upgrade_request(
            "GET",
            "HTTP/1.1",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        )
        .as_bytes(),
    )
    .await;
    let text = String::from_utf8_lossy(&reply);
    // Never an upgrade: a 400 that says to use TLS.
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("this port speaks TLS"), "{text}");
    let _still = s.join("alice", "lobby").await;
}

#[tokio::test]
async fn modern_profile_refuses_tls_12_and_intermediate_accepts_it() {
    let tls12_client = |s: &Server| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(s.trusted_ca.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
    };
    let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let intermediate = Server::start();
    let tcp = tokio::net::TcpStream::connect(intermediate.addr)
        .await
        .unwrap();
    let tls = tls12_client(&intermediate)
        .connect(name(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    let modern = Server::start_with(|c| c.tls.profile = TlsProfile::Modern);
    let tcp = tokio::net::TcpStream::connect(modern.addr).await.unwrap();
    assert!(tls12_client(&modern).connect(name(), tcp).await.is_err());
    let _ok = modern.join("alice", "lobby").await;
}

/// A client need not wait for the 101 before its first frame: one sent in the same write as
/// the upgrade request is the start of the WebSocket stream (hyper has read it along with the
/// request) and reaches the room.
#[tokio::test]
async fn a_frame_sent_in_the_same_write_as_the_upgrade_request_reaches_the_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start();
    let mut bob = s.join("bob", "lobby").await;
    let mut request = upgrade_request(
        "GET",
        "HTTP/1.1",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .into_bytes();
    request.extend(frame(0x81, br#"{"type":"message","text":"early"}"#));
    let mut alice = s.tls().await;
    alice.write_all(&request).await.unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), alice.read(&mut head))
        .await
        .expect("no answer to the upgrade")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    loop {
        let v = recv_json(&mut bob).await;
        if v["type"] == "message" {
            assert_eq!(
                (v["from"].as_str(), v["text"].as_str()),
                (Some("alice"), Some("early"))
            );
            break;
        }
    }
    expect_nothing_more(&s, &mut bob, "lobby").await;
}

/// The 101 waits for the session's first frames to leave with them in one write; a session
/// that has none to send (echo mode sends no welcome) must still get its 101 out at once.
#[tokio::test]
async fn an_echo_mode_server_answers_the_upgrade_without_waiting_for_a_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::start_with(|c| c.server.echo_mode = true);
    let auth = bearer("alice");
    let mut ws = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.upgrade(
            "/rooms/lobby",
            &[("Origin", ORIGIN), ("Authorization", &auth)],
        ),
    )
    .await
    .expect("the 101 never came")
    .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let back = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("no echo")
        .unwrap()
        .unwrap();
    assert_eq!(back, Message::text("hello"));
}
