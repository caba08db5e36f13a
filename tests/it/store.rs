//! The SQLite store on the real binary with a real file in the server's temp dir: what was
//! acked survives kill -9 with its seq, text and epoch; a deleted store starts every room over
//! with a new epoch; a store that cannot be used stops the server at start with exit 2 and is
//! left byte-for-byte as it was; a write that fails at run time is refused to its sender,
//! reaches nobody, and the server recovers when the disk does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

use crate::support::*;

const STORE: &str = "data/wss-chat.db";

fn sqlite(c: &mut Config) {
    c.history.store = HistoryStore::Sqlite;
}

/// Join `room` as `user` with `query`; the socket after its welcome, and the welcome.
async fn join_q(s: &Server, user: &str, room: &str, query: &str) -> (Ws, Value) {
    s.enter(user, &format!("{room}{query}")).await
}

/// Send a message with an id and return the answer (an ack or an error).
async fn post_one(ws: &mut Ws, text: &str, id: &str) -> Value {
    send_json(ws, json!({"type":"message","text":text,"id":id})).await;
    loop {
        let v = recv_json(ws).await;
        if v["type"] != "message" {
            return v;
        }
    }
}

/// Every retained message of the room as (seq -> (from, text)), by paging back from the top.
async fn all_messages(ws: &mut Ws) -> BTreeMap<u64, (String, String)> {
    let mut out = BTreeMap::new();
    let mut before = Value::Null;
    loop {
        send_json(
            ws,
            json!({"type":"history","id":"all","before":before,"limit":100}),
        )
        .await;
        let page = loop {
            let v = recv_json(ws).await;
            if v["type"] == "history" {
                break v;
            }
        };
        let msgs = page["messages"].as_array().unwrap();
        for m in msgs {
            let prev = out.insert(
                m["seq"].as_u64().unwrap(),
                (
                    m["from"].as_str().unwrap().to_string(),
                    m["text"].as_str().unwrap().to_string(),
                ),
            );
            assert!(prev.is_none(), "a seq twice: {m}");
        }
        if !page["has_more"].as_bool().unwrap() || msgs.is_empty() {
            return out;
        }
        before = msgs[0]["seq"].clone();
    }
}

#[tokio::test]
async fn kill_9_mid_stream_keeps_every_acked_message_with_its_seq_and_epoch() {
    let mut s = Server::start_with(sqlite);
    let (_w, welcome) = join_q(&s, "dave", "other", "").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    // Three users post as fast as acks come back; every ack is recorded.
    let acked = Arc::new(Mutex::new(Vec::<(u64, String, String)>::new()));
    let mut senders = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let (mut ws, _) = join_q(&s, user, "other", "").await;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let text = format!("{user} says {i}");
                let id = format!("{user}-{i}");
                let sent =
                    send_json_checked(&mut ws, json!({"type":"message","text":text,"id":id})).await;
                if !sent {
                    return;
                }
                let Some(ack) = next_ack(&mut ws).await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push((ack["seq"].as_u64().unwrap(), user.to_string(), text));
            }
        }));
    }
    while acked.lock().unwrap().len() < 150 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    s.kill();
    for t in senders {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    s.respawn();

    // Resuming from 0 with the old epoch is exact: the epoch survived.
    let (mut ws, welcome) = join_q(&s, "alice", "other", &format!("?since=0&epoch={epoch}")).await;
    assert_eq!(welcome["epoch"], epoch.as_str());
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let top = welcome["seq"].as_u64().unwrap();
    let stored = all_messages(&mut ws).await;
    // Every seq from 1 to the top once, none skipped; each message stored once.
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=top).collect::<Vec<_>>()
    );
    let mut texts: Vec<_> = stored.values().map(|(_, t)| t.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len() as u64, top, "a message stored twice");
    // Every acked message is there with its seq and text (some stored ones may not have been
    // acked: the kill came between their commit and their ack).
    assert!(acked.len() as u64 <= top);
    for (seq, user, text) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(&(user.clone(), text.clone())),
            "seq {seq}"
        );
    }
    // The next message takes top + 1, and a resend of an acked id gets its original ack.
    let ack = post_one(&mut ws, "after the crash", "after-1").await;
    assert_eq!(ack["seq"].as_u64(), Some(top + 1), "{ack}");
    let (seq, _, text) = acked.iter().find(|(_, u, _)| u == "alice").unwrap().clone();
    let i = text.rsplit(' ').next().unwrap();
    let again = post_one(&mut ws, "changed", &format!("alice-{i}")).await;
    assert_eq!(
        (again["type"].as_str(), again["seq"].as_u64()),
        (Some("ack"), Some(seq)),
        "{again}"
    );
}

