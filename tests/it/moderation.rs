//! Roles per room and moderation on the real binary: readers cannot post, moderators kick
//! (4003, then kept out until the ban ends), mute and delete (a tombstone everywhere the
//! message is read), from a socket or the API; every action in the audit log.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{call, key, with_keys};
use crate::support::*;

/// alice and carol moderate lobby; bob only reads "secret".
pub fn roles(c: &mut Config) {
    let role = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(room, r)| (room.to_string(), serde_json::from_value(json!(r)).unwrap()))
                .collect(),
        )
    };
    for u in &mut c.auth.users {
        u.roles = match u.name.as_str() {
            "alice" | "carol" => role(&[("lobby", "moderator")]),
            "bob" => role(&[("secret", "reader")]),
            _ => None,
        };
    }
    with_keys(c);
}

fn server(change: impl FnOnce(&mut Config)) -> Server {
    Server::start_with(|c| {
        roles(c);
        change(c);
    })
}

#[tokio::test]
async fn the_welcome_says_the_role_and_a_reader_cannot_post_or_moderate() {
    let s = server(|_| {});
    let (_, w) = s.enter("alice", "lobby").await;
    assert_eq!(w["role"], "moderator");
    let (_, w) = s.enter("alice", "other").await;
    assert_eq!(w["role"], "member", "member where a room is not named");
    let (mut bob, w) = s.enter("bob", "secret").await;
    assert_eq!(w["role"], "reader");
    let mut carol = s.join("carol", "secret").await;
    send_json(
        &mut bob,
        json!({"type": "message", "text": "hi", "id": "b1"}),
    )
    .await;
    let e = recv_json(&mut bob).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("forbidden"), Some("b1")),
        "{e}"
    );
    // A reader still pages history.
    send_json(&mut bob, json!({"type": "history", "id": "h"})).await;
    assert_eq!(recv_json(&mut bob).await["type"], "history");
    // A member (carol in secret) cannot moderate.
    send_json(
        &mut carol,
        json!({"type": "mute", "user": "bob", "seconds": 5, "id": "m"}),
    )
    .await;
    let e = recv_json(&mut carol).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("m")),
        "{e}"
    );
    expect_nothing_more(&s, &mut carol, "secret").await;
    // A signed token's roles claim; an unknown role makes the token invalid.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |roles: Value| {
        let claims = json!({"sub": "erin", "exp": now + 600, "roles": roles});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let join = |tok: String| {
        let auth = format!("Bearer {tok}");
        let s = &s;
        async move {
            s.upgrade(
                "/rooms/lobby",
                &[("Origin", ORIGIN), ("Authorization", &auth)],
            )
            .await
        }
    };
    let mut erin = join(mint(json!({"lobby": "reader"}))).await.unwrap();
    assert_eq!(recv_json(&mut erin).await["role"], "reader");
    assert_eq!(join(mint(json!({"lobby": "admin"}))).await.err(), Some(401));
}

