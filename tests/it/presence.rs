//! Presence: the welcome's sorted `members`, a `join` when a user's first connection opens and
//! a `leave` when the last one goes (a dropped TCP connection included, within 5 s), nothing
//! for second tabs, nothing at all with presence off. Presence frames carry no seq.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::*;

fn presence(c: &mut Config) {
    c.presence.enabled = true;
}

/// Join and return the socket and its welcome.
async fn enter(s: &Server, user: &str) -> (Ws, Value) {
    s.enter(user, "lobby").await
}

fn members(welcome: &Value) -> Vec<&str> {
    welcome["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {welcome}"))
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect()
}

/// `from` says a marker; `to`'s next frame must be it (so nothing came before it).
async fn marker_next(from: &mut Ws, to: &mut Ws, text: &str) {
    send_json(from, json!({"type":"message","text":text})).await;
    let m = recv_json(to).await;
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str()),
        (Some("message"), Some(text)),
        "{m}"
    );
}

/// The next frame is exactly `{"type":kind,"user":user,"ts":...}`.
async fn expect_presence(ws: &mut Ws, kind: &str, user: &str) {
    let f = recv_json(ws).await;
    assert_eq!(
        (f["type"].as_str(), f["user"].as_str()),
        (Some(kind), Some(user)),
        "{f}"
    );
    assert!(f["ts"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(f.as_object().unwrap().len(), 3, "no seq, nothing else: {f}");
}

#[tokio::test]
async fn members_are_listed_and_only_first_and_last_connections_are_announced() {
    let s = Server::start_with(|c| {
        presence(c);
        c.presence.max_listed = 2;
    });
    let (mut alice, w) = enter(&s, "alice").await;
    assert_eq!(members(&w), ["alice"]);
    assert!(w.get("members_truncated").is_none(), "{w}");
    let (mut bob, w) = enter(&s, "bob").await;
    assert_eq!(members(&w), ["alice", "bob"]);
    expect_presence(&mut alice, "join", "bob").await;
    // A second tab: listed once, announced to nobody.
    let (bob2, w) = enter(&s, "bob").await;
    assert_eq!(members(&w), ["alice", "bob"]);
    marker_next(&mut bob, &mut alice, "m1").await;
    // Beyond max_listed: the first two, sorted, and truncated.
    let (carol, w) = enter(&s, "carol").await;
    assert_eq!(members(&w), ["alice", "bob"]);
    assert_eq!(w["members_truncated"], true);
    expect_presence(&mut alice, "join", "carol").await;
    expect_presence(&mut bob, "join", "carol").await;
    drop(carol);
    expect_presence(&mut alice, "leave", "carol").await;
    // Closing one of two tabs: nothing; the last one: leave.
    drop(bob2);
    marker_next(&mut bob, &mut alice, "m2").await;
    bob.close(None).await.unwrap();
    expect_presence(&mut alice, "leave", "bob").await;
    // Presence took no seq: the next message is seq 3 after m1 and m2.
    let (mut bob, _) = enter(&s, "bob").await;
    expect_presence(&mut alice, "join", "bob").await;
    send_json(&mut bob, json!({"type":"message","text":"m3"})).await;
    assert_eq!(recv_json(&mut alice).await["seq"], 3);
}

/// Wait for `user`'s leave on `ws`, and return how long it took.
async fn leave_within(ws: &mut Ws, user: &str, started: Instant) -> Duration {
    tokio::time::timeout(Duration::from_secs(5), expect_presence(ws, "leave", user))
        .await
        .unwrap_or_else(|_| panic!("no leave for {user} within 5 s"));
    started.elapsed()
}

#[tokio::test]
async fn a_dropped_tcp_connection_gives_its_leave_within_5_s() {
    let s = Server::start_with(presence);
    let (mut alice, _) = enter(&s, "alice").await;
    // RST: linger 0, then drop.
    let (bob, _) = enter(&s, "bob").await;
    expect_presence(&mut alice, "join", "bob").await;
    bob.get_ref().get_ref().0.set_zero_linger().unwrap();
    let t = Instant::now();
    drop(bob);
    leave_within(&mut alice, "bob", t).await;
    // FIN without a Close or close_notify; the socket stays open.
    let (mut carol, _) = enter(&s, "carol").await;
    expect_presence(&mut alice, "join", "carol").await;
    let t = Instant::now();
    carol.get_mut().get_mut().0.shutdown().await.unwrap();
    leave_within(&mut alice, "carol", t).await;
    drop(carol);
}

#[tokio::test]
async fn with_presence_off_there_are_no_members_and_no_join_or_leave() {
    let s = Server::start();
    let (mut alice, w) = enter(&s, "alice").await;
    assert!(w.get("members").is_none(), "{w}");
    let (mut bob, _) = enter(&s, "bob").await;
    let (carol, _) = enter(&s, "carol").await;
    drop(carol);
    // Had carol's join or leave been sent, it would come before this.
    marker_next(&mut bob, &mut alice, "only this").await;
}
