//! Slow, dead, greedy and departing clients; deploys and certificate renewals.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;
use wss_chat::config::HistoryStore;

/// How long after `start` the server closed this socket, reading and discarding what arrives.
async fn time_to_eof<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    start: Instant,
    limit: Duration,
) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("socket still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn connection_caps_close_at_accept_before_tls() {
    let s = Server::start_with(|c| {
        c.server.max_connections = 3;
        c.server.max_connections_per_ip = 2;
    });
    let _a = s.join("alice", "lobby").await;
    let _b = s.join("bob", "lobby").await;
    // The third from 127.0.0.1 is closed at once: no ServerHello, no TLS work, just EOF.
    let mut over = s.tcp_from("127.0.0.1", None).await;
    let waited = time_to_eof(&mut over, Instant::now(), Duration::from_secs(2)).await;
    assert!(waited < Duration::from_millis(1000), "{waited:?}");
    // Another address still gets in...
    let _c = s
        .join_over(s.tcp_from("127.0.0.2", None).await, "carol", "lobby")
        .await;
    // ...until the global cap is reached.
    let mut global = s.tcp_from("127.0.0.3", None).await;
    let waited = time_to_eof(&mut global, Instant::now(), Duration::from_secs(2)).await;
    assert!(waited < Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn per_user_and_per_room_caps() {
    let s = Server::start_with(|c| {
        c.server.max_connections_per_user = 2;
        c.rooms.max_members = 3;
    });
    let a1 = s.join("alice", "lobby").await;
    let _a2 = s.join("alice", "lobby").await;
    let auth = format!("Bearer {}", token("alice"));
    let third = s
        .upgrade(
            "/rooms/other",
            &[("Origin", ORIGIN), ("Authorization", &auth)],
        )
        .await;
    assert_eq!(third.err(), Some(429));
    drop(a1);
    s.wait_log("code=1006").await;
    let _a3 = s.join("alice", "lobby").await;
    // lobby now holds alice twice and max_members is 3.
    let _b = s.join("bob", "lobby").await;
    let auth = format!("Bearer {}", token("carol"));
    let full = s
        .upgrade(
            "/rooms/lobby",
            &[("Origin", ORIGIN), ("Authorization", &auth)],
        )
        .await;
    assert_eq!(full.err(), Some(503));
}

#[tokio::test]
async fn slowloris_is_dropped_at_the_handshake_deadline_and_others_get_in() {
    let s = Server::start_with(|c| {
        c.server.handshake_timeout_ms = 600;
    });
    let limit = Duration::from_secs(3);
    let opened = Instant::now();
    // 1. TCP that never sends a ClientHello.
    let mut silent = s.tcp_from("127.0.0.1", None).await;
    // 2. TLS that never sends the HTTP request.
    let mut no_request = s.tls().await;
    // 3. TLS that sends the request a byte at a time.
    let mut dribble = s.tls().await;
    let dribbler = tokio::spawn(async move {
        let start = Instant::now();
        for b in b"GET /rooms/lobby HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n".iter() {
            if dribble.write_all(&[*b]).await.is_err() || dribble.flush().await.is_err() {
                return start.elapsed();
            }
            let mut probe = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(150), dribble.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
                _ => {}
            }
        }
        panic!("the whole request was dribbled in without the server hanging up");
    });
    // A real client gets in while all three hang.
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    say(&mut a, "not blocked").await;
    assert_eq!(recv_json(&mut b).await["text"], "not blocked");

    for (name, waited) in [
        (
            "no ClientHello",
            time_to_eof(&mut silent, opened, limit).await,
        ),
        (
            "no request",
            time_to_eof(&mut no_request, opened, limit).await,
        ),
        ("dribbled request", dribbler.await.unwrap()),
    ] {
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(2000),
            "{name}: closed after {waited:?}, deadline 600 ms"
        );
    }
}