#[tokio::test]
async fn a_kick_closes_every_connection_of_the_user_in_that_room_4003_until_the_ban_ends() {
    let s = server(|c| c.moderation.kick_ban_s = 2);
    let mut alice = s.join("alice", "lobby").await;
    let mut carol = s.join("carol", "lobby").await;
    let mut bob1 = s.join("bob", "lobby").await;
    let mut bob2 = s.join("bob", "lobby").await;
    let mut bob_other = s.join("bob", "other").await;
    let kick = json!({"type": "kick", "user": "bob", "reason": "spamming links", "id": "k1"});
    send_json(&mut alice, kick).await;
    let done = recv_json(&mut alice).await;
    assert_eq!(
        (
            done["type"].as_str(),
            done["action"].as_str(),
            done["user"].as_str(),
            done["id"].as_str()
        ),
        (Some("moderation"), Some("kick"), Some("bob"), Some("k1")),
        "{done}"
    );
    let seen = recv_json(&mut carol).await;
    assert_eq!(
        (
            seen["action"].as_str(),
            seen["user"].as_str(),
            seen["by"].as_str(),
            seen["reason"].as_str()
        ),
        (
            Some("kick"),
            Some("bob"),
            Some("alice"),
            Some("spamming links")
        ),
        "{seen}"
    );
    assert!(
        seen.get("id").is_none(),
        "the id is the moderator's: {seen}"
    );
    for ws in [&mut bob1, &mut bob2] {
        let (code, reason) = close_of(ws).await;
        assert_eq!((code, reason.as_str()), (4003, "spamming links"));
    }
    // Their other room is untouched.
    let mut dave = s.join("dave", "other").await;
    say(&mut dave, "still here?").await;
    assert_eq!(recv_json(&mut bob_other).await["text"], "still here?");
    // Kept out of lobby (403), then let in again once the ban ends.
    assert_eq!(s.try_enter("bob", "lobby").await.err(), Some(403));
    let started = std::time::Instant::now();
    while s.try_enter("bob", "lobby").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ban did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(1000));
    // Refusals: another moderator, a user not in the room, a malformed request.
    for (frame, code) in [
        (
            json!({"type": "kick", "user": "carol", "id": "x"}),
            "forbidden",
        ),
        (
            json!({"type": "kick", "user": "erin", "id": "x"}),
            "not_present",
        ),
        (
            json!({"type": "kick", "user": "dave", "reason": "a\nb", "id": "x"}),
            "bad_request",
        ),
    ] {
        send_json(&mut alice, frame).await;
        let e = next_non_message(&mut alice).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{e}"
        );
    }
    let audit = s.wait_log(r#"action="kick""#).await;
    for part in [
        r#"room="lobby""#,
        r#"by="alice""#,
        r#"user="bob""#,
        r#"reason="spamming links""#,
        "via=\"socket\"",
    ] {
        assert!(audit.contains(part), "{part} missing from {audit}");
    }
    expect_nothing_more(&s, &mut carol, "lobby").await;
}

/// The Close frame's code and reason.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    use futures_util::StreamExt;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no close");
        match next {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.to_string())
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_muted_user_reaches_nobody_until_the_mute_ends() {
    let s = server(|c| c.moderation.max_mute_s = 60);
    let mut alice = s.join("alice", "lobby").await;
    let mut bob = s.join("bob", "lobby").await;
    send_json(
        &mut alice,
        json!({"type": "mute", "user": "bob", "seconds": 61, "id": "m0"}),
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["code"], "bad_request");
    send_json(
        &mut alice,
        json!({"type": "mute", "user": "bob", "seconds": 2, "id": "m1"}),
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["action"], "mute");
    let seen = recv_json(&mut bob).await;
    assert_eq!(
        (
            seen["type"].as_str(),
            seen["action"].as_str(),
            seen["seconds"].as_u64()
        ),
        (Some("moderation"), Some("mute"), Some(2)),
        "{seen}"
    );
    send_json(
        &mut bob,
        json!({"type": "message", "text": "let me talk", "id": "b1"}),
    )
    .await;
    let e = recv_json(&mut bob).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("muted"), Some("b1")),
        "{e}"
    );
    let wait = e["retry_after_ms"].as_u64().unwrap();
    assert!((1..=2000).contains(&wait), "{e}");
    expect_nothing_more(&s, &mut alice, "lobby").await;
    // Then they flow again.
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let started = std::time::Instant::now();
    loop {
        send_json(
            &mut bob,
            json!({"type": "message", "text": "back", "id": "b2"}),
        )
        .await;
        let r = next_non_message(&mut bob).await;
        if r["type"] == "ack" {
            break;
        }
        assert_eq!(r["code"], "muted", "{r}");
        assert!(started.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = recv_json(&mut alice).await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("bob"), Some("back"))
    );
}

