//! The soak: thousands of connections held for minutes, with numbered traffic and churn.
//!
//! Steady members join every room first, then one sender per room numbers its messages
//! (`s{sender}:{n}`), so every steady member must receive every message of its room's
//! senders, in order: any gap is a lost message. Meanwhile churn slots join, stay a while and
//! then leave politely or die mid-frame (a frame header promising bytes that never come, then
//! a dropped TCP connection). The server's RSS is sampled every second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{rss_kib, Target, Ws};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Connections held at once (steady members, senders and churn slots together).
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Messages per second from each room's sender.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Percent of the connections that churn (join, stay 1-10 s, leave or die, rejoin).
    #[arg(long, default_value_t = 10)]
    churn_percent: usize,
    /// Connection attempts in flight at once while ramping up.
    #[arg(long, default_value_t = 100)]
    ramp_concurrency: usize,
}

#[derive(Default)]
struct Counters {
    connect_errors: AtomicU64,
    /// Steady connections the server closed or that failed while the soak ran.
    steady_dropped: AtomicU64,
    delivered: AtomicU64,
    churn_joins: AtomicU64,
    churn_leaves: AtomicU64,
    churn_deaths: AtomicU64,
}

/// What one steady member saw: for each sender, how many in-order messages and any gaps.
#[derive(Default, Debug)]
struct Seen {
    next: HashMap<u64, u64>,
    gaps: u64,
    out_of_order: u64,
}

pub async fn run(target: Arc<Target>, a: Args) -> bool {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pid = target.server_pid;
    let rss_base = pid.and_then(rss_kib);
    let peak = Arc::new(AtomicU64::new(rss_base.unwrap_or(0)));
    if let Some(pid) = pid {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    let churn = a.clients * a.churn_percent / 100;
    let senders = a.rooms;
    let steady = a.clients - churn - senders;
    let room = |i: usize| format!("soak{}", i % a.rooms);
    println!(
        "soak: {} connections ({steady} steady, {senders} senders, {churn} churning) in {} rooms, \
         {} msg/s per sender, {} s",
        a.clients, a.rooms, a.rate, a.duration_secs
    );

    // 1. Steady members, all joined before any message is sent.
    let t0 = Instant::now();
    let gate = Arc::new(Semaphore::new(a.ramp_concurrency));
    let mut joins = Vec::with_capacity(steady);
    for i in 0..steady {
        let (target, gate, counters, room) =
            (target.clone(), gate.clone(), counters.clone(), room(i));
        joins.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            match target.connect(i, &format!("m{i}"), &room).await {
                Ok(ws) => Some(ws),
                Err(e) => {
                    if counters.connect_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connect m{i}: {e}");
                    }
                    None
                }
            }
        }));
    }
    let mut members = Vec::with_capacity(steady);
    for j in joins {
        if let Some(ws) = j.await.unwrap() {
            members.push(ws);
        }
    }
    let ramp = t0.elapsed();
    let rss_ramped = pid.and_then(rss_kib);
    println!(
        "ramp-up: {} steady members in {:.1} s, server RSS {} KiB",
        members.len(),
        ramp.as_secs_f64(),
        rss_ramped.unwrap_or(0)
    );
    let readers: Vec<_> = members
        .into_iter()
        .map(|ws| tokio::spawn(member(ws, stop.clone(), counters.clone())))
        .collect();

    // 2. Churn slots.
    let mut churners = Vec::new();
    for c in 0..churn {
        let (target, stop, counters) = (target.clone(), stop.clone(), counters.clone());
        let (i, room) = (steady + c, room(c));
        churners.push(tokio::spawn(churn_slot(target, i, room, stop, counters)));
    }

    // 3. Senders, one per room.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..senders).map(|_| AtomicU64::new(0)).collect());
    let mut sender_tasks = Vec::new();
    for s in 0..senders {
        let i = steady + churn + s;
        let ws = match target.connect(i, &format!("sender{s}"), &room(s)).await {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("sender {s} could not connect: {e}");
                return false;
            }
        };
        let (stop, sent) = (stop.clone(), sent.clone());
        let every = Duration::from_secs_f64(1.0 / a.rate);
        sender_tasks.push(tokio::spawn(sender(ws, s as u64, every, stop, sent)));
    }

    let run_for = Duration::from_secs(a.duration_secs);
    let started = Instant::now();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(30).min(run_for - started.elapsed())).await;
        println!(
            "  t={:>4}s delivered={} churn joins={} leaves={} deaths={} server RSS={} KiB",
            started.elapsed().as_secs(),
            counters.delivered.load(Ordering::Relaxed),
            counters.churn_joins.load(Ordering::Relaxed),
            counters.churn_leaves.load(Ordering::Relaxed),
            counters.churn_deaths.load(Ordering::Relaxed),
            pid.and_then(rss_kib).unwrap_or(0),
        );
    }

    // Stop sending, give deliveries in flight time to land, then stop reading.
    for t in &sender_tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<u64> = sent.iter().map(|s| s.load(Ordering::Relaxed)).collect();
    let mut lost = 0u64;
    let mut out_of_order = 0u64;
    let mut healthy = 0u64;
    for (idx, r) in readers.into_iter().enumerate() {
        let Ok(Some(seen)) = r.await else { continue };
        healthy += 1;
        let sender_of_room = idx % a.rooms;
        let got = seen
            .next
            .get(&(sender_of_room as u64))
            .copied()
            .unwrap_or(0);
        lost += sent[sender_of_room].saturating_sub(got) + seen.gaps;
        out_of_order += seen.out_of_order;
    }
    for c in churners {
        let _ = c.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = pid.and_then(rss_kib);

    let errors = counters.connect_errors.load(Ordering::Relaxed)
        + counters.steady_dropped.load(Ordering::Relaxed);
    println!("== soak result");
    println!(
        "  connections held: {} for {} s",
        a.clients, a.duration_secs
    );
    println!(
        "  messages sent: {} ({} per room)",
        sent.iter().sum::<u64>(),
        sent[0]
    );
    println!(
        "  deliveries: {}",
        counters.delivered.load(Ordering::Relaxed)
    );
    println!(
        "  churn: {} joins, {} polite leaves, {} deaths mid-frame",
        counters.churn_joins.load(Ordering::Relaxed),
        counters.churn_leaves.load(Ordering::Relaxed),
        counters.churn_deaths.load(Ordering::Relaxed)
    );
    println!(
        "  healthy clients: {healthy}; messages lost by them: {lost}; out of order: {out_of_order}"
    );
    println!(
        "  errors: {errors} ({} connect failures, {} steady connections dropped)",
        counters.connect_errors.load(Ordering::Relaxed),
        counters.steady_dropped.load(Ordering::Relaxed)
    );
    if pid.is_some() {
        println!(
            "  server RSS: start {} KiB, after ramp-up {} KiB, peak {} KiB, end {} KiB",
            rss_base.unwrap_or(0),
            rss_ramped.unwrap_or(0),
            peak.load(Ordering::Relaxed),
            rss_end.unwrap_or(0)
        );
    }
    lost == 0 && out_of_order == 0 && errors == 0
}

