//! The chat page in a real browser: Debian's Chromium driven by playwright-core
//! (tests/browser/chat.mjs). Two pages chat, an XSS payload stays text, a foreign origin is
//! refused by the browser's own Origin header, the pages show who is present, a kill -9 in the
//! middle of a burst loses and doubles nothing once the pages reconnect, and a late page pages
//! back through the history.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_browser_pages_chat_xss_stays_text_foreign_origin_refused_and_reconnect() {
    let root = env!("CARGO_MANIFEST_DIR");
    let missing = [
        ("/usr/bin/chromium", "apt-get install -y chromium"),
        (
            &format!("{root}/tests/browser/node_modules/playwright-core/package.json"),
            "cd tests/browser && npm ci",
        ),
    ];
    for (path, fix) in missing {
        assert!(
            std::path::Path::new(path).exists(),
            "the browser test needs {path}: run `{fix}` (scripts/test.sh installs both)"
        );
    }

    let port = free_port();
    let mut s = Server::start_with(|c| {
        // As shipped: SQLite history and presence; a short backlog so paging has work.
        c.history.store = HistoryStore::Sqlite;
        c.history.on_join = 3;
        c.presence.enabled = true;
        c.server.listen = format!("127.0.0.1:{port}");
        c.origins
            .allowed
            .insert(0, format!("https://localhost:{port}"));
        // alice moderates lobby and carol only reads it (the moderation part of the test).
        crate::moderation::roles(c);
        c.auth.users[2].roles = Some([("lobby".to_string(), wss_chat::roles::Role::Reader)].into());
    });
    let shots = format!("{}/browser", env!("CARGO_TARGET_TMPDIR"));
    let mut node = Command::new("node")
        .arg(format!("{root}/tests/browser/chat.mjs"))
        .current_dir(format!("{root}/tests/browser"))
        .env("URL_BASE", format!("https://localhost:{port}"))
        .env("CERT", s.path("cert.pem"))
        .env("ALICE", token("alice"))
        .env("BOB", token("bob"))
        .env("CAROL", token("carol"))
        .env("SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is needed for the browser test: apt-get install -y nodejs");
    let mut stdin = node.stdin.take().unwrap();
    let stdout = BufReader::new(node.stdout.take().unwrap());
    let mut said = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if line == "RESTART" {
            s.restart();
            writeln!(stdin, "RESTARTED").unwrap();
        }
        said.push(line);
    }
    let out = node.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        said.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.last().map(String::as_str), Some("OK"));
    // The foreign page's attempt reached the server and was refused for its Origin.
    assert!(
        s.log()
            .iter()
            .any(|l| l.contains("origin not allowed") && l.contains("status=403")),
        "no Origin refusal in the log"
    );
    // The wrong-token page asked why, and was told 401 without retrying.
    assert!(
        s.log()
            .iter()
            .any(|l| l.contains("check refused") && l.contains("status=401")),
        "no check refusal in the log"
    );
    assert!(std::path::Path::new(&format!("{shots}/chat-bob.png")).exists());
}
