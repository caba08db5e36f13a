//! What an operator sees: metrics that move, log lines with reasons and no secrets, the
//! command-line tools, and the headers on the page.

use std::process::Stdio;

use serde_json::json;

use crate::support::*;

async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

fn value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test]
async fn metrics_move_as_a_scripted_session_goes() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.burst = 2;
        c.limits.max_violations = 50;
        c.metrics.listen = Some("127.0.0.1:0".into());
        // As shipped: fan-out runs after the commit, and is still timed.
        c.history.store = HistoryStore::Sqlite;
    });
    let line = s.wait_log("serving metrics at http://").await;
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let auth = format!("Bearer {}", token("alice"));
    let _ = s
        .upgrade(
            "/rooms/lobby",
            &[("Origin", "https://evil.example"), ("Authorization", &auth)],
        )
        .await;
    let _ = s
        .upgrade(
            "/rooms/lobby",
            &[("Origin", ORIGIN), ("Authorization", "Bearer nope")],
        )
        .await;
    let _ = s
        .upgrade(
            "/rooms/secret",
            &[
                ("Origin", ORIGIN),
                ("Authorization", &format!("Bearer {}", token("dave"))),
            ],
        )
        .await;
    let mut a = s.join("alice", "lobby").await;
    let mut b = s.join("bob", "lobby").await;
    let mut c = s.join("carol", "lobby").await;
    say(&mut a, "one").await; // delivered to b and c
    send_json(&mut a, json!({"type":"message","text":"x".repeat(5000)})).await; // rate_limited? no: burst 2
    assert_eq!(recv_json(&mut a).await["code"], "too_long");
    say(&mut a, "three").await; // over the burst of 2: rate_limited
    assert_eq!(recv_json(&mut a).await["code"], "rate_limited");
    for ws in [&mut b, &mut c] {
        assert_eq!(recv_json(ws).await["text"], "one");
    }
    drop(c);
    // Dropped without a Close: RFC 6455's 1006, and nothing is sent to it.
    s.wait_log("user=carol room=lobby code=1006").await;

    let m = scrape(&addr).await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert_eq!(
        value(&m, "wss_chat_handshakes_refused_total{reason=\"origin\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "wss_chat_handshakes_refused_total{reason=\"token\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "wss_chat_handshakes_refused_total{reason=\"room\"}"),
        1.0
    );
    assert_eq!(value(&m, "wss_chat_connections_open"), 2.0);
    assert_eq!(value(&m, "wss_chat_messages_received_total"), 3.0);
    assert_eq!(value(&m, "wss_chat_messages_delivered_total"), 2.0);
    assert_eq!(
        value(&m, "wss_chat_messages_dropped_total{reason=\"too_long\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "wss_chat_messages_dropped_total{reason=\"rate_limited\"}"
        ),
        1.0
    );
    assert_eq!(value(&m, "wss_chat_rate_limit_hits_total"), 1.0);
    assert_eq!(value(&m, "wss_chat_handshake_duration_seconds_count"), 3.0);
    assert_eq!(value(&m, "wss_chat_fanout_duration_seconds_count"), 1.0);
    // The metrics port serves nothing else, and the public port does not serve metrics.
    let r = s
        .https_raw(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[tokio::test]
async fn json_logs_carry_reasons_and_never_a_token() {
    let s = Server::start_with(|c| {
        c.auth.allow_query_token = true;
        c.log.format = LogFormat::Json;
    });
    let _ = s
        .upgrade("/rooms/lobby?token=secret-in-query", &[("Origin", ORIGIN)])
        .await;
    let auth = format!("Bearer {}", token("alice"));
    let _ = s
        .upgrade(
            "/rooms/lobby",
            &[("Origin", "https://evil.example"), ("Authorization", &auth)],
        )
        .await;
    let mut a = s.join("alice", "lobby").await;
    say(&mut a, "hello").await;
    drop(a);
    let closed = s.wait_log("connection closed").await;
    let refusal = s.wait_log("origin not allowed").await;
    let v: serde_json::Value = serde_json::from_str(&refusal).expect("a JSON log line");
    assert_eq!(v["fields"]["reason"], "origin not allowed");
    assert_eq!(v["fields"]["status"], 403);
    let v: serde_json::Value = serde_json::from_str(&closed).unwrap();
    for key in ["code", "reason", "duration_ms", "user", "room", "peer"] {
        assert!(
            !v["fields"][key].is_null(),
            "closed line lacks {key}: {closed}"
        );
    }
    let log = s.log().join("\n");
    for secret in [token("alice"), "secret-in-query", JWT_SECRET] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

#[test]
fn command_line_tools_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let out = bin()
        .args([
            "gen-cert",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
            "--cert",
        ])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let mut child = bin()
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!(
            "token_sha256 = \"{}\"",
            wss_chat::auth::sha256_hex(b"s3cret")
        )
    );

    for cmd in ["serve", "check-config", "gen-cert", "hash-token", "token"] {
        let out = bin().args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains("Example:"),
            "{cmd} --help:\n{help}"
        );
    }
}

#[tokio::test]
async fn minted_token_is_accepted_by_the_server() {
    let s = Server::start();
    let cfg = s.path("config.toml");
    let out = bin()
        .args([
            "token",
            "--user",
            "zoe",
            "--rooms",
            "lobby,other",
            "--ttl",
            "10m",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut ws = s
        .upgrade(
            "/rooms/other",
            &[
                ("Origin", ORIGIN),
                ("Authorization", &format!("Bearer {jwt}")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await["user"], "zoe");
    let denied = s
        .upgrade(
            "/rooms/secret",
            &[
                ("Origin", ORIGIN),
                ("Authorization", &format!("Bearer {jwt}")),
            ],
        )
        .await;
    assert_eq!(denied.err(), Some(403));
}

#[tokio::test]
async fn the_page_is_served_with_strict_headers() {
    let s = Server::start();
    let r = s
        .https_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let lower = r.to_ascii_lowercase();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    for h in [
        "content-type: text/html",
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "strict-transport-security: max-age=",
    ] {
        assert!(lower.contains(h), "missing {h}:\n{r}");
    }
    assert!(r.contains("<script src=\"/app.js\""), "{r}");
    assert!(!r.contains("<script>"), "inline script would break the CSP");
    let js = s
        .https_raw(b"GET /app.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(
        js.contains("bearer.")
            && js
                .to_ascii_lowercase()
                .contains("content-type: text/javascript")
    );
}