/// A steady member: reads everything, checks each sender's numbering.
async fn member(mut ws: Ws, stop: Arc<AtomicBool>, counters: Arc<Counters>) -> Option<Seen> {
    let mut seen = Seen::default();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
        if stop.load(Ordering::Relaxed) {
            let _ = ws.close(None).await;
            return Some(seen);
        }
        let msg = match next {
            Err(_) => continue,
            Ok(Some(Ok(m))) => m,
            Ok(_) => {
                counters.steady_dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
            continue;
        };
        if v["type"] != "message" {
            continue;
        }
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        let Some((sid, n)) = v["text"]
            .as_str()
            .and_then(|t| t.strip_prefix('s'))
            .and_then(|t| t.split_once(':'))
            .and_then(|(s, n)| Some((s.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
        else {
            continue;
        };
        let expected = seen.next.entry(sid).or_insert(0);
        if n == *expected {
            *expected += 1;
        } else if n > *expected {
            seen.gaps += n - *expected;
            *expected = n + 1;
        } else {
            seen.out_of_order += 1;
        }
    }
}

async fn sender(
    mut ws: Ws,
    sid: u64,
    every: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<Vec<AtomicU64>>,
) {
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                let m = serde_json::json!({"type": "message", "text": format!("s{sid}:{n}")});
                if ws.send(Message::text(m.to_string())).await.is_err() {
                    eprintln!("sender {sid} lost its connection");
                    return;
                }
                n += 1;
                sent[sid as usize].store(n, Ordering::Relaxed);
            }
            // Senders receive their room's traffic too (nothing, with one sender per room,
            // but acks and pings): keep reading so the server never sees a slow consumer.
            m = ws.next() => if m.is_none() { return },
        }
    }
}

/// Join, read for 1-10 s, then leave politely or die mid-frame; again until the soak ends.
async fn churn_slot(
    target: Arc<Target>,
    i: usize,
    room: String,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let mut round = 0u64;
    // Spread the first joins over the first few seconds.
    tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 5000)).await;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let mut ws = match target.connect(i, &format!("c{i}"), &room).await {
            Ok(ws) => ws,
            Err(_) => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        counters.churn_joins.fetch_add(1, Ordering::Relaxed);
        let stay = Duration::from_millis(1000 + (i as u64 * 7919 + round * 104_729) % 9000);
        let until = tokio::time::Instant::now() + stay;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, ws.next()).await {}
        if (i as u64 + round).is_multiple_of(2) {
            let _ = ws.close(None).await;
            counters.churn_leaves.fetch_add(1, Ordering::Relaxed);
        } else {
            // A masked text frame header promising 100 bytes, 10 of them, then gone.
            let mut partial = vec![0x81, 0x80 | 100, 1, 2, 3, 4];
            partial.extend_from_slice(b"{\"type\":\"m");
            let tls = ws.get_mut();
            let _ = tls.write_all(&partial).await;
            let _ = tls.flush().await;
            // Dropped without a Close frame or TLS close_notify: the peer just vanishes.
            drop(ws);
            counters.churn_deaths.fetch_add(1, Ordering::Relaxed);
        }
    }
}
