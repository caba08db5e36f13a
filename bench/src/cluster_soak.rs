//! The cluster soak: clients spread over several nodes sharing one Redis, while the script
//! around it (scripts/soak-cluster.sh) kills a node and restarts Redis. Senders number their
//! messages and send every unacked one again with the same id after a reconnect; watchers
//! check every seq of the room arrives once and in order, reconnecting to another node with
//! `since`/`epoch` whenever theirs goes away, and churn watchers leave and resume on purpose.
//! At the end every watcher must have every acked seq: lost and duplicated must both be 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::Target;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Ports of the nodes, on 127.0.0.1.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<u16>,
    #[arg(long, default_value_t = 3000)]
    watchers: usize,
    #[arg(long, default_value_t = 6)]
    senders: usize,
    /// Messages per second from each sender.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Percent of the watchers that leave and resume every 5-20 s on purpose.
    #[arg(long, default_value_t = 10)]
    churn_percent: usize,
    #[arg(long, default_value = "soak0")]
    room: String,
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    resent: AtomicU64,
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    not_recovered: AtomicU64,
    resyncs: AtomicU64,
    reconnects: AtomicU64,
    refused: AtomicU64,
    /// Latency histogram in ms, last bucket 10 s and over.
    latency_ms: Vec<AtomicU64>,
}

struct Shared {
    target: Arc<Target>,
    nodes: Vec<SocketAddr>,
    room: String,
    started: Instant,
    stop_sending: AtomicBool,
    stop: AtomicBool,
    totals: Totals,
    /// seq -> id of every acked message; the same seq acked for two ids is a fork.
    acked: Mutex<BTreeMap<u64, String>>,
    forks: AtomicU64,
}

fn text_of(v: &Value) -> &str {
    v["text"].as_str().unwrap_or("")
}

