//! Many nodes, one chat, on a real redis-server: one seq order for a room whatever node its
//! senders are on, resume on another node, a resend to another node answered with the
//! original, every key under the prefix with the room's hash tag, no password in any log.

use serde_json::{json, Value};

use crate::support::*;

fn node(redis: &Redis) -> Server {
    let (url, password_file) = (redis.url(), redis.password_file());
    Server::start_with(move |c| {
        c.history.store = HistoryStore::Redis;
        c.redis.url = Some(url);
        c.redis.password_file = Some(password_file);
    })
}

async fn join_q(s: &Server, user: &str, query: &str) -> (Ws, Value) {
    s.enter(user, &format!("lobby{query}")).await
}

/// The next `n` message frames as (seq, text).
async fn messages(ws: &mut Ws, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = recv_json(ws).await;
        if m["type"] == "message" {
            out.push((
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn senders_on_two_nodes_share_one_seq_order_and_resume_works_on_either() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (mut watch_a, welcome) = join_q(&a, "carol", "").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let (mut watch_b, welcome_b) = join_q(&b, "carol", "").await;
    assert_eq!(
        welcome_b["epoch"],
        epoch.as_str(),
        "one epoch for the room on every node"
    );
    let (mut alice, _) = join_q(&a, "alice", "").await;
    let (mut bob, _) = join_q(&b, "bob", "").await;
    // Both send 30 at once, without waiting; each is acked in order.
    for i in 0..30 {
        send_json(
            &mut alice,
            json!({"type":"message","text":format!("a{i}"),"id":format!("a{i}")}),
        )
        .await;
        send_json(
            &mut bob,
            json!({"type":"message","text":format!("b{i}"),"id":format!("b{i}")}),
        )
        .await;
    }
    let on_a = messages(&mut watch_a, 60).await;
    let on_b = messages(&mut watch_b, 60).await;
    assert_eq!(on_a, on_b, "the same order on both nodes");
    assert_eq!(
        on_a.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    // Each sender's acks, in order; nobody gets their own message back.
    for (ws, p) in [(&mut alice, "a"), (&mut bob, "b")] {
        let (mut last, mut i) = (0, 0);
        while i < 30 {
            let v = recv_json(ws).await;
            if v["type"] == "message" {
                assert_ne!(v["from"], if p == "a" { "alice" } else { "bob" }, "{v}");
                continue;
            }
            assert_eq!(
                (v["type"].as_str(), v["id"].as_str()),
                (Some("ack"), Some(format!("{p}{i}").as_str())),
                "{v}"
            );
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last);
            last = seq;
            assert_eq!(on_a[seq as usize - 1].1, format!("{p}{i}"));
            i += 1;
        }
    }
    // Resume on the other node: carol saw up to 40 on node A; she comes back on node B.
    drop(watch_a);
    let (mut back, welcome) = join_q(&b, "carol", &format!("?since=40&epoch={epoch}")).await;
    assert_eq!(
        (welcome["recovered"].as_bool(), welcome["seq"].as_u64()),
        (Some(true), Some(60)),
        "{welcome}"
    );
    assert_eq!(messages(&mut back, 20).await, on_a[40..].to_vec());
    // A resend of an acked id through the other node: the original ack, delivered to nobody.
    let (mut alice_b, _) = join_q(&b, "alice", "").await;
    messages(&mut alice_b, 50).await; // her backlog
    send_json(
        &mut alice_b,
        json!({"type":"message","text":"again","id":"a3"}),
    )
    .await;
    let ack = loop {
        let v = recv_json(&mut alice_b).await;
        if v["type"] == "ack" {
            break v;
        }
    };
    let original = on_a.iter().position(|m| m.1 == "a3").unwrap() as u64 + 1;
    assert_eq!(
        (ack["seq"].as_u64(), ack["text"].as_str()),
        (Some(original), Some("a3")),
        "{ack}"
    );
    send_json(&mut bob, json!({"type":"message","text":"marker"})).await;
    assert_eq!(
        messages(&mut back, 1).await,
        [(61, "marker".to_string())],
        "nothing before the marker"
    );
}

#[tokio::test]
async fn keys_carry_the_prefix_and_the_room_tag_and_no_log_holds_the_password() {
    let redis = Redis::start();
    let a = node(&redis);
    let (mut alice, _) = join_q(&a, "alice", "").await;
    send_json(&mut alice, json!({"type":"message","text":"hi","id":"k1"})).await;
    assert_eq!(recv_json(&mut alice).await["type"], "ack");
    let mut con = redis.connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.sort();
    // Each room's epoch is made when a node first opens it (the listed rooms at start).
    assert_eq!(
        keys,
        [
            "wss-chat:{lobby}:id:alice:k1",
            "wss-chat:{lobby}:meta",
            "wss-chat:{lobby}:stream",
            "wss-chat:{other}:meta",
            "wss-chat:{secret}:meta",
        ],
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("wss-chat:{lobby}:stream")
        .query(&mut con)
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 168 * 3600,
        "history expires with history.max_age_hours: {ttl}"
    );
    let logs = a.log();
    assert!(
        logs.iter().any(|l| l.contains("DEBUG")),
        "the log is at debug level"
    );
    assert!(
        !logs.iter().any(|l| l.contains(&redis.password)),
        "the password was logged"
    );
}

/// Send `text` (a new id each try) until it is acked, within 10 s; the ack.
async fn post_until_acked(ws: &mut Ws, text: &str) -> Value {
    let t = std::time::Instant::now();
    for n in 0.. {
        let id = format!("{text}-{n}");
        send_json(ws, json!({"type":"message","text":text,"id":id})).await;
        let v = recv_json(ws).await;
        if v["type"] == "ack" {
            return v;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "still refused: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    unreachable!()
}

/// GET `path` on the main port: the status line's code.
async fn status_of(s: &Server, path: &str) -> String {
    let resp = s
        .https_raw(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    resp.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn with_redis_down_a_node_fails_closed_and_recovers_when_it_returns() {
    let mut redis = Redis::start();
    let a = node(&redis);
    let (mut alice, _) = join_q(&a, "alice", "").await;
    let (mut bob, _) = join_q(&a, "bob", "").await;
    send_json(
        &mut alice,
        json!({"type":"message","text":"before","id":"r0"}),
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["seq"], 1);
    assert_eq!(messages(&mut bob, 1).await, [(1, "before".to_string())]);
    redis.stop();
    // A message now is refused and reaches nobody; the sockets stay open.
    send_json(
        &mut alice,
        json!({"type":"message","text":"lost","id":"r1"}),
    )
    .await;
    let e = recv_json(&mut alice).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unavailable"), Some("r1")),
        "{e}"
    );
    // Within 5 s: /readyz 503, /healthz 200, a new upgrade 503 with Retry-After, a history
    // request refused.
    let t = std::time::Instant::now();
    while !status_of(&a, "/readyz").await.contains("503") {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "/readyz still ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(status_of(&a, "/healthz").await.contains("200"));
    let auth = format!("Bearer {}", token("carol"));
    let refused = a
        .https_raw(
            format!(
                "GET /rooms/lobby HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ORIGIN}\r\n\
                 Authorization: {auth}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    send_json(&mut bob, json!({"type":"history","id":"h"})).await;
    let h = recv_json(&mut bob).await;
    assert_eq!(
        (h["code"].as_str(), h["id"].as_str()),
        (Some("unavailable"), Some("h")),
        "{h}"
    );
    // Redis is back with its data: within 10 s messages flow again, seq 2 (the refused one
    // took none), and "lost" never arrives.
    redis.start_again(false);
    let ack = post_until_acked(&mut alice, "after").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    assert_eq!(messages(&mut bob, 1).await, [(2, "after".to_string())]);
    assert!(status_of(&a, "/readyz").await.contains("200"));
}

#[tokio::test]
async fn a_killed_subscription_or_node_loses_nothing() {
    let redis = Redis::start();
    let (a, mut b) = (node(&redis), node(&redis));
    let (mut alice, welcome) = join_q(&a, "alice", "").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    let (mut bob, _) = join_q(&b, "bob", "").await;
    // Kill every node's subscription while alice keeps posting: bob still gets all, in order.
    let mut con = redis.connection().unwrap();
    for i in 1..=20 {
        send_json(
            &mut alice,
            json!({"type":"message","text":format!("m{i}"),"id":format!("m{i}")}),
        )
        .await;
        if i == 5 || i == 12 {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut con)
                .unwrap();
            assert!(killed >= 2, "killed {killed} subscriptions");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = messages(&mut bob, 20).await;
    assert_eq!(
        got,
        (1..=20).map(|i| (i, format!("m{i}"))).collect::<Vec<_>>()
    );
    // Node B dies (kill -9): bob comes back on node A and resumes exactly.
    b.kill();
    for i in 21..=23 {
        send_json(
            &mut alice,
            json!({"type":"message","text":format!("m{i}"),"id":format!("m{i}")}),
        )
        .await;
    }
    let (mut bob, welcome) = join_q(&a, "bob", &format!("?since=20&epoch={epoch}")).await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(
        messages(&mut bob, 3).await,
        (21..=23).map(|i| (i, format!("m{i}"))).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn redis_restarted_without_its_data_resyncs_every_member_and_starts_a_new_epoch() {
    let mut redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (mut alice, welcome) = join_q(&a, "alice", "").await;
    let old = welcome["epoch"].as_str().unwrap().to_string();
    let (mut bob, _) = join_q(&b, "bob", "").await;
    for i in 1..=3 {
        send_json(
            &mut alice,
            json!({"type":"message","text":format!("m{i}"),"id":format!("m{i}")}),
        )
        .await;
    }
    assert_eq!(messages(&mut bob, 3).await.len(), 3);
    redis.stop();
    redis.start_again(true);
    // Each member is told before any message of the new epoch.
    for ws in [&mut alice, &mut bob] {
        let v = loop {
            let v = recv_json(ws).await;
            if v["type"] != "ack" {
                break v;
            }
        };
        assert_eq!(v, json!({"type":"resync","reason":"epoch"}));
    }
    // Within seconds messages flow again, from seq 1 of the new epoch.
    let t = std::time::Instant::now();
    assert_eq!(post_until_acked(&mut alice, "fresh").await["seq"], 1);
    assert_eq!(messages(&mut bob, 1).await, [(1, "fresh".to_string())]);
    // An old resume is told its view is gone (once node B's health check has seen Redis back).
    while !status_of(&b, "/readyz").await.contains("200") {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "node B not ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_c, welcome) = join_q(&b, "carol", &format!("?since=3&epoch={old}")).await;
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_ne!(welcome["epoch"], old.as_str());
}

fn presence_node(redis: &Redis) -> Server {
    let (url, password_file) = (redis.url(), redis.password_file());
    Server::start_with(move |c| {
        c.history.store = HistoryStore::Redis;
        c.redis.url = Some(url);
        c.redis.password_file = Some(password_file);
        c.presence.enabled = true;
        c.presence.ttl_s = 2;
    })
}

/// The next frame that is not a message: a join or leave, as (type, user).
async fn next_presence(ws: &mut Ws) -> (String, String) {
    loop {
        let v = recv_json(ws).await;
        if v["type"] == "join" || v["type"] == "leave" {
            return (
                v["type"].as_str().unwrap().into(),
                v["user"].as_str().unwrap().into(),
            );
        }
        assert_eq!(v["type"], "message", "{v}");
    }
}

fn members(welcome: &Value) -> Vec<&str> {
    welcome["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect()
}

/// Presence across nodes is eventually consistent: a welcome lists what its node knows, and a
/// user who joined on another node a moment before is announced by a join right after it.
/// `ws` must know exactly `want` from its welcome and such joins, within 5 s.
async fn learns_present(ws: &mut Ws, welcome: &Value, want: &[&str]) {
    let mut known: std::collections::BTreeSet<String> =
        members(welcome).into_iter().map(String::from).collect();
    let want: std::collections::BTreeSet<String> = want.iter().map(|u| u.to_string()).collect();
    while known != want {
        let (kind, user) =
            tokio::time::timeout(std::time::Duration::from_secs(5), next_presence(ws))
                .await
                .unwrap_or_else(|_| panic!("knows {known:?}, not {want:?}"));
        assert_eq!(kind, "join", "{user}");
        assert!(known.insert(user.clone()), "{user} announced twice");
    }
}

/// Wait (at most 5 s) until Redis counts `n` connections of `user` in the lobby.
async fn tabs_counted(redis: &Redis, user: &str, n: i64) {
    let mut con = redis.connection().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let counted: Option<i64> = redis::cmd("HGET")
            .arg("wss-chat:{lobby}:users")
            .arg(user)
            .query(&mut con)
            .unwrap();
        if counted == Some(n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user}: {counted:?} tabs counted, not {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn presence_spans_nodes_counts_tabs_everywhere_and_a_killed_node_leaves_no_ghosts() {
    let redis = Redis::start();
    let (a, mut b) = (presence_node(&redis), presence_node(&redis));
    let (mut alice, w) = join_q(&a, "alice", "").await;
    assert_eq!(members(&w), ["alice"]);
    let (mut bob, w) = join_q(&b, "bob", "").await;
    learns_present(&mut bob, &w, &["alice", "bob"]).await;
    assert_eq!(
        next_presence(&mut alice).await,
        ("join".into(), "bob".into())
    );
    // Bob's second tab, on the other node: listed once, announced to nobody.
    let (bob_a, w) = join_q(&a, "bob", "").await;
    assert_eq!(members(&w), ["alice", "bob"]);
    // Node A counts the tab in Redis after its welcome; closing the first tab before that
    // would be a real leave and rejoin (presence across nodes is eventually consistent).
    tabs_counted(&redis, "bob", 2).await;
    // Bob closes the tab on node B: he is still here (node A); then the one on node A: leave.
    bob.close(None).await.unwrap();
    drop(bob);
    drop(bob_a);
    assert_eq!(
        next_presence(&mut alice).await,
        ("leave".into(), "bob".into()),
        "one leave, after the last tab"
    );
    // Carol on node B; node B is killed: node A's sweep announces her leave within ttl_s plus
    // one sweep (2 s + 0.67 s here).
    let (_carol, _) = join_q(&b, "carol", "").await;
    assert_eq!(
        next_presence(&mut alice).await,
        ("join".into(), "carol".into())
    );
    b.kill();
    let t = std::time::Instant::now();
    assert_eq!(
        next_presence(&mut alice).await,
        ("leave".into(), "carol".into())
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Exactly once: a message from a new joiner comes next, after its own join.
    let (mut carol_again, w) = join_q(&a, "carol", "").await;
    assert_eq!(members(&w), ["alice", "carol"]);
    assert_eq!(
        next_presence(&mut alice).await,
        ("join".into(), "carol".into())
    );
    send_json(&mut carol_again, json!({"type":"message","text":"marker"})).await;
    let m = recv_json(&mut alice).await;
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str()),
        (Some("message"), Some("marker")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_opened_at_once_while_messages_flow_do_not_stall_the_node() {
    // Opening a room waits on Redis; it once did so under the rooms' lock, which the Redis
    // thread needs to deliver events: the node stopped.
    let redis = Redis::start();
    let (url, password_file) = (redis.url(), redis.password_file());
    let a = std::sync::Arc::new(Server::start_with(move |c| {
        c.history.store = HistoryStore::Redis;
        c.redis.url = Some(url);
        c.redis.password_file = Some(password_file);
        c.rooms.auto_create = true;
        c.rooms.max_rooms = 200;
        c.server.max_connections_per_user = 100;
    }));
    let (mut alice, _) = join_q(&a, "alice", "").await;
    let (mut bob, _) = join_q(&a, "bob", "").await;
    let stream = tokio::spawn(async move {
        for i in 0..200 {
            send_json(&mut alice, json!({"type":"message","text":format!("m{i}")})).await;
        }
        alice
    });
    let mut joins = Vec::new();
    for i in 0..60 {
        let a = a.clone();
        joins.push(tokio::spawn(async move {
            a.enter("carol", &format!("new{i}")).await
        }));
    }
    let all = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        for j in joins {
            j.await.unwrap();
        }
    })
    .await;
    assert!(all.is_ok(), "joins to new rooms stalled");
    assert_eq!(messages(&mut bob, 200).await.len(), 200);
    stream.await.unwrap();
}

#[tokio::test]
async fn a_node_reaches_redis_over_tls_with_the_configured_ca() {
    let redis = Redis::start_tls();
    let (port, password_file, ca) = (redis.port, redis.password_file(), redis.ca_file());
    let a = Server::start_with(move |c| {
        c.history.store = HistoryStore::Redis;
        c.redis.url = Some(format!("rediss://localhost:{port}"));
        c.redis.password_file = Some(password_file);
        c.redis.ca_file = Some(ca);
    });
    let (mut alice, _) = join_q(&a, "alice", "").await;
    let (mut bob, _) = join_q(&a, "bob", "").await;
    send_json(
        &mut alice,
        json!({"type":"message","text":"over tls","id":"t1"}),
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["seq"], 1);
    assert_eq!(messages(&mut bob, 1).await, [(1, "over tls".to_string())]);
    // A CA that did not sign Redis's certificate: the node refuses to start (exit 2).
    let mut c = test_config();
    c.history.store = HistoryStore::Redis;
    c.redis.url = Some(format!("rediss://localhost:{}", redis.port));
    c.redis.password_file = Some(redis.password_file());
    c.redis.ca_file = Some("ca.pem".into()); // the node's own test CA, not Redis's
    let (dir, _ca) = server_dir(&config_toml(&c));
    let (code, stderr) = run_bin(bin(), "serve", dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

/// A node whose users have moderation's test roles (alice and carol moderate lobby).
fn moderated_node(redis: &Redis) -> Server {
    let (url, password_file) = (redis.url(), redis.password_file());
    Server::start_with(move |c| {
        crate::moderation::roles(c);
        c.history.store = HistoryStore::Redis;
        c.redis.url = Some(url);
        c.redis.password_file = Some(password_file);
    })
}

#[tokio::test]
async fn mutes_bans_and_deletions_hold_on_every_node_and_on_one_started_later() {
    let redis = Redis::start();
    let (a, b) = (moderated_node(&redis), moderated_node(&redis));
    let (mut alice, _) = join_q(&a, "alice", "").await;
    // Presence is off in tests: a node cannot know who is on another, so a kick or mute of
    // a user there is carried out, not refused as not present.
    let (mut bob, _) = join_q(&b, "bob", "").await;
    let (mut carol, _) = join_q(&b, "carol", "").await;
    let mut bob_other = b.join("bob", "other").await;
    for i in 1..=2 {
        send_json(
            &mut bob,
            json!({"type":"message","text":format!("m{i}"),"id":format!("m{i}")}),
        )
        .await;
        assert_eq!(next_non_message(&mut bob).await["seq"], i);
    }
    assert_eq!(messages(&mut alice, 2).await.len(), 2);
    assert_eq!(messages(&mut carol, 2).await.len(), 2);
    // A mute given on node A holds on node B.
    send_json(
        &mut alice,
        json!({"type":"mute","user":"bob","seconds":30,"id":"m"}),
    )
    .await;
    assert_eq!(next_non_message(&mut alice).await["action"], "mute");
    assert_eq!(next_non_message(&mut carol).await["action"], "mute");
    assert_eq!(next_non_message(&mut bob).await["action"], "mute");
    send_json(
        &mut bob,
        json!({"type":"message","text":"hello?","id":"b3"}),
    )
    .await;
    assert_eq!(next_non_message(&mut bob).await["code"], "muted");
    // A deletion on A: members on B are told, and the text leaves Redis.
    send_json(&mut alice, json!({"type":"delete","seq":1,"id":"d"})).await;
    // The moderator's answer and the deletion it also receives come by different paths.
    let mut got = [
        next_non_message(&mut alice).await,
        next_non_message(&mut alice).await,
    ]
    .map(|v| v["type"].as_str().unwrap().to_string());
    got.sort();
    assert_eq!(got, ["deleted", "moderation"]);
    assert_eq!(
        next_non_message(&mut carol).await,
        json!({"type":"deleted","seq":1,"by":"alice"})
    );
    assert_eq!(next_non_message(&mut carol).await["action"], "delete");
    let mut con = redis.connection().unwrap();
    let dump: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("wss-chat:{lobby}:stream")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(dump.len(), 1, "only seq 2 is still in the stream: {dump:?}");
    let stones: Vec<String> = redis::cmd("HVALS")
        .arg("wss-chat:{lobby}:tombstones")
        .query(&mut con)
        .unwrap();
    assert!(
        stones.len() == 1 && !stones[0].contains("text"),
        "{stones:?}"
    );
    // A node started now reads the tombstone and the mute from Redis.
    let c = moderated_node(&redis);
    let (mut dave, w) = c.enter("carol", "lobby").await;
    assert_eq!(w["seq"], 2);
    let first = recv_json(&mut dave).await;
    assert_eq!(
        (
            first["seq"].as_u64(),
            first["deleted"].as_bool(),
            first["text"].as_str()
        ),
        (Some(1), Some(true), Some("")),
        "{first}"
    );
    assert_eq!(recv_json(&mut dave).await["text"], "m2");
    let (mut bob_c, _) = c.enter("bob", "lobby").await;
    send_json(
        &mut bob_c,
        json!({"type":"message","text":"via c","id":"b4"}),
    )
    .await;
    assert_eq!(next_non_message(&mut bob_c).await["code"], "muted");
    // A kick on A closes bob's lobby connections on B and C, and keeps him out of both.
    send_json(
        &mut alice,
        json!({"type":"kick","user":"bob","reason":"enough","id":"k"}),
    )
    .await;
    assert_eq!(next_non_message(&mut alice).await["action"], "kick");
    for ws in [&mut bob, &mut bob_c] {
        assert_eq!(
            expect_close(ws).await,
            tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Library(4003)
        );
    }
    assert_eq!(b.try_enter("bob", "lobby").await.err(), Some(403));
    assert_eq!(c.try_enter("bob", "lobby").await.err(), Some(403));
    // Their other room is untouched.
    let (mut dave_other, _) = b.enter("dave", "other").await;
    say(&mut dave_other, "other room").await;
    assert_eq!(recv_json(&mut bob_other).await["text"], "other room");
}
