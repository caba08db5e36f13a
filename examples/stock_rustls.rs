//! A stock rustls server to hold wss-chat's own TLS record layer (src/tls_io.rs) against from
//! outside, in the TLS conformance run SECURITY.md describes: rustls's buffered
//! `ServerConnection` through tokio-rustls, with wss-chat's own `ServerConfig` (the same
//! provider, versions and certificate loading, `tls::CertStore`), and hyper answering every
//! request 200, as the server's HTTP layer does. Nothing else of the server runs.
//!
//! ```sh
//! cargo run --release --example stock_rustls -- CERT KEY 127.0.0.1:4433
//! ```

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wss_chat::config::TlsProfile;
use wss_chat::tls::CertStore;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, addr] = &args[..] else {
        eprintln!("usage: stock_rustls CERT KEY ADDR");
        std::process::exit(2);
    };
    let store = CertStore::load(cert.as_ref(), key.as_ref(), TlsProfile::Intermediate)
        .unwrap_or_else(|e| panic!("{e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config().unwrap());
    let listener = TcpListener::bind(addr).await.unwrap();
    eprintln!(
        "stock rustls listening on {}",
        listener.local_addr().unwrap()
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
