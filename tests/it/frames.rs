//! Frames a well-behaved client would never send: each closes that one connection with the
//! RFC 6455 code, sent as a Close frame, and the room carries on.

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use futures_util::SinkExt;

use crate::support::*;

/// A masked client frame with the given first byte (FIN, RSV, opcode) and payload.
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

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
    expect_silence(&mut b, 200).await;
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
