//! Rooms that remember (the default SQLite store): the welcome's epoch and seq, the backlog on join,
//! and resuming with `since` and `epoch` with nothing lost or shown twice.

use serde_json::{json, Value};

use crate::support::*;

fn stored(c: &mut Config) {
    c.history.store = HistoryStore::Sqlite;
}

/// Post `n` messages as `ws` (with ids, waiting for each ack); returns their seqs.
async fn post(ws: &mut Ws, prefix: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        send_json(
            ws,
            json!({"type":"message","text":format!("{prefix} {i}"),"id":id}),
        )
        .await;
        let ack = recv_json(ws).await;
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_str()),
            (Some("ack"), Some(id.as_str())),
            "{ack}"
        );
        seqs.push(ack["seq"].as_u64().unwrap());
    }
    seqs
}

/// Join with a query (resume) and return the socket after its welcome, and the welcome.
async fn join_with(s: &Server, user: &str, query: &str) -> Result<(Ws, Value), u16> {
    s.try_enter(user, &format!("lobby{query}")).await
}

async fn seqs_of(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = recv_json(ws).await;
        assert_eq!(m["type"], "message", "{m}");
        out.push(m["seq"].as_u64().unwrap());
    }
    out
}

#[tokio::test]
async fn a_joiner_gets_the_epoch_the_top_seq_and_the_last_messages_then_live() {
    let s = Server::start_with(|c| {
        stored(c);
        c.history.on_join = 3;
    });
    let mut alice = s.join("alice", "lobby").await;
    assert_eq!(post(&mut alice, "a", 5).await, [1, 2, 3, 4, 5]);
    let (mut bob, welcome) = join_with(&s, "bob", "").await.unwrap();
    assert_eq!(welcome["seq"], 5);
    assert!(!welcome["epoch"].as_str().unwrap().is_empty());
    assert!(welcome.get("recovered").is_none(), "{welcome}");
    // The last three, oldest first, exactly as live frames look.
    let first = recv_json(&mut bob).await;
    assert_eq!(
        (
            first["from"].as_str(),
            first["text"].as_str(),
            first["seq"].as_u64()
        ),
        (Some("alice"), Some("a 2"), Some(3))
    );
    assert!(first["ts"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(seqs_of(&mut bob, 2).await, [4, 5]);
    // Then live, and nothing else before it.
    post(&mut alice, "b", 1).await;
    assert_eq!(seqs_of(&mut bob, 1).await, [6]);
    // Another joiner sees the same epoch.
    let (_carol, w2) = join_with(&s, "carol", "").await.unwrap();
    assert_eq!(w2["epoch"], welcome["epoch"]);
    assert_eq!(w2["seq"], 6);
}

#[tokio::test]
async fn resume_gives_exactly_what_was_missed_while_others_keep_posting() {
    let s = Server::start_with(stored);
    let mut alice = s.join("alice", "lobby").await;
    let (mut bob, welcome) = join_with(&s, "bob", "").await.unwrap();
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    post(&mut alice, "x", 3).await;
    assert_eq!(seqs_of(&mut bob, 3).await, [1, 2, 3]);
    drop(bob);
    post(&mut alice, "y", 4).await; // missed: 4..=7
                                    // Alice keeps posting while bob comes back.
    let stream = tokio::spawn(async move {
        post(&mut alice, "z", 20).await;
        alice
    });
    let (mut bob, welcome) = join_with(&s, "bob", &format!("?since=3&epoch={epoch}"))
        .await
        .unwrap();
    assert_eq!(welcome["recovered"], true, "{welcome}");
    // 4..=27 in order, none twice, none missing, across the backlog and live.
    assert_eq!(seqs_of(&mut bob, 24).await, (4..=27).collect::<Vec<_>>());
    stream.await.unwrap();
    let (marker, _m) = send_marker(&s, "lobby").await;
    expect_marker_next(&mut bob, &marker).await;
}

#[tokio::test]
async fn a_resume_that_cannot_be_exact_says_so_and_gets_the_last_messages() {
    let s = Server::start_with(|c| {
        stored(c);
        c.history.max_messages_per_room = 5;
        c.history.on_join = 2;
    });
    let mut alice = s.join("alice", "lobby").await;
    let (_b, welcome) = join_with(&s, "bob", "").await.unwrap();
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    post(&mut alice, "m", 10).await; // retained: 6..=10
    for query in [
        format!("?since=3&epoch=not-{epoch}"), // wrong epoch
        "?since=3".to_string(),                // no epoch
        format!("?since=11&epoch={epoch}"),    // beyond the top
        format!("?since=3&epoch={epoch}"),     // 4 and 5 are no longer retained
    ] {
        let (mut ws, welcome) = join_with(&s, "carol", &query).await.unwrap();
        assert_eq!(welcome["recovered"], false, "{query}: {welcome}");
        assert_eq!(seqs_of(&mut ws, 2).await, [9, 10], "{query}");
    }
    // The oldest retained is still exact: since=5 needs 6..=10.
    let (mut ws, welcome) = join_with(&s, "carol", &format!("?since=5&epoch={epoch}"))
        .await
        .unwrap();
    assert_eq!(welcome["recovered"], true);
    assert_eq!(seqs_of(&mut ws, 5).await, [6, 7, 8, 9, 10]);
    // Up to date: nothing to replay, recovered.
    let (mut ws, welcome) = join_with(&s, "carol", &format!("?since=10&epoch={epoch}"))
        .await
        .unwrap();
    assert_eq!(welcome["recovered"], true);
    expect_nothing_more(&s, &mut ws, "lobby").await;
}

#[tokio::test]
async fn a_since_that_is_not_a_whole_number_gets_400_before_the_upgrade() {
    let s = Server::start_with(stored);
    for bad in ["abc", "-1", "1.5", "", "18446744073709551616"] {
        let r = join_with(&s, "bob", &format!("?since={bad}&epoch=x")).await;
        assert_eq!(r.err(), Some(400), "since={bad}");
    }
    let line = s
        .wait_log("since must be a non-negative whole number")
        .await;
    assert!(line.contains("status=400"), "{line}");
}

#[tokio::test]
async fn with_history_off_the_welcome_has_epoch_and_seq_and_no_backlog() {
    let s = Server::start();
    let mut alice = s.join("alice", "lobby").await;
    post(&mut alice, "m", 2).await;
    let (mut bob, welcome) = join_with(&s, "bob", "").await.unwrap();
    assert_eq!(welcome["seq"], 2);
    assert!(!welcome["epoch"].as_str().unwrap().is_empty());
    expect_nothing_more(&s, &mut bob, "lobby").await;
}

/// Ask for a page and return its seqs and has_more.
async fn page(ws: &mut Ws, request: Value) -> (Vec<u64>, bool) {
    send_json(ws, request).await;
    let p = recv_json(ws).await;
    assert_eq!(
        (p["type"].as_str(), p["id"].as_str()),
        (Some("history"), Some("h")),
        "{p}"
    );
    let seqs = p["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(
                (m["type"].as_str(), m["room"].as_str()),
                (Some("message"), Some("lobby"))
            );
            m["seq"].as_u64().unwrap()
        })
        .collect();
    (seqs, p["has_more"].as_bool().unwrap())
}

