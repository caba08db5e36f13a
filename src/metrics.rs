//! What the operator can graph: counters, gauges and histograms in Prometheus text format,
//! served on their own listener (`metrics.listen`, plain HTTP, meant for loopback or a private
//! network) so scraping never shares the public port.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::room::Fanout;

type Reason = [(&'static str, &'static str); 1];

/// Every metric the server keeps. Cheap to update: atomics, no locks on the message path.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    /// Refused handshakes by reason: origin, token, room, rate, cap, request, timeout.
    refused: Family<Reason, Counter>,
    /// Refused API requests by error code (unauthorized, forbidden, rate_limited, ...).
    api_refused: Family<Reason, Counter>,
    /// Moderation actions carried out, by action (kick, mute, delete).
    moderation: Family<Reason, Counter>,
    pub messages_received: Counter,
    pub messages_delivered: Counter,
    /// Messages not delivered, by reason: bad_request, too_long, empty, rate_limited,
    /// slow_consumer (a recipient's queue was full).
    dropped: Family<Reason, Counter>,
    pub rate_limit_hits: Counter,
    pub slow_consumers_closed: Counter,
    /// Seconds from TCP accept to the 101 response.
    pub handshake_seconds: Histogram,
    /// Seconds one `publish` took to queue a message for every recipient.
    pub fanout_seconds: Histogram,
    /// Seconds from handing a message to the store's writer to its commit.
    pub store_append_seconds: Histogram,
    /// Messages committed per transaction.
    pub store_batch_size: Histogram,
    /// Messages the store holds, all rooms.
    pub store_retained: Gauge,
    /// Messages dropped by retention (count or age).
    pub store_trimmed: Counter,
    /// Messages the store could not commit (answered `unavailable`, delivered to nobody).
    pub store_failures: Counter,
    /// Round trips to Redis (scripts and health checks).
    pub redis_roundtrip_seconds: Histogram,
    /// Redis scripts that failed (messages, presence arrivals, departures and sweeps).
    pub redis_script_errors: Counter,
    /// Times events were missing from the subscription and read from the stream instead.
    pub redis_gap_fills: Counter,
    /// Times the node's subscription was (re-)established after the first.
    pub redis_resubscribes: Counter,
    /// Rooms reset because Redis had lost their history (a new epoch).
    pub redis_resyncs: Counter,
    /// Presence entries of vanished connections (a node killed) removed by a sweep.
    pub redis_presence_swept: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wss_chat");
        let m = Metrics {
            registry: Registry::default(),
            connections_open: Gauge::default(),
            refused: Family::default(),
            api_refused: Family::default(),
            moderation: Family::default(),
            messages_received: Counter::default(),
            messages_delivered: Counter::default(),
            dropped: Family::default(),
            rate_limit_hits: Counter::default(),
            slow_consumers_closed: Counter::default(),
            handshake_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
            fanout_seconds: Histogram::new(exponential_buckets(0.000_002, 4.0, 12)),
            store_append_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            store_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            store_retained: Gauge::default(),
            store_trimmed: Counter::default(),
            store_failures: Counter::default(),
            redis_roundtrip_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            redis_script_errors: Counter::default(),
            redis_gap_fills: Counter::default(),
            redis_resubscribes: Counter::default(),
            redis_resyncs: Counter::default(),
            redis_presence_swept: Counter::default(),
        };
        registry.register(
            "connections_open",
            "Open WebSocket connections",
            m.connections_open.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Refused handshakes by reason",
            m.refused.clone(),
        );
        registry.register(
            "moderation_actions",
            "Moderation actions carried out, by action",
            m.moderation.clone(),
        );
        registry.register(
            "api_refused",
            "Refused API requests by error code",
            m.api_refused.clone(),
        );
        registry.register(
            "messages_received",
            "Chat messages received from clients",
            m.messages_received.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages queued for a recipient",
            m.messages_delivered.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages not delivered, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "rate_limit_hits",
            "Messages or pings over a rate limit",
            m.rate_limit_hits.clone(),
        );
        registry.register(
            "slow_consumers_closed",
            "Connections closed 1013 for a full queue",
            m.slow_consumers_closed.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "TCP accept to 101",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "fanout_duration_seconds",
            "Time to queue one message for its room",
            m.fanout_seconds.clone(),
        );
        registry.register(
            "store_append_duration_seconds",
            "Time from handing a message to the store to its commit",
            m.store_append_seconds.clone(),
        );
        registry.register(
            "store_batch_size",
            "Messages committed per store transaction",
            m.store_batch_size.clone(),
        );
        registry.register(
            "store_retained_messages",
            "Messages held by the store",
            m.store_retained.clone(),
        );
        registry.register(
            "store_trimmed",
            "Messages dropped by retention",
            m.store_trimmed.clone(),
        );
        registry.register(
            "store_failures",
            "Messages the store could not commit",
            m.store_failures.clone(),
        );
        registry.register(
            "redis_roundtrip_seconds",
            "Round trips to Redis",
            m.redis_roundtrip_seconds.clone(),
        );
        registry.register(
            "redis_script_errors",
            "Redis scripts that failed",
            m.redis_script_errors.clone(),
        );
        registry.register(
            "redis_gap_fills",
            "Events read from the stream because the subscription missed them",
            m.redis_gap_fills.clone(),
        );
        registry.register(
            "redis_resubscribes",
            "Subscriptions re-established",
            m.redis_resubscribes.clone(),
        );
        registry.register(
            "redis_resyncs",
            "Rooms reset to a new epoch because Redis lost their history",
            m.redis_resyncs.clone(),
        );
        registry.register(
            "redis_presence_swept",
            "Presence entries of vanished connections removed",
            m.redis_presence_swept.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn moderated(&self, action: &'static str) {
        self.moderation.get_or_create(&[("action", action)]).inc();
    }

    pub fn api_refused(&self, code: &'static str) {
        self.api_refused.get_or_create(&[("code", code)]).inc();
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped_by(reason, 1);
    }

    /// One message queued for its room's members: delivered, overflowed, and how long it took
    /// (not observed for a message that was only handed on, to be delivered elsewhere).
    pub fn fanned_out(&self, fanout: &Fanout) {
        self.messages_delivered.inc_by(fanout.queued);
        if fanout.overflowed > 0 {
            self.dropped_by("slow_consumer", fanout.overflowed);
        }
        if !fanout.took.is_zero() {
            self.fanout_seconds.observe(fanout.took.as_secs_f64());
        }
    }

    pub fn dropped_by(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&[("reason", reason)]).inc_by(n);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(metrics: Arc<Metrics>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!("serving metrics at http://{addr}/metrics");
    }
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE: back off rather than spin on an error that persists.
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let mut r = if req.uri().path() == "/metrics" {
                        Response::new(Full::new(Bytes::from(metrics.render())))
                    } else {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    };
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await {
                debug!(%peer, error = %e, "metrics connection timed out");
            }
        });
    }
}

/// Bind the metrics listener, if configured.
pub async fn bind(addr: Option<&str>) -> Result<Option<TcpListener>, String> {
    let Some(addr) = addr else { return Ok(None) };
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| format!("metrics.listen: {addr:?} is not an IP:port address"))?;
    TcpListener::bind(sa)
        .await
        .map(Some)
        .map_err(|e| format!("metrics.listen: cannot bind {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_reasons() {
        let m = Metrics::new();
        m.refused("origin");
        m.refused("origin");
        m.dropped("rate_limited");
        m.messages_received.inc();
        let text = m.render();
        assert!(
            text.contains("wss_chat_handshakes_refused_total{reason=\"origin\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wss_chat_messages_dropped_total{reason=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wss_chat_messages_received_total 1"),
            "{text}"
        );
    }
}
