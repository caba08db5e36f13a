//! Broadcast, acks, identity and sanitising, seen from the receiving clients.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn three_clients_each_get_the_others_messages_once_and_never_their_own() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    let mut c = s.join("carol", "lobby").await;
    let mut elsewhere = s.join("dave", "other").await;

    say(&mut a, "from alice").await;
    say(&mut b, "from bob").await;
    say(&mut c, "from carol").await;

    for (me, ws) in [("alice", &mut a), ("bob", &mut b), ("carol", &mut c)] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let m = recv_json(ws).await;
            assert_eq!(m["type"], "message");
            assert_eq!(m["room"], "lobby");
            assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
            assert_eq!(m["text"], format!("from {}", m["from"].as_str().unwrap()));
            got.push(m["from"].as_str().unwrap().to_string());
        }
        got.sort();
        let mut want: Vec<_> = ["alice", "bob", "carol"]
            .into_iter()
            .filter(|u| *u != me)
            .map(String::from)
            .collect();
        want.sort();
        assert_eq!(got, want, "{me} received");
        expect_silence(ws, 300).await;
    }
    expect_silence(&mut elsewhere, 100).await;
}

#[tokio::test]
async fn seq_increases_ack_carries_it_and_from_is_the_token_user() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    send_json(
        &mut a,
        json!({"type":"message","text":"one","id":"m1","from":"admin"}),
    )
    .await;
    send_json(&mut a, json!({"type":"message","text":"two","id":"m2"})).await;
    let ack1 = recv_json(&mut a).await;
    let ack2 = recv_json(&mut a).await;
    assert_eq!(ack1["type"], "ack");
    assert_eq!(ack1["id"], "m1");
    assert_eq!(ack2["id"], "m2");
    let one = recv_json(&mut b).await;
    let two = recv_json(&mut b).await;
    assert_eq!(one["from"], "alice");
    assert_eq!(one["text"], "one");
    assert_eq!(one["seq"], ack1["seq"]);
    assert_eq!(two["seq"], ack2["seq"]);
    assert_eq!(
        two["seq"].as_u64().unwrap(),
        one["seq"].as_u64().unwrap() + 1
    );
    expect_silence(&mut a, 200).await;
}

#[tokio::test]
async fn xss_payloads_arrive_inert() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    for (payload, want) in [
        // Script and style content is dropped with the tag; nothing is left, so it is refused.
        ("<script>alert(1)</script>", None),
        ("<img src=x onerror=alert(1)>", None),
        (r#"<a href="javascript:alert(1)">x</a>"#, Some("x")),
        ("hi <b onmouseover=alert(1)>there</b>", Some("hi there")),
        ("1 < 2 && 3 > 2", Some("1 &lt; 2 &amp;&amp; 3 &gt; 2")),
    ] {
        send_json(&mut a, json!({"type":"message","text":payload,"id":"x"})).await;
        let reply = recv_json(&mut a).await;
        match want {
            Some(text) => {
                assert_eq!(reply["type"], "ack", "{payload}");
                let m = recv_json(&mut b).await;
                assert_eq!(m["text"], text, "{payload}");
            }
            None => {
                assert_eq!(reply["type"], "error", "{payload}");
                assert_eq!(reply["code"], "empty", "{payload}");
                assert_eq!(reply["id"], "x");
            }
        }
    }
    expect_silence(&mut b, 200).await;
}

#[tokio::test]
async fn basic_mode_keeps_formatting_and_neuters_links() {
    let s = Server::start_with(&Opts {
        sanitize_mode: "basic",
        ..Opts::default()
    });
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    say(
        &mut a,
        r#"<b>bold</b> <a href="javascript:alert(1)" onclick="x()">x</a>"#,
    )
    .await;
    assert_eq!(
        recv_json(&mut b).await["text"],
        r#"<b>bold</b> <a rel="noopener noreferrer nofollow">x</a>"#
    );
}

#[tokio::test]
async fn bad_messages_get_their_error_codes_and_reach_nobody() {
    let s = Server::start();
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    let cases = [
        (
            json!({"type":"message","text":"x".repeat(4097),"id":"long"}),
            "too_long",
        ),
        (
            json!({"type":"message","text":"\u{202E}\u{200B} ","id":"e"}),
            "empty",
        ),
        (json!({"type":"message","id":"t"}), "bad_request"),
        (json!({"type":"shout","text":"hi"}), "bad_request"),
        (
            json!({"type":"message","text":"hi","id":"i".repeat(65)}),
            "bad_request",
        ),
    ];
    for (frame, code) in cases {
        send_json(&mut a, frame.clone()).await;
        let e = recv_json(&mut a).await;
        assert_eq!(e["type"], "error", "{frame}");
        assert_eq!(e["code"], code, "{frame}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.send(tokio_tungstenite::tungstenite::Message::text("not json"))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut a).await["code"], "bad_request");
    // Exactly at the limit is fine.
    say(&mut a, &"y".repeat(4096)).await;
    assert_eq!(
        recv_json(&mut b).await["text"].as_str().unwrap().len(),
        4096
    );
    expect_silence(&mut b, 200).await;
}

use futures_util::SinkExt;