/// Send without panicking when the server is gone.
async fn send_json_checked(ws: &mut Ws, v: Value) -> bool {
    use futures_util::SinkExt;
    ws.send(tungstenite::Message::text(v.to_string()))
        .await
        .is_ok()
}

/// The next ack, or `None` once the connection is gone.
async fn next_ack(ws: &mut Ws) -> Option<Value> {
    use futures_util::StreamExt;
    loop {
        match ws.next().await? {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("ack") => return Some(v),
                    Some("message") => continue,
                    _ => panic!("{v}"),
                }
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_deleted_store_starts_every_room_over_with_a_new_epoch() {
    let mut s = Server::start_with(sqlite);
    let (mut alice, welcome) = join_q(&s, "alice", "lobby", "").await;
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        post_one(&mut alice, "hello", &format!("d{i}")).await;
    }
    s.signal("TERM");
    assert!(s.wait_exit(std::time::Duration::from_secs(10)).is_some());
    std::fs::remove_dir_all(s.path("data")).unwrap();
    s.respawn();
    let (mut bob, welcome) = join_q(&s, "bob", "lobby", &format!("?since=3&epoch={epoch}")).await;
    assert_eq!(welcome["seq"], 0, "{welcome}");
    assert_eq!(welcome["recovered"], false);
    assert_ne!(welcome["epoch"], epoch.as_str());
    expect_nothing_more(&s, &mut bob, "lobby").await;
    // The directory and file are created again with their modes.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(s.path(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("data"), mode(STORE)), (0o700, 0o600));
}

/// Every file under `dir`, with its bytes (directories as `None`).
fn snapshot(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(name, None);
                stack.push(p);
            } else {
                out.insert(name, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Prepare a bad store with `make` (given the data dir), start the server on it, and check it
/// exits 2 naming the store's path and the reason, with `data/` exactly as it was.
fn refused(make: impl FnOnce(&Path), reason: &str) {
    let (dir, _ca) = server_dir(&config_toml(&{
        let mut c = test_config();
        sqlite(&mut c);
        c
    }));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    make(&data);
    let before = snapshot(&data);
    let (code, stderr) = run_bin(bin(), "serve", dir.path());
    assert_eq!(code, Some(2), "{reason}: {stderr}");
    assert!(
        stderr.contains(STORE),
        "{reason}: the path is named: {stderr}"
    );
    assert!(stderr.contains(reason), "{reason}: {stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(snapshot(&data) == before, "{reason}: the store was changed");
}

#[test]
fn a_store_that_cannot_be_used_stops_the_server_and_is_left_untouched() {
    refused(
        |d| {
            std::fs::create_dir(d.join("wss-chat.db")).unwrap();
            std::fs::write(d.join("wss-chat.db/keep"), "mine").unwrap();
        },
        "is a directory",
    );
    refused(
        |d| {
            let garbage: Vec<u8> = (0..8192u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            std::fs::write(d.join("wss-chat.db"), garbage).unwrap();
        },
        "cannot be read as a SQLite database",
    );
    refused(
        |d| {
            let c = rusqlite::Connection::open(d.join("wss-chat.db")).unwrap();
            c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER); INSERT INTO invoices VALUES (1, 42);")
                .unwrap();
        },
        "is a SQLite database of something else",
    );
    refused(
        |d| {
            let c = rusqlite::Connection::open(d.join("wss-chat.db")).unwrap();
            // Ours ("wssc"), from a later server.
            c.execute_batch(&format!(
                "PRAGMA application_id = {}; PRAGMA user_version = 3;
                 CREATE TABLE rooms (name TEXT PRIMARY KEY, epoch TEXT, top INTEGER, owner TEXT);",
                0x7773_7363
            ))
            .unwrap();
        },
        "newer than this server's",
    );
}

#[test]
fn an_unwritable_directory_stops_the_server() {
    use std::os::unix::fs::PermissionsExt;
    // Root ignores permission bits: then the server runs as nobody, through setpriv.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let (dir, _ca) = server_dir(&config_toml(&{
        let mut c = test_config();
        sqlite(&mut c);
        c
    }));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for p in [dir.path(), &data] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        &data,
        std::fs::Permissions::from_mode(if root { 0o755 } else { 0o555 }),
    )
    .unwrap();
    let cmd = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_wss-chat"));
        c
    } else {
        bin()
    };
    let (code, stderr) = run_bin(cmd, "serve", dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(STORE) && stderr.contains("cannot create it"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_none(),
        "nothing created"
    );
}

