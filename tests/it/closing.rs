//! The closing handshake (RFC 6455 section 7.1.1) seen by clients that keep sending: each
//! reads the frames that explain its close and then the Close with its code, instead of a
//! reset (1006) because the server dropped a socket with unread input.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// How long a client below waits before it starts reading, while it sends: long enough that
/// the server has decided to close and queued its Close behind data the client has not read.
const READ_AFTER: Duration = Duration::from_millis(300);

/// A client whose receive window is tiny, so what the server sends it stays queued in the
/// server's socket until it reads: there, a server that drops the socket with unread input
/// (a reset) destroys it, the Close included.
async fn narrow_client(s: &Server, user: &str, room: &str) -> Ws {
    s.join_over(s.tcp_from("127.0.0.1", Some(4096)).await, user, room)
        .await
}

/// Fill the narrow clients' windows: `filler` says three messages of 4000 bytes.
async fn fill_windows(filler: &mut Ws) {
    for i in 0..3 {
        say(filler, &format!("{i} {}", "w".repeat(4000))).await;
    }
}

/// Split `ws`, keep sending from a task every `every` (as fast as the socket takes it when
/// zero) until a send fails, start reading after [`READ_AFTER`] and read until the server's
/// Close. Returns the data frames read before it (as JSON), the Close code and how many frames
/// were sent; a connection that ends without a Close fails the test, as a browser would
/// report 1006.
async fn send_all_the_time_and_read(ws: Ws, every: Duration) -> (Vec<Value>, CloseCode, u64) {
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let m = Message::text(format!(r#"{{"type":"message","text":"m{sent}"}}"#));
            if tx.send(m).await.is_err() {
                return sent;
            }
            sent += 1;
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
    });
    tokio::time::sleep(READ_AFTER).await;
    let mut frames = Vec::new();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("no Close within 10 s")
        {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => break f.code,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("connection ended without a Close: {other:?} after {frames:?}"),
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("the sender never stopped")
        .unwrap();
    (frames, code, sent)
}

#[tokio::test]
async fn a_flooding_client_reads_its_rate_limited_errors_and_then_1008() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 2;
        c.limits.burst = 3;
        c.limits.max_violations = 5;
    });
    let flooder = narrow_client(&s, "alice", "lobby").await;
    let mut bob = s.join("bob", "lobby").await;
    fill_windows(&mut bob).await;
    let (frames, code, sent) = send_all_the_time_and_read(flooder, Duration::ZERO).await;
    assert_eq!(code, CloseCode::Policy);
    let refusals = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert_eq!(
        refusals, 4,
        "max_violations = 5: four refusals, then the close: {frames:?}"
    );
    assert!(sent > 8, "the client kept sending ({sent} frames)");
    let line = s
        .wait_log("reason=\"rate limit exceeded repeatedly\"")
        .await;
    assert!(line.contains("code=1008"), "{line}");
}

#[tokio::test]
async fn an_oversize_frame_among_others_gets_1009() {
    let s = Server::start_with(|c| c.server.close_grace_ms = 1000);
    let mut ws = narrow_client(&s, "alice", "lobby").await;
    let mut bob = s.join("bob", "lobby").await;
    fill_windows(&mut bob).await;
    // 4096 + 1024 envelope is the frame limit; more frames follow for as long as the server
    // lets the client write.
    let big = format!(r#"{{"type":"message","text":"{}"}}"#, "x".repeat(6000));
    ws.send(Message::text(big)).await.unwrap();
    let (frames, code, sent) = send_all_the_time_and_read(ws, Duration::from_millis(2)).await;
    assert_eq!(code, CloseCode::Size, "after {frames:?}");
    assert!(sent > 10, "the client kept sending ({sent} frames)");
}

#[tokio::test]
async fn a_slow_consumer_that_keeps_sending_reads_1013_once_it_reads() {
    // A reader with a tiny receive window that does not read, but sends all the time.
    let (s, slow) = with_slow_reader(|_| {}).await;
    let (mut slow_tx, mut slow_rx) = slow.split();
    let sender = tokio::spawn(async move {
        let mut sent = 0u32;
        while slow_tx.send(Message::text(format!("{sent}"))).await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });
    let mut alice = s.join("alice", "other").await;
    let text = "z".repeat(4000);
    let mut n = 0;
    while !s.log().iter().any(|l| l.contains("closing with 1013")) {
        assert!(n < 5000, "never closed as a slow consumer");
        say(&mut alice, &text).await;
        n += 1;
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // It goes on sending, not reading, for part of the grace; then it reads: everything
    // buffered, then the Close.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow_rx.next().await {
                Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
                Some(Ok(_)) => continue,
                other => panic!("ended without a Close: {other:?}"),
            }
        }
    })
    .await
    .expect("no Close within 5 s");
    assert_eq!(code, Some(CloseCode::Again));
    let sent = tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("the slow client's sender never stopped")
        .unwrap();
    assert!(sent >= 10, "the slow client kept sending ({sent})");
}

