//! End-to-end tests: each starts the real binary and talks to it over real TLS sockets.

mod browser;
mod chat;
mod config;
mod frames;
mod handshake;
mod limits;
mod operator;
mod resilience;
mod support;
