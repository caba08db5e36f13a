//! Frames a well-behaved client would never send: each closes that one connection with the
//! RFC 6455 code, sent as a Close frame, and the room carries on.

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use futures_util::{SinkExt, StreamExt};

use crate::support::*;

/// Write raw bytes under an open WebSocket and return the close code the server sends.
pub async fn raw_close_code(ws: &mut Ws, bytes: &[u8]) -> CloseCode {
    ws.get_mut().write_all(bytes).await.unwrap();
    ws.get_mut().flush().await.unwrap();
    expect_close(ws).await
}

#[tokio::test]
async fn oversize_frame_closes_1009_and_others_continue() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    let mut c = s.join("carol", "lobby").await;
    // 4096 + 1024 envelope is the frame limit.
    let big = format!(r#"{{"type":"message","text":"{}"}}"#, "x".repeat(6000));
    assert_eq!(
        raw_close_code(&mut a, &frame(0x81, big.as_bytes())).await,
        CloseCode::Size
    );
    expect_nothing_more(&s, &mut b, "lobby").await;
    say(&mut c, "still here").await;
    assert_eq!(recv_json(&mut b).await["text"], "still here");
}

#[tokio::test]
async fn fragmented_message_over_the_limit_closes_1009() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut bytes = frame(0x01, &[b'x'; 1000]);
    for _ in 0..10 {
        bytes.extend(frame(0x00, &[b'x'; 1000]));
    }
    bytes.extend(frame(0x80, b"x"));
    assert_eq!(raw_close_code(&mut a, &bytes).await, CloseCode::Size);
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    assert_eq!(
        raw_close_code(&mut a, &frame(0x81, b"ab\xff\xfecd")).await,
        CloseCode::Invalid
    );
}

#[tokio::test]
async fn binary_frame_closes_1003() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    a.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(expect_close(&mut a).await, CloseCode::Unsupported);
}

#[tokio::test]
async fn protocol_violations_close_1002() {
    let s = Server::start();
    for (name, bytes) in [
        ("rsv bits", frame(0xC1, b"{}")),
        ("reserved opcode", frame(0x83, b"")),
        ("continuation without start", frame(0x80, b"x")),
        ("control frame over 125 bytes", frame(0x89, &[0u8; 126])),
        ("fragmented ping", frame(0x09, b"x")),
    ] {
        let mut a = s.join("alice", "lobby").await;
        assert_eq!(
            raw_close_code(&mut a, &bytes).await,
            CloseCode::Protocol,
            "{name}"
        );
    }
}

#[tokio::test]
async fn more_protocol_violations_close_1002() {
    let s = Server::start();
    let unmasked = {
        let mut f = vec![0x81, 2];
        f.extend_from_slice(b"{}");
        f
    };
    let mut data_inside_fragment = frame(0x01, b"{\"type\":");
    data_inside_fragment.extend(frame(0x81, b"{}"));
    let mut bad_close_code = 999u16.to_be_bytes().to_vec();
    bad_close_code.extend_from_slice(b"bye");
    for (name, bytes) in [
        ("unmasked client frame", unmasked),
        (
            "new data frame inside a fragmented message",
            data_inside_fragment,
        ),
        ("close code 999", frame(0x88, &bad_close_code)),
        (
            "close code 1005 (reserved, never sent)",
            frame(0x88, &1005u16.to_be_bytes()),
        ),
        ("close frame with a 1-byte payload", frame(0x88, &[3])),
    ] {
        let mut a = s.join("alice", "lobby").await;
        assert_eq!(
            raw_close_code(&mut a, &bytes).await,
            CloseCode::Protocol,
            "{name}"
        );
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_close_reason_closes_1007() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye \xc3\x28");
    assert_eq!(
        raw_close_code(&mut a, &frame(0x88, &payload)).await,
        CloseCode::Invalid
    );
}

#[tokio::test]
async fn a_2_pow_62_length_header_closes_1009_at_once_without_allocating() {
    let s = Server::start();
    let mut b = s.join("bob", "lobby").await;
    let before = s.rss_kib();
    let mut a = s.join("alice", "lobby").await;
    // FIN + text, masked, 64-bit length 2^62, a mask, then a few bytes of "payload".
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(b"abcd");
    let start = std::time::Instant::now();
    assert_eq!(raw_close_code(&mut a, &header).await, CloseCode::Size);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    let after = s.rss_kib();
    assert!(
        after < before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let mut c = s.join("carol", "lobby").await;
    say(&mut c, "unharmed").await;
    assert_eq!(recv_json(&mut b).await["text"], "unharmed");
}

#[tokio::test]
async fn json_depth_bomb_and_wide_object_get_an_error_not_a_crash() {
    // Under the default limit a 20 KB bomb does not even fit a frame: 1009.
    let s = Server::start();
    let bomb = "[".repeat(10_000) + &"]".repeat(10_000);
    let mut a = s.join("alice", "lobby").await;
    a.send(Message::text(bomb.clone())).await.unwrap();
    assert_eq!(expect_close(&mut a).await, CloseCode::Size);

    // With room for it, serde_json's recursion limit refuses it as a bad request.
    let s = Server::start_with(|c| {
        c.limits.max_message_bytes = 64 * 1024;
    });
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    a.send(Message::text(bomb)).await.unwrap();
    assert_eq!(recv_json(&mut a).await["code"], "bad_request");
    let deep_text = format!(
        r#"{{"type":"message","text":"deep","extra":{}{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    a.send(Message::text(deep_text)).await.unwrap();
    assert_eq!(recv_json(&mut a).await["code"], "bad_request");
    let wide: String = (0..1000).map(|i| format!(r#","k{i}":{i}"#)).collect();
    a.send(Message::text(format!(
        r#"{{"type":"message","text":"wide"{wide}}}"#
    )))
    .await
    .unwrap();
    assert_eq!(recv_json(&mut b).await["text"], "wide");
    say(&mut a, "still serving").await;
    assert_eq!(recv_json(&mut b).await["text"], "still serving");
}

/// The server writes chat frames itself (socket.rs) and tungstenite writes the pongs: with
/// pings and messages arriving together, every pong comes back with its own payload and every
/// message whole and in order, and nothing else (a pong cut by a chat frame would be a
/// protocol error here).
#[tokio::test]
async fn pongs_and_chat_frames_interleave_whole() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 1000;
        c.limits.burst = 1000;
    });
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    for i in 0..50u8 {
        a.send(Message::Ping(vec![i; 1 + i as usize].into()))
            .await
            .unwrap();
        say(&mut b, &format!("m{i}")).await;
    }
    let (mut pongs, mut texts) = (Vec::new(), Vec::new());
    while pongs.len() < 50 || texts.len() < 50 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), a.next())
            .await
            .expect("timed out")
            .expect("stream ended")
            .expect("read error");
        match m {
            Message::Pong(p) => pongs.push(p.to_vec()),
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    texts.push(v["text"].as_str().unwrap().to_string());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want_pongs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + i as usize]).collect();
    assert_eq!(pongs, want_pongs);
    let want_texts: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want_texts);
    expect_nothing_more(&s, &mut a, "lobby").await;
}
