//! A bad config file stops the server at start with every problem named by key, exit code 2.

use crate::support::*;

#[test]
fn shipped_config_is_valid() {
    let out = bin()
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_values_are_all_reported_with_keys_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let mut c = test_config();
    c.limits.burst = 0;
    c.origins.allowed[1] = "https://*.com".into();
    c.server.listen = "localhost".into();
    let text = config_toml(&c);
    std::fs::write(&path, text).unwrap();
    for cmd in ["check-config", "serve"] {
        let out = bin().args([cmd, "--config"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        for key in ["limits.burst:", "origins.allowed[1]:", "server.listen:"] {
            assert!(err.contains(key), "{cmd} should name {key}: {err}");
        }
    }
}

#[test]
fn unknown_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    // The one test that edits the text: the key must not exist in the struct.
    let text =
        config_toml(&test_config()).replace("[sanitize]\n", "[sanitize]\nmodee = \"strip\"\n");
    assert!(text.contains("modee"));
    std::fs::write(&path, text).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("modee"));
}