pub async fn run(target: Arc<Target>, a: Args) -> bool {
    let shared = Arc::new(Shared {
        target,
        nodes: a
            .nodes
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect(),
        room: a.room.clone(),
        started: Instant::now(),
        stop_sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        totals: Totals {
            latency_ms: (0..=10_000).map(|_| AtomicU64::new(0)).collect(),
            ..Totals::default()
        },
        acked: Mutex::new(BTreeMap::new()),
        forks: AtomicU64::new(0),
    });
    println!(
        "cluster soak: {} watchers, {} senders at {}/s each, {} nodes, {} s",
        a.watchers,
        a.senders,
        a.rate,
        a.nodes.len(),
        a.duration_secs
    );
    let churners = a.watchers * a.churn_percent / 100;
    let mut watchers = Vec::new();
    for i in 0..a.watchers {
        let s = shared.clone();
        watchers.push(tokio::spawn(watch(s, i, i < churners)));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut senders = Vec::new();
    for k in 0..a.senders {
        senders.push(tokio::spawn(send(shared.clone(), k, a.rate)));
    }
    let end = Instant::now() + Duration::from_secs(a.duration_secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = &shared.totals;
        println!(
            "  {:>4} s: sent {} acked {} delivered {} gaps {} duplicates {} reconnects {}",
            shared.started.elapsed().as_secs(),
            t.sent.load(Ordering::Relaxed),
            shared.acked.lock().unwrap().len(),
            t.delivered.load(Ordering::Relaxed),
            t.gaps.load(Ordering::Relaxed),
            t.duplicates.load(Ordering::Relaxed),
            t.reconnects.load(Ordering::Relaxed),
        );
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    let mut unacked = 0;
    for s in senders {
        unacked += s.await.unwrap_or(0);
    }
    // Let every watcher catch up to the last acked seq.
    let top = shared
        .acked
        .lock()
        .unwrap()
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut behind = 0u64;
    for w in watchers {
        let last = w.await.unwrap_or(0);
        behind += top.saturating_sub(last);
    }
    let t = &shared.totals;
    let acked = shared.acked.lock().unwrap();
    // Every acked seq from 1 to the top must exist: a hole is a message acked and then lost.
    let holes = (1..=top).filter(|s| !acked.contains_key(s)).count() as u64;
    let p99 = percentile(&t.latency_ms, 0.99);
    let lost = t.gaps.load(Ordering::Relaxed) + behind;
    let duplicated = t.duplicates.load(Ordering::Relaxed) + shared.forks.load(Ordering::Relaxed);
    println!(
        "RESULT {}",
        json!({
            "sent": t.sent.load(Ordering::Relaxed),
            "resent_after_reconnect": t.resent.load(Ordering::Relaxed),
            "acked": acked.len(),
            "unacked_at_end": unacked,
            "top_seq": top,
            "seqs_never_acked": holes,
            "delivered": t.delivered.load(Ordering::Relaxed),
            "lost": lost,
            "duplicated": duplicated,
            "resumes_not_recovered": t.not_recovered.load(Ordering::Relaxed),
            "resyncs": t.resyncs.load(Ordering::Relaxed),
            "reconnects": t.reconnects.load(Ordering::Relaxed),
            "upgrades_refused_or_failed": t.refused.load(Ordering::Relaxed),
            "p99_ms": p99,
        })
    );
    lost == 0 && duplicated == 0 && unacked == 0
}

fn percentile(hist: &[AtomicU64], q: f64) -> u64 {
    let total: u64 = hist.iter().map(|b| b.load(Ordering::Relaxed)).sum();
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (ms, b) in hist.iter().enumerate() {
        seen += b.load(Ordering::Relaxed);
        if seen >= want.max(1) {
            return ms as u64;
        }
    }
    hist.len() as u64
}

/// A watcher: returns the last seq it saw. It starts from the first message it is sent and
/// from then on must see every seq once, in order, across every reconnection.
async fn watch(s: Arc<Shared>, i: usize, churn: bool) -> u64 {
    let user = format!("w{i}");
    let mut last: Option<u64> = None;
    let mut epoch: Option<String> = None;
    let mut node = i;
    let mut attempt = 0u32;
    while !s.stop.load(Ordering::Relaxed) {
        let addr = s.nodes[node % s.nodes.len()];
        let path = match (&epoch, last) {
            (Some(e), Some(l)) => format!("{}?since={l}&epoch={e}", s.room),
            _ => s.room.clone(),
        };
        let mut ws = match s.target.connect_node(addr, i, &user, &path).await {
            Ok(ws) => ws,
            Err(_) => {
                s.totals.refused.fetch_add(1, Ordering::Relaxed);
                node += 1;
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
                continue;
            }
        };
        attempt = 0;
        let leave_at = churn
            .then(|| Instant::now() + Duration::from_millis(5_000 + (i as u64 * 7919) % 15_000));
        loop {
            if s.stop.load(Ordering::Relaxed) {
                return last.unwrap_or(0);
            }
            let wait = leave_at.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            });
            let frame = match tokio::time::timeout(wait, ws.next()).await {
                Err(_) if leave_at.is_some_and(|t| Instant::now() >= t) => {
                    let _ = ws.close(None).await;
                    break;
                }
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => break, // the node went away
            };
            let Ok(v) = serde_json::from_str::<Value>(&frame) else {
                continue;
            };
            match v["type"].as_str() {
                Some("welcome") => {
                    if v["recovered"] == false && epoch.is_some() {
                        s.totals.not_recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    epoch = v["epoch"].as_str().map(String::from);
                }
                Some("resync") => {
                    s.totals.resyncs.fetch_add(1, Ordering::Relaxed);
                    last = None;
                }
                Some("message") => {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    match last {
                        Some(l) if seq <= l => {
                            s.totals.duplicates.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Some(l) if seq > l + 1 => {
                            s.totals.gaps.fetch_add(seq - l - 1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    last = Some(seq);
                    s.totals.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(us) = text_of(&v)
                        .strip_prefix('t')
                        .and_then(|t| t.split(':').next())
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        let now = s.started.elapsed().as_micros() as u64;
                        let ms = (now.saturating_sub(us) / 1000).min(10_000) as usize;
                        s.totals.latency_ms[ms].fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
        s.totals.reconnects.fetch_add(1, Ordering::Relaxed);
        node += 1;
    }
    last.unwrap_or(0)
}

/// A sender: numbered messages at `rate`; every one not yet acked is sent again, with its
/// id, after a reconnect. Returns how many were still unacked at the end.
async fn send(s: Arc<Shared>, k: usize, rate: f64) -> u64 {
    let user = format!("s{k}");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut pending: BTreeMap<u64, String> = BTreeMap::new();
    let mut n = 0u64;
    let mut node = k;
    let drain_until = |s: &Shared| s.stop_sending.load(Ordering::Relaxed);
    let mut drained_at: Option<Instant> = None;
    loop {
        let addr = s.nodes[node % s.nodes.len()];
        let Ok(ws) = s
            .target
            .connect_node(addr, 10_000 + k, &user, &s.room)
            .await
        else {
            node += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        // The backlog and welcome come first; then send again what was not acked.
        for (i, text) in &pending {
            let frame = json!({"type":"message","text":text,"id":format!("{user}-{i}")});
            if tx.send(Message::text(frame.to_string())).await.is_err() {
                break;
            }
            s.totals.resent.fetch_add(1, Ordering::Relaxed);
        }
        let mut tick = tokio::time::interval(interval);
        let mut retry_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if retry_at.is_some_and(|t| Instant::now() >= t) {
                        retry_at = None;
                        let mut ok = true;
                        for (i, text) in &pending {
                            let frame = json!({"type":"message","text":text,"id":format!("{user}-{i}")});
                            ok &= tx.send(Message::text(frame.to_string())).await.is_ok();
                            s.totals.resent.fetch_add(1, Ordering::Relaxed);
                        }
                        if !ok {
                            break;
                        }
                    }
                    if drain_until(&s) {
                        let t = *drained_at.get_or_insert_with(Instant::now);
                        if pending.is_empty() || t.elapsed() > Duration::from_secs(30) {
                            return pending.len() as u64;
                        }
                        continue;
                    }
                    n += 1;
                    let text = format!("t{}:{user}-{n}", s.started.elapsed().as_micros());
                    pending.insert(n, text.clone());
                    s.totals.sent.fetch_add(1, Ordering::Relaxed);
                    let frame = json!({"type":"message","text":text,"id":format!("{user}-{n}")});
                    if tx.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                frame = rx.next() => {
                    let Some(Ok(Message::Text(t))) = frame else {
                        if matches!(frame, Some(Ok(_))) { continue; }
                        break;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    let Some(i) = v["id"].as_str().and_then(|id| id.strip_prefix(&format!("{user}-"))).and_then(|i| i.parse::<u64>().ok()) else { continue };
                    match v["type"].as_str() {
                        Some("ack") => {
                            let seq = v["seq"].as_u64().unwrap_or(0);
                            pending.remove(&i);
                            let id = format!("{user}-{i}");
                            let mut acked = s.acked.lock().unwrap();
                            match acked.get(&seq) {
                                Some(other) if *other != id => { s.forks.fetch_add(1, Ordering::Relaxed); }
                                _ => { acked.insert(seq, id); }
                            }
                        }
                        // Refused (Redis down): it stays pending and goes again shortly,
                        // with its id.
                        Some("error") => {
                            retry_at.get_or_insert(Instant::now() + Duration::from_millis(500));
                        }
                        _ => {}
                    }
                }
            }
        }
        s.totals.reconnects.fetch_add(1, Ordering::Relaxed);
        node += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