#[tokio::test]
async fn shutdown_while_every_client_sends_gives_each_1001() {
    let mut s = Server::start_with(|c| c.server.shutdown_timeout_ms = 5000);
    let mut clients = Vec::new();
    for (user, room) in [("alice", "lobby"), ("bob", "lobby"), ("dave", "other")] {
        clients.push(narrow_client(&s, user, room).await);
    }
    let mut carol = s.join("carol", "lobby").await;
    fill_windows(&mut carol).await;
    clients.push(carol);
    s.signal("TERM");
    let all = futures_util::future::join_all(
        clients
            .into_iter()
            .map(|ws| send_all_the_time_and_read(ws, Duration::from_millis(1))),
    )
    .await;
    for (frames, code, _) in all {
        assert_eq!(code, CloseCode::Away, "after {} frames", frames.len());
    }
    let status = s
        .wait_exit(Duration::from_secs(6))
        .expect("server did not exit");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_peer_that_never_answers_the_close_is_cut_at_the_grace() {
    let grace = Duration::from_millis(1000);
    let s = Server::start_with(|c| c.server.close_grace_ms = grace.as_millis() as u64);
    let mut ws = s.join("alice", "lobby").await;
    let (mut r, mut w) = tokio::io::split(ws.get_mut());
    // A binary frame gets Close 1003; then the peer pings every 10 ms and never sends Close.
    w.write_all(&frame(0x82, b"bin")).await.unwrap();
    let writer = async {
        while w.write_all(&frame(0x89, b"still here")).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let reader = async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let mut close_seen = None;
        loop {
            match r.read(&mut buf).await {
                Ok(n) if n > 0 => raw.extend_from_slice(&buf[..n]),
                _ => break,
            }
            if close_seen.is_none() && last_close_code(&raw).is_some() {
                close_seen = Some(Instant::now());
            }
        }
        (last_close_code(&raw), close_seen.map(|t| t.elapsed()))
    };
    let ((code, open_after_close), ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(reader, writer)
    })
    .await
    .expect("connection still open after 5 s");
    assert_eq!(code, Some(1003));
    let held = open_after_close.expect("a Close frame");
    assert!(
        held >= grace - Duration::from_millis(100) && held < grace + Duration::from_millis(750),
        "socket closed {held:?} after the Close; grace {grace:?}"
    );
}

#[tokio::test]
async fn after_a_protocol_error_the_peers_close_ends_it_at_once() {
    // A frame with a reserved bit is read whole, so the server still finds the peer's Close
    // in what follows and shuts the socket then, not at the end of the grace (2 s).
    let s = Server::start();
    let mut ws = s.join("alice", "lobby").await;
    let (mut r, mut w) = tokio::io::split(ws.get_mut());
    w.write_all(&frame(0xC1, b"rsv1")).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while last_close_code(&raw).is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf))
            .await
            .expect("no Close")
            .unwrap();
        assert!(n > 0, "ended without a Close");
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(last_close_code(&raw), Some(1002));
    let answered = Instant::now();
    w.write_all(&frame(0x88, &1002u16.to_be_bytes()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
    let took = answered.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "closed {took:?} after the peer's Close"
    );
}