#[tokio::test]
async fn history_pages_go_back_to_the_oldest_retained_and_refuse_bad_values() {
    let s = Server::start_with(|c| {
        stored(c);
        c.history.max_messages_per_room = 8;
        c.history.on_join = 8;
    });
    let mut alice = s.join("alice", "lobby").await;
    post(&mut alice, "m", 10).await; // retained: 3..=10
    let (mut bob, _) = join_with(&s, "bob", "").await.unwrap();
    seqs_of(&mut bob, 8).await; // the backlog
    let h = |before: Value, limit: Value| json!({"type":"history","id":"h","before":before,"limit":limit});
    assert_eq!(
        page(&mut bob, h(Value::Null, json!(3))).await,
        (vec![8, 9, 10], true)
    );
    assert_eq!(
        page(&mut bob, h(json!(8), json!(3))).await,
        (vec![5, 6, 7], true)
    );
    assert_eq!(
        page(&mut bob, h(json!(5), json!(3))).await,
        (vec![3, 4], false)
    );
    assert_eq!(page(&mut bob, h(json!(1), json!(3))).await, (vec![], false));
    // Defaults: everything retained (up to 50), and a limit over 100 is clamped, not refused.
    let all: Vec<u64> = (3..=10).collect();
    assert_eq!(
        page(&mut bob, json!({"type":"history","id":"h"})).await,
        (all.clone(), false)
    );
    assert_eq!(
        page(&mut bob, h(Value::Null, json!(500))).await,
        (all, false)
    );
    for (before, limit) in [
        (json!("x"), Value::Null),
        (json!(1.5), Value::Null),
        (json!(-1), Value::Null),
        (Value::Null, json!(0)),
        (Value::Null, json!(-3)),
        (Value::Null, json!("ten")),
    ] {
        send_json(&mut bob, h(before.clone(), limit.clone())).await;
        let e = recv_json(&mut bob).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
            (Some("error"), Some("bad_request"), Some("h")),
            "before {before} limit {limit}: {e}"
        );
    }
    expect_nothing_more(&s, &mut bob, "lobby").await;
}

#[tokio::test]
async fn a_resent_id_gets_the_original_ack_and_reaches_nobody_twice() {
    let s = Server::start_with(stored);
    let mut alice = s.join("alice", "lobby").await;
    let mut bob = s.join("bob", "lobby").await;
    let send = |text: &str| json!({"type":"message","text":text,"id":"r1"});
    send_json(&mut alice, send("<b>first</b>")).await;
    let ack = recv_json(&mut alice).await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["text"].as_str()),
        (Some(1), Some("first"))
    );
    assert_eq!(recv_json(&mut bob).await["seq"], 1);
    // Again on the same socket, and from a new one (the ack was lost with the old socket):
    // the original ack, the original text, nothing delivered.
    send_json(&mut alice, send("changed")).await;
    assert_eq!(recv_json(&mut alice).await, ack);
    let mut alice2 = s.join("alice", "lobby").await;
    assert_eq!(seqs_of(&mut alice2, 1).await, [1], "the backlog");
    send_json(&mut alice2, send("first")).await;
    assert_eq!(recv_json(&mut alice2).await, ack);
    expect_nothing_more(&s, &mut bob, "lobby").await;
    // The same id from another user, or in another room, is a new message.
    send_json(&mut bob, send("bob's")).await;
    let bobs = recv_json(&mut bob).await;
    assert_eq!(
        (bobs["type"].as_str(), bobs["seq"].as_u64()),
        (Some("ack"), Some(3)),
        "{bobs}"
    );
    let mut alice_other = s.join("alice", "other").await;
    send_json(&mut alice_other, send("elsewhere")).await;
    let other = recv_json(&mut alice_other).await;
    assert_eq!(
        (other["seq"].as_u64(), other["text"].as_str()),
        (Some(1), Some("elsewhere"))
    );
}