#[tokio::test]
async fn a_deleted_message_is_a_tombstone_live_in_history_backlogs_the_api_and_after_restart() {
    let mut s = server(|c| c.history.store = HistoryStore::Sqlite);
    let (mut alice, welcome) = s.enter("alice", "lobby").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let mut bob = s.join("bob", "lobby").await;
    for i in 1..=3 {
        send_json(
            &mut bob,
            json!({"type": "message", "text": format!("m{i}"), "id": format!("m{i}")}),
        )
        .await;
        assert_eq!(recv_json(&mut bob).await["seq"], i);
        assert_eq!(recv_json(&mut alice).await["seq"], i);
    }
    send_json(&mut alice, json!({"type": "delete", "seq": 2, "id": "d"})).await;
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "deleted", "seq": 2, "by": "alice"})
    );
    let done = recv_json(&mut alice).await;
    assert_eq!(
        (
            done["action"].as_str(),
            done["seq"].as_u64(),
            done["id"].as_str()
        ),
        (Some("delete"), Some(2), Some("d")),
        "{done}"
    );
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"type": "deleted", "seq": 2, "by": "alice"})
    );
    let m = recv_json(&mut bob).await;
    assert_eq!(
        (m["type"].as_str(), m["action"].as_str(), m["seq"].as_u64()),
        (Some("moderation"), Some("delete"), Some(2))
    );
    send_json(&mut alice, json!({"type": "delete", "seq": 9, "id": "d9"})).await;
    assert_eq!(recv_json(&mut alice).await["code"], "not_found");
    send_json(&mut bob, json!({"type": "delete", "seq": 1, "id": "d1"})).await;
    assert_eq!(recv_json(&mut bob).await["code"], "forbidden");
    check_everywhere(&s, &epoch).await;
    s.restart();
    check_everywhere(&s, &epoch).await;
    let audit = s.wait_log(r#"action="delete""#).await;
    assert!(
        audit.contains("seq=2") && audit.contains(r#"by="alice""#),
        "{audit}"
    );
}

fn tombstone(v: &Value) {
    assert_eq!(
        (
            v["seq"].as_u64(),
            v["deleted"].as_bool(),
            v["text"].as_str()
        ),
        (Some(2), Some(true), Some("")),
        "{v}"
    );
}

/// Seq 2 of lobby is a tombstone in a backlog, a history page, a resume and the API.
async fn check_everywhere(s: &Server, epoch: &str) {
    let (mut carol, w) = s.enter("carol", "lobby").await;
    assert_eq!(w["epoch"], epoch);
    let backlog = [
        recv_json(&mut carol).await,
        recv_json(&mut carol).await,
        recv_json(&mut carol).await,
    ];
    tombstone(&backlog[1]);
    assert_eq!(
        (backlog[0]["text"].as_str(), backlog[2]["text"].as_str()),
        (Some("m1"), Some("m3"))
    );
    send_json(&mut carol, json!({"type": "history", "id": "h"})).await;
    let page = recv_json(&mut carol).await;
    tombstone(&page["messages"][1]);
    // Resume from seq 1: the tombstone then seq 3, nothing lost or doubled.
    let (mut again, w) = s
        .enter("carol", &format!("lobby?since=1&epoch={epoch}"))
        .await;
    assert_eq!(w["recovered"], true);
    tombstone(&recv_json(&mut again).await);
    assert_eq!(recv_json(&mut again).await["seq"], 3);
    let api = call(
        s,
        "GET",
        "/api/v1/rooms/lobby/messages",
        Some(key("orders")),
        None,
    )
    .await;
    tombstone(&api.body["messages"][1]);
    assert_eq!(api.body["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_api_moderates_with_the_moderate_scope_and_is_audited() {
    let s = server(|c| c.history.store = HistoryStore::Memory);
    let mut alice = s.join("alice", "lobby").await;
    let mut bob = s.join("bob", "lobby").await;
    say(&mut bob, "first").await;
    assert_eq!(recv_json(&mut alice).await["seq"], 1);
    let trust = Some(key("trust"));
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/mute",
        trust,
        Some(json!({"user": "bob", "seconds": 30})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.body["action"].as_str(), r.body["by"].as_str()),
        (Some("mute"), Some("trust"))
    );
    let seen = recv_json(&mut alice).await;
    assert_eq!(
        (
            seen["action"].as_str(),
            seen["user"].as_str(),
            seen["by"].as_str()
        ),
        (Some("mute"), Some("bob"), Some("trust"))
    );
    assert_eq!(recv_json(&mut bob).await["action"], "mute");
    let r = call(&s, "DELETE", "/api/v1/rooms/lobby/messages/1", trust, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "deleted", "seq": 1, "by": "trust"})
    );
    assert_eq!(recv_json(&mut alice).await["action"], "delete");
    let r = call(&s, "DELETE", "/api/v1/rooms/lobby/messages/99", trust, None).await;
    assert_eq!(r.error(), (404, "not_found"));
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/kick",
        trust,
        Some(json!({"user": "alice"})),
    )
    .await;
    assert_eq!(r.error(), (403, "forbidden"));
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/kick",
        trust,
        Some(json!({"user": "erin"})),
    )
    .await;
    assert_eq!(r.error(), (409, "not_present"));
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/kick",
        trust,
        Some(json!({"user": "bob", "reason": "bye"})),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(close_of(&mut bob).await, (4003, "bye".to_string()));
    assert_eq!(s.try_enter("bob", "lobby").await.err(), Some(403));
    let r = call(
        &s,
        "POST",
        "/api/v1/rooms/lobby/mute",
        Some(key("orders")),
        Some(json!({"user": "bob", "seconds": 3})),
    )
    .await;
    assert_eq!(r.error(), (403, "forbidden"));
    let audit = s.wait_log(r#"action="kick""#).await;
    assert!(
        audit.contains(r#"by="trust""#)
            && audit.contains("via=\"api\"")
            && audit.contains(r#"reason="bye""#),
        "{audit}"
    );
    s.wait_log(r#"action="mute""#).await;
}

#[tokio::test]
async fn the_terminal_client_moderates_with_commands_and_stops_when_kicked() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let s = server(|_| {});
    let mut bob_ws = s.join("bob", "lobby").await;
    // alice's client: a command line becomes a moderation frame.
    let mut alice_py = crate::first_minutes::chat_py(&s, token("alice"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = alice_py.stdin.take().unwrap();
    stdin.write_all(b"/mute bob 5\n").await.unwrap();
    let m = recv_json(&mut bob_ws).await;
    assert_eq!(
        (
            m["action"].as_str(),
            m["user"].as_str(),
            m["by"].as_str(),
            m["seconds"].as_u64()
        ),
        (Some("mute"), Some("bob"), Some("alice"), Some(5)),
        "{m}"
    );
    drop(stdin);
    let _ = alice_py.wait().await;
    // bob's client is kicked: it says so and exits instead of reconnecting into the ban.
    let mut bob_py = crate::first_minutes::chat_py(&s, token("bob"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _keep_open = bob_py.stdin.take();
    let mut out = tokio::io::BufReader::new(bob_py.stdout.take().unwrap()).lines();
    while let Some(line) = out.next_line().await.unwrap() {
        if line.starts_with("connected as bob") {
            break;
        }
    }
    let mut alice = s.join("alice", "lobby").await;
    send_json(
        &mut alice,
        json!({"type": "kick", "user": "bob", "reason": "too loud"}),
    )
    .await;
    let status = tokio::time::timeout(Duration::from_secs(10), bob_py.wait())
        .await
        .expect("chat.py went on after a kick")
        .unwrap();
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    bob_py
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("removed from the room by a moderator: too loud"),
        "{err}"
    );
    assert!(!err.contains("reconnecting"), "{err}");
}
