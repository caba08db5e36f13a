//! Replays every file of `fuzz/corpus/<target>/` through the property its fuzz target checks,
//! on stable Rust, so CI guards the corpus (and every finding kept in it) without nightly.

use std::path::Path;

use crate::checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")),
        "{target}: no seed corpus in {}",
        dir.display()
    );
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target}: {} fails: {why}", f.display());
        }
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn client_frame_corpus() {
    replay("client_frame", checks::client_frame);
}

#[test]
fn sanitizer_corpus() {
    replay("sanitizer", checks::sanitizer);
}

#[test]
fn origin_corpus() {
    replay("origin", checks::origin);
}

#[test]
fn token_corpus() {
    replay("token", checks::token);
}

#[test]
fn upgrade_path_corpus() {
    replay("upgrade_path", checks::upgrade_path);
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn tls_records_corpus() {
    replay("tls_records", checks::tls_records);
}