/// A member that reads more slowly than the room talks: its socket stays nearly full, so the
/// fan-out's write-through (SQLite's, the shipped store) often leaves frames, some cut
/// mid-frame, to the member's writer, which must send them before anything queued later. It
/// gets every message, in order, each once.
#[tokio::test]
async fn a_reader_that_falls_behind_gets_every_message_in_order() {
    let (s, mut slow) = with_slow_reader(|c| {
        c.limits.outbound_queue_bytes = 32 << 20;
        c.history.store = HistoryStore::Sqlite;
    })
    .await;
    let mut sender = s.join("alice", "other").await;
    let mut healthy = s.join("bob", "other").await;
    let (n, text) = (1500, "q".repeat(3990));
    let (mut read, mut seq) = (0, None);
    let mut read_slow = async |upto: usize| {
        while read < upto {
            let m = recv_json(&mut slow).await;
            assert_eq!(m["type"], "message", "{m}");
            let got = m["text"].as_str().unwrap();
            assert_eq!(got.split(' ').next(), Some(read.to_string().as_str()));
            let s = m["seq"].as_u64().unwrap();
            assert!(seq.is_none_or(|p| s == p + 1), "seq {s} after {seq:?}");
            seq = Some(s);
            read += 1;
        }
    };
    // In bursts, so one commit (and one write-through) holds many frames: more than the TLS
    // stream takes into a socket that the slow reader keeps nearly full by reading only half
    // of each burst.
    for burst in (0..n).collect::<Vec<_>>().chunks(100) {
        for i in burst {
            say(&mut sender, &format!("{i} {text}")).await;
        }
        for i in burst {
            let m = recv_json(&mut healthy).await;
            assert!(m["text"].as_str().unwrap().starts_with(&format!("{i} ")));
        }
        read_slow(burst[0] / 2).await;
    }
    read_slow(n).await;
    // Nothing more: the next frame is the marker sent after them.
    let (marker, _m) = send_marker(&s, "other").await;
    expect_marker_next(&mut slow, &marker).await;
}

#[tokio::test]
async fn slow_consumer_is_closed_1013_and_the_room_keeps_its_pace() {
    // A reader with a tiny receive window that never reads.
    let (s, mut slow) = with_slow_reader(|_| {}).await;
    let mut sender = s.join("alice", "other").await;
    let mut healthy = s.join("bob", "other").await;

    let text = "z".repeat(4000);
    // Keep the room busy until the server gives up on the slow reader: its 64 KiB queue fills
    // once the kernel's socket buffers (which autotune to megabytes on loopback) are full.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut sent_count = 0;
    while !s.log().iter().any(|l| l.contains("slow consumer")) {
        assert!(sent_count < 5000, "never closed as a slow consumer");
        let sent = Instant::now();
        say(&mut sender, &format!("{sent_count} {text}")).await;
        let m = recv_json(&mut healthy).await;
        assert!(m["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{sent_count} ")));
        worst = worst.max(sent.elapsed());
        sent_count += 1;
    }
    // The bound: a healthy client never waits more than 250 ms for any message, even while
    // the server is giving up on the slow one.
    assert!(
        worst < Duration::from_millis(250),
        "worst delivery {worst:?}"
    );
    eprintln!(
        "{sent_count} messages in {:?}, worst {worst:?}",
        start.elapsed()
    );

    // The slow reader, reading now, finds after what was buffered the Close that says why.
    assert_eq!(expect_close(&mut slow).await, CloseCode::Again);
    let line = s.wait_log("reason=\"slow consumer\"").await;
    assert!(
        line.contains("code=1013") && line.contains("user=dave"),
        "{line}"
    );
}

/// A slow consumer that never reads again: the Close cannot reach it (its socket is full), so
/// nothing the peer does wakes the session; it is cut at `close_grace_ms` all the same.
#[tokio::test]
async fn a_slow_consumer_that_never_reads_is_cut_at_the_close_grace() {
    let (s, _slow) = with_slow_reader(|c| c.server.close_grace_ms = 500).await;
    let mut sender = s.join("alice", "other").await;
    let mut healthy = s.join("bob", "other").await;
    let text = "z".repeat(4000);
    let mut sent_count = 0;
    while !s.log().iter().any(|l| l.contains("closing with 1013")) {
        assert!(sent_count < 5000, "never closed as a slow consumer");
        say(&mut sender, &format!("{sent_count} {text}")).await;
        recv_json(&mut healthy).await;
        sent_count += 1;
    }
    let began = Instant::now();
    // Waits up to 5 s: without the session woken at the start of closing, it waits until
    // the peer reads or the next ping (25 s).
    let line = s.wait_log("reason=\"slow consumer\"").await;
    assert!(line.contains("user=dave"), "{line}");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "cut after {took:?} for a 500 ms grace"
    );
}

