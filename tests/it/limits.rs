//! Rate limits: a flooding client is refused, then closed, while the room carries on.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn flood_gets_rate_limited_then_1008_while_others_chat_normally() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 2;
        c.limits.burst = 3;
        c.limits.max_violations = 5;
    });
    let mut flooder = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    let mut c = s.join("carol", "lobby").await;

    for i in 0..20 {
        say(&mut flooder, &format!("flood {i}")).await;
    }
    // The burst gets through, then refusals with a wait, then the connection is closed.
    let mut refusals = 0;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut flooder),
        )
        .await
        .expect("flooder heard nothing")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let e: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(e["code"], "rate_limited", "{e}");
                let wait = e["retry_after_ms"].as_u64().unwrap();
                assert!((1..=1000).contains(&wait), "{wait}");
                refusals += 1;
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::Policy);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        refusals, 4,
        "max_violations = 5: four refusals, the fifth closes"
    );

    // Exactly the burst reached the others.
    for ws in [&mut b, &mut c] {
        for i in 0..3 {
            assert_eq!(recv_json(ws).await["text"], format!("flood {i}"));
        }
    }
    // Nothing more of the flood: the next thing both see is a marker said after it.
    let (marker, _m) = send_marker(&s, "lobby").await;
    expect_marker_next(&mut b, &marker).await;
    expect_marker_next(&mut c, &marker).await;
    // And the others still chat normally.
    say(&mut b, "hello carol").await;
    assert_eq!(recv_json(&mut c).await["text"], "hello carol");
    say(&mut c, "hello bob").await;
    assert_eq!(recv_json(&mut b).await["text"], "hello bob");
}

#[tokio::test]
async fn user_quota_is_shared_across_connections() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.burst = 2;
        c.limits.max_violations = 100;
    });
    let mut a1 = s.join("alice", "lobby").await;
    let mut a2 = s.join("alice", "lobby").await;
    // "one" is processed (acked) before a2 sends, so the order of the quota's use is fixed:
    // two connections' frames are otherwise read in whatever order the server gets to them.
    send_json(&mut a1, json!({"type":"message","text":"one","id":"1"})).await;
    assert_eq!(recv_json(&mut a1).await["type"], "ack");
    say(&mut a2, "two").await;
    say(&mut a2, "three").await;
    // a2 hears a1's "one", then is refused for "three": the user's burst of 2 is spent.
    assert_eq!(recv_json(&mut a2).await["text"], "one");
    assert_eq!(recv_json(&mut a2).await["code"], "rate_limited");
}

#[tokio::test]
async fn ping_flood_counts_toward_the_limit_then_1008() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 2;
        c.limits.burst = 3;
        c.limits.max_violations = 5;
    });
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    // burst 3 + max_violations 5: the 8th ping ends it; the rest arrive after the server's
    // Close and get no pong (the server drains them while it waits for the client's Close).
    for _ in 0..20 {
        futures_util::SinkExt::send(
            &mut a,
            tokio_tungstenite::tungstenite::Message::Ping(vec![7].into()),
        )
        .await
        .unwrap();
    }
    let mut pongs = 0;
    let code = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut a),
        )
        .await
        .expect("no close after a ping flood")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(_))) => pongs += 1,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => break f.code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, CloseCode::Policy);
    // tungstenite answers each ping it reads before we see it, so the 8 pings up to the
    // limit get pongs; none after it. Without the limit: 20 pongs and no Close.
    assert_eq!(pongs, 8, "{pongs} pongs for 20 pings");
    say(&mut b, "fine").await;
    let mut c = s.join("carol", "lobby").await;
    say(&mut b, "still fine").await;
    assert_eq!(recv_json(&mut c).await["text"], "still fine");
}
