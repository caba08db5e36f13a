//! End-to-end tests: each starts the real binary and talks to it over real TLS sockets.

mod api;
mod browser;
mod chat;
/// The fuzz targets' properties (fuzz/src/lib.rs), compiled here for the corpus replay.
#[path = "../../fuzz/src/lib.rs"]
mod checks;
mod closing;
mod cluster;
mod config;
mod first_minutes;
mod frames;
mod fuzz_corpus;
mod handshake;
mod history;
mod limits;
mod moderation;
mod operator;
mod presence;
mod resilience;
mod store;
mod support;
mod tls_records;