#[tokio::test]
async fn dead_peer_is_closed_after_idle_timeout_while_a_live_one_stays() {
    let s = Server::start_with(|c| {
        c.server.ping_interval_ms = 200;
        c.server.idle_timeout_ms = 700;
        // The dead peer never answers our Close; the live one must not miss pings meanwhile.
        c.server.close_grace_ms = 300;
    });
    let mut live = s.join("alice", "lobby").await;
    let mut dead = s.join("bob", "lobby").await;
    // The live client reads (and so answers pings) for well past the idle timeout.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while let Ok(m) = tokio::time::timeout_at(until.into(), live.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("live client got {other:?}"),
        }
    }
    assert!(pings >= 4, "{pings} pings");
    // The dead one never read, so never answered: it was closed with 1001. Its socket is
    // read raw, because a WebSocket client would first try to answer the stale pings.
    let mut raw = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(3), dead.get_mut().read_to_end(&mut raw)).await;
    assert_eq!(last_close_code(&raw), Some(1001));
    let line = s.wait_log("reason=\"idle timeout\"").await;
    assert!(
        line.contains("user=bob") && line.contains("code=1001"),
        "{line}"
    );
    say(&mut live, "still here").await;
    let mut other = s.join("carol", "lobby").await;
    say(&mut live, "and here").await;
    assert_eq!(recv_json(&mut other).await["text"], "and here");
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits_0() {
    let mut s = Server::start_with(|c| {
        c.server.shutdown_timeout_ms = 3000;
    });
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "other").await;
    s.signal("TERM");
    let start = Instant::now();
    assert_eq!(expect_close(&mut a).await, CloseCode::Away);
    // While b has not answered its Close the server is still draining: it runs, and it
    // already accepts no new connection.
    assert!(
        s.wait_exit(Duration::ZERO).is_none(),
        "exited before draining"
    );
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    assert_eq!(expect_close(&mut b).await, CloseCode::Away);
    drop((a, b));
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("server did not exit");
    assert_eq!(status.code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_refuses_a_broken_pair() {
    let mut s = Server::start();
    let mut live = s.join("alice", "lobby").await;

    let ca2 = TestCa::new();
    std::fs::write(s.path("cert.pem"), &ca2.leaf_pem).unwrap();
    std::fs::write(s.path("key.pem"), &ca2.key_pem).unwrap();
    s.signal("HUP");
    s.wait_log("certificate reloaded").await;

    // New handshakes get the new certificate: the old CA no longer verifies it...
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    assert!(s.try_tls(tcp).await.is_err());
    // ...the new one does.
    s.trusted_ca = ca2.ca_der.clone();
    let mut fresh = s.join("bob", "lobby").await;
    // The live connection kept going across the reload.
    say(&mut live, "across the reload").await;
    assert_eq!(recv_json(&mut fresh).await["text"], "across the reload");

    // A mismatched pair is refused and the current one stays in use.
    let ca3 = TestCa::new();
    std::fs::write(s.path("cert.pem"), &ca3.leaf_pem).unwrap();
    s.signal("HUP");
    let line = s.wait_log("certificate reload refused").await;
    assert!(line.contains("do not form a usable pair"), "{line}");
    assert!(!line.contains("PRIVATE KEY"), "{line}");
    let _again = s.join("carol", "lobby").await;
}

#[tokio::test]
async fn live_connection_is_closed_1008_when_its_token_expires() {
    let s = Server::start();
    let jwt = mint_jwt("erin", 2, None, JWT_SECRET);
    let mut ws = s
        .upgrade(
            "/rooms/lobby",
            &[
                ("Origin", ORIGIN),
                ("Authorization", &format!("Bearer {jwt}")),
            ],
        )
        .await
        .unwrap();
    let start = Instant::now();
    assert_eq!(recv_json(&mut ws).await["type"], "welcome");
    assert_eq!(expect_close(&mut ws).await, CloseCode::Policy);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let line = s.wait_log("reason=\"token expired\"").await;
    assert!(
        line.contains("user=erin") && line.contains("code=1008"),
        "{line}"
    );
}