#[tokio::test]
async fn a_write_that_fails_is_refused_reaches_nobody_and_the_server_recovers() {
    let s = Server::start_with(sqlite);
    let (mut alice, _) = join_q(&s, "alice", "lobby", "").await;
    let (mut bob, _) = join_q(&s, "bob", "lobby", "").await;
    assert_eq!(post_one(&mut alice, "one", "w1").await["seq"], 1);
    assert_eq!(recv_json(&mut bob).await["text"], "one");
    // The disk is "full": no file of the server may grow.
    let limit = |v: &str| {
        let ok = std::process::Command::new("prlimit")
            .args([format!("--pid={}", s.pid()), format!("--fsize={v}")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit --fsize={v}");
    };
    // Only the soft limit: raising it again needs no privilege.
    limit("0:unlimited");
    let e = post_one(&mut alice, "two", "w2").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("unavailable"), Some("w2")),
        "{e}"
    );
    s.wait_log("history store write failed").await;
    limit("unlimited:unlimited");
    // The disk is back: the next message takes the seq the refused one did not, and bob's next
    // frame is it: "two" reached nobody.
    let ack = post_one(&mut alice, "three", "w3").await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("ack"), Some(2)),
        "{ack}"
    );
    let m = recv_json(&mut bob).await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("three"), Some(2)),
        "{m}"
    );
    s.wait_log("history store writes again").await;
    // And it is on disk: a new joiner's backlog is one and three.
    let (mut carol, _) = join_q(&s, "carol", "lobby", "").await;
    let texts: Vec<_> = [recv_json(&mut carol).await, recv_json(&mut carol).await]
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["one", "three"]);
    expect_nothing_more(&s, &mut bob, "lobby").await;
}

#[test]
fn check_config_names_a_bad_store_value_and_unknown_history_keys() {
    let (dir, _ca) = server_dir(
        &config_toml(&test_config())
            .replace("store = \"off\"", "store = \"postgres\"\nretention = 5"),
    );
    let (code, stderr) = run_bin(bin(), "check-config", dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("history.store"), "{stderr}");
    assert!(stderr.contains("history.retention"), "{stderr}");
}

#[tokio::test]
async fn a_sender_does_not_wait_for_the_disk_and_its_acks_come_in_order() {
    let s = Server::start_with(sqlite);
    let (mut alice, _) = join_q(&s, "alice", "lobby", "").await;
    let (mut bob, _) = join_q(&s, "bob", "lobby", "").await;
    // Fifty at once, without waiting: each is acked once, in the order sent, seq 1 to 50.
    for i in 1..=50 {
        send_json(
            &mut alice,
            json!({"type":"message","text":format!("p{i}"),"id":format!("p{i}")}),
        )
        .await;
    }
    for i in 1..=50u64 {
        let ack = recv_json(&mut alice).await;
        assert_eq!(
            (
                ack["type"].as_str(),
                ack["id"].as_str(),
                ack["seq"].as_u64()
            ),
            (Some("ack"), Some(format!("p{i}").as_str()), Some(i)),
            "{ack}"
        );
        let m = recv_json(&mut bob).await;
        assert_eq!(
            (m["seq"].as_u64(), m["text"].as_str()),
            (Some(i), Some(format!("p{i}").as_str()))
        );
    }
    expect_nothing_more(&s, &mut alice, "lobby").await;
}

#[test]
fn check_config_refuses_a_redis_url_with_credentials_and_never_repeats_it() {
    let mut c = test_config();
    c.history.store = HistoryStore::Redis;
    c.redis.url = Some("redis://:hunter2-secret@127.0.0.1:6379".into());
    c.redis.key_prefix = "bad prefix".into();
    let (dir, _ca) = server_dir(&config_toml(&c));
    let (code, stderr) = run_bin(bin(), "check-config", dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("redis.url") && stderr.contains("must not hold credentials"),
        "{stderr}"
    );
    assert!(stderr.contains("redis.key_prefix"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password was repeated: {stderr}"
    );
}

#[test]
fn check_config_accepts_a_redis_config_and_says_what_stays_per_node() {
    let secret_dir = tempfile::tempdir().unwrap();
    let pw = secret_dir.path().join("redis-password");
    std::fs::write(&pw, "a-password").unwrap();
    let mut c = test_config();
    c.history.store = HistoryStore::Redis;
    c.redis.url = Some("rediss://redis.internal:6380".into());
    c.redis.password_file = Some(pw);
    let (dir, _ca) = server_dir(&config_toml(&c));
    let out = bin()
        .args(["check-config", "--config"])
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("stay per node") && stdout.contains("limits.*"),
        "{stdout}"
    );
    assert!(!stdout.contains("a-password"));
    // A CA file that is not there is named.
    c.redis.ca_file = Some("missing-ca.pem".into());
    let (dir, _ca) = server_dir(&config_toml(&c));
    let (code, stderr) = run_bin(bin(), "check-config", dir.path());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("redis.ca_file"), "{stderr}");
}
