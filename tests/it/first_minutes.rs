//! The first ten minutes of a new user: the demo says how to connect, the tools refuse what
//! would not work (and say why), plain HTTP to the TLS port gets an answer, and the terminal
//! client shows acks and errors.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_demo_config_says_how_to_connect_and_its_tokens_work() {
    // The shipped file as it is, but for the port (any free one), the test's certificate, and
    // no metrics listener (its fixed port may be taken).
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let mut c = Config::parse(&shipped).unwrap();
    c.server.listen = "127.0.0.1:0".into();
    c.tls.cert = "cert.pem".into();
    c.tls.key = "key.pem".into();
    c.metrics.listen = None;
    let s = Server::start_config(&config_toml(&c));
    let port = s.addr.port();
    s.wait_log(&format!("DEMO: open https://localhost:{port}/"))
        .await;
    for user in ["alice", "bob"] {
        let line = s.wait_log(&format!("DEMO:   {user}: token")).await;
        assert!(
            line.contains(&format!("{user}-demo-token-not-for-production")),
            "{line}"
        );
        let warning = s
            .wait_log(&format!("{user} has a published demo token"))
            .await;
        assert!(warning.contains("WARN"), "{warning}");
    }
    s.wait_log("DEMO: or from a terminal (pip install websockets): python3 scripts/chat.py")
        .await;
    // The tokens it prints are the ones it accepts, from the Origin the demo allows.
    let mut alice = s
        .upgrade(
            "/rooms/lobby",
            &[
                ("Origin", "https://localhost:8443"),
                (
                    "Authorization",
                    "Bearer alice-demo-token-not-for-production",
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(recv_json(&mut alice).await["user"], "alice");

    // A config without demo users prints no banner.
    let quiet = Server::start();
    quiet.wait_log("listening on").await;
    assert!(!quiet.log().iter().any(|l| l.contains("DEMO")));
}

#[test]
fn gen_cert_refuses_to_overwrite_names_what_it_creates_and_checks_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("new/dir/c.pem");
    let key = dir.path().join("new/dir/k.pem");
    let gen = |host: &str, force: bool| {
        let mut cmd = bin();
        cmd.args(["gen-cert", "--host", host, "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let out = gen("localhost", false);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "created directory {}",
            dir.path().join("new/dir").display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("certificate {}", cert.display())),
        "{err}"
    );
    let first = std::fs::read(&cert).unwrap();

    let out = gen("localhost", false);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("exists") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "overwritten without --force"
    );

    let out = gen("localhost", true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(&cert).unwrap(), first);

    let out = gen("not a host", true);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a host name or IP address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hash_token_refuses_what_cannot_be_a_token() {
    let out = run_with_stdin(&["hash-token"], b"caf\xe9\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not UTF-8"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    let out = run_with_stdin(&["hash-token"], b"two words\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no spaces"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());

    let out = run_with_stdin(&["hash-token"], b"\n");
    assert_eq!(out.status.code(), Some(2));

    let out = run_with_stdin(&["hash-token"], b"fine-token_1\n");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "token_sha256 = \"{}\"",
            wss_chat::auth::sha256_hex(b"fine-token_1")
        )
    );
}

#[test]
fn token_refuses_names_the_server_would_refuse() {
    let s_dir = tempfile::tempdir().unwrap();
    let cfg = s_dir.path().join("config.toml");
    std::fs::write(s_dir.path().join("jwt-secret"), JWT_SECRET).unwrap();
    std::fs::write(&cfg, config_toml(&test_config())).unwrap();
    let cfg = cfg.to_str().unwrap();
    for (args, why) in [
        (vec!["--user", "a\u{1b}[31mb"], "--user"),
        (vec!["--user", ""], "--user"),
        (vec!["--user", "alice", "--rooms", "lobby,a/b"], "--rooms"),
    ] {
        let out = bin()
            .args(["token", "--config", cfg])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    let out = bin()
        .args([
            "token", "--config", cfg, "--user", "alice", "--rooms", "lobby",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_missing_certificate_fails_check_config_and_serve_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwt-secret"), JWT_SECRET).unwrap();
    let mut c = test_config();
    c.tls.cert = "missing-cert.pem".into();
    c.tls.key = "missing-key.pem".into();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_toml(&c)).unwrap();
    for cmd in ["check-config", "serve"] {
        let out = bin().args([cmd, "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("tls.cert: cannot read"),
            "{cmd}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn type_errors_in_config_name_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = config_toml(&test_config())
        .replace("burst = 1000", "burst = \"lots\"")
        .replace("max_members = 1000", "max_members = -3");
    assert!(text.contains("\"lots\"") && text.contains("-3"));
    std::fs::write(&path, text).unwrap();
    for cmd in ["check-config", "serve"] {
        let out = bin().args([cmd, "--config"]).arg(&path).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("limits.burst: invalid type"), "{cmd}: {err}");
        assert!(
            err.contains("rooms.max_members: invalid value"),
            "{cmd}: {err}"
        );
    }
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_told_to_use_tls() {
    let s = Server::start();
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\nthis port speaks TLS; use https:// or wss://\r\n"),
        "{answer}"
    );
    // TLS on the same port is unaffected.
    let _ok = s.join("alice", "lobby").await;
}

/// scripts/chat.py pointed at `s` with `token`, trusting the test CA.
pub fn chat_py(s: &Server, token: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chat.py"))
        .args(["--url", &format!("wss://localhost:{}", s.addr.port())])
        .args(["--token", token, "--origin", ORIGIN, "--ca"])
        .arg(s.path("ca.pem"));
    cmd
}

#[tokio::test]
async fn the_terminal_client_sends_ids_and_shows_acks_and_errors() {
    let s = Server::start_with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.burst = 1;
    });
    let mut bob = s.join("bob", "lobby").await;
    // Run from elsewhere: nothing in it may depend on the working directory.
    let out = chat_py(&s, token("alice"))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"<b>hi</b> bob\n").await.unwrap();
    let m = recv_json(&mut bob).await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("hi bob"))
    );
    // The second line, at once, is over the rate: its error is shown.
    stdin.write_all(b"again\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("chat.py did not exit")
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("connected as alice in lobby"), "{shown}");
    assert!(shown.contains("(sent #1: hi bob)"), "{shown}");
    assert!(shown.contains("! rate_limited: "), "{shown}");

    // A refused token is reported as such, not as a network failure.
    let out = chat_py(&s, "wrong")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused: HTTP 401 the token was refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_terminal_client_resumes_after_a_kill_and_resends_what_was_not_acked() {
    use tokio::io::AsyncBufReadExt;
    let port = free_port();
    let mut s = Server::start_with(|c| {
        c.history.store = HistoryStore::Sqlite;
        c.server.listen = format!("127.0.0.1:{port}");
    });
    let mut child = chat_py(&s, token("alice"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut until = async |needle: &str, seen: &mut Vec<String>| {
        if seen.iter().any(|l| l.contains(needle)) {
            return;
        }
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = out.next_line().await.unwrap() {
                seen.push(line.clone());
                if line.contains(needle) {
                    return;
                }
            }
            panic!("chat.py ended before {needle:?}");
        })
        .await;
        assert!(found.is_ok(), "no {needle:?} in {seen:#?}");
    };
    until("connected as alice in lobby", &mut seen).await;
    let mut bob = s.join("bob", "lobby").await;
    say(&mut bob, "one").await;
    until("bob: one", &mut seen).await;
    s.restart();
    // Typed while the server is down: kept, and sent again with its id on reconnect.
    stdin.write_all(b"while down\n").await.unwrap();
    let mut bob = s.join("bob", "lobby").await;
    say(&mut bob, "two").await;
    until("while down)", &mut seen).await;
    until("bob: two", &mut seen).await;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("chat.py did not exit")
        .unwrap();
    while let Ok(Some(line)) = out.next_line().await {
        seen.push(line);
    }
    assert!(status.success(), "{seen:#?}");
    let count = |s: &str| seen.iter().filter(|l| l.contains(s)).count();
    assert_eq!(count("connected as alice in lobby"), 2, "{seen:#?}");
    assert_eq!(count("could not be resumed"), 0, "{seen:#?}");
    assert_eq!((count("bob: one"), count("bob: two")), (1, 1), "{seen:#?}");
    assert_eq!(count("while down"), 1, "{seen:#?}");
    // Stored once: a new joiner's backlog has each message once.
    let mut carol = s.join("carol", "lobby").await;
    let mut texts = Vec::new();
    for _ in 0..3 {
        texts.push(
            recv_json(&mut carol).await["text"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    texts.sort();
    assert_eq!(texts, ["one", "two", "while down"]);
    expect_nothing_more(&s, &mut carol, "lobby").await;
}
