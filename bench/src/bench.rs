//! The benchmark modes: broadcast, saturation, idle memory and handshakes.
//!
//! Every message a sender writes carries its sender, step, number and *intended* send time,
//! so latency counts the time a message waited in any queue, the sender's included (open
//! loop: a sender that falls behind sends late, it does not send less). Receivers find those
//! fields with a substring search rather than a JSON parse, so the load generator stays cheap
//! enough to not be the bottleneck first. Each mode ends with one `RESULT {json}` line.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{cpu_split_us, cpu_us, rss_kib, Machine, MachineUse, Target, Ws};

/// Log-linear latency histogram over microseconds: 16 sub-buckets per power of two.
const BUCKETS: usize = 16 * 40;

fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (e - 4)) & 15) as usize;
    (16 * (e - 3) + sub).min(BUCKETS - 1)
}

fn bucket_floor(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let e = i / 16 + 3;
    let sub = (i % 16) as u64;
    (16 + sub) << (e - 4)
}

/// What receivers saw for one step.
struct StepStats {
    delivered: AtomicU64,
    hist: Vec<AtomicU64>,
}

impl StepStats {
    fn new() -> StepStats {
        StepStats {
            delivered: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.hist.iter().map(|h| h.load(Ordering::Relaxed)).sum();
        if total == 0 {
            return f64::NAN;
        }
        let want = ((total as f64) * p).ceil() as u64;
        let mut acc = 0;
        for (i, h) in self.hist.iter().enumerate() {
            acc += h.load(Ordering::Relaxed);
            if acc >= want {
                return bucket_floor(i) as f64 / 1000.0;
            }
        }
        f64::NAN
    }
}

#[derive(clap::Args, Clone)]
pub struct BroadcastArgs {
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Messages per second into the room, all senders together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    #[arg(long, default_value = "bench")]
    room: String,
}

#[derive(clap::Args, Clone)]
pub struct SaturateArgs {
    #[command(flatten)]
    base: BroadcastArgs,
    /// Room rates to try in turn (messages per second into the room).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,300,400,500,600,700,800,1000,1200,1500,2000"
    )]
    rates: Vec<f64>,
}

/// A room full of connected clients, readers already running.
struct Room {
    senders: Vec<futures_util::stream::SplitSink<Ws, Message>>,
    stats: Arc<Vec<StepStats>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    connected: usize,
    /// Recipients of each message: everyone but the sender in one room, 1 in a direct chat.
    fanout: u64,
}

async fn fill_room(target: &Arc<Target>, a: &BroadcastArgs, steps: usize) -> Result<Room, String> {
    let epoch = Instant::now();
    let stats: Arc<Vec<StepStats>> = Arc::new((0..steps).map(|_| StepStats::new()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(100));
    let mut joins = Vec::new();
    for i in 0..a.clients {
        let (target, gate, room) = (target.clone(), gate.clone(), a.room.clone());
        joins.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            target.connect(i, &format!("b{i}"), &room).await
        }));
    }
    let mut senders = Vec::new();
    let mut connected = 0;
    for (i, j) in joins.into_iter().enumerate() {
        let ws = j.await.map_err(|e| e.to_string())??;
        connected += 1;
        let (stats, stop) = (stats.clone(), stop.clone());
        if i < a.senders {
            let (sink, stream) = ws.split();
            senders.push(sink);
            tokio::spawn(read_into(stream, stats, stop, epoch));
        } else {
            // Receivers never send, so they read the socket whole: a split's lock and wakers
            // on every frame were a few percent of the load generator's core, which is near
            // full at 100 msg/s into 1,000 clients.
            tokio::spawn(read_into(ws, stats, stop, epoch));
        }
    }
    if let Some(pid) = target.server_pid {
        wait_quiet(pid).await;
    }
    Ok(Room {
        senders,
        stats,
        stop,
        epoch,
        connected,
        fanout: connected as u64 - 1,
    })
}

/// Wait until the server's CPU use falls below 2 % over a second, for at most two minutes:
/// the welcomes, and with presence every join told to every member, take a while to drain
/// after a room fills, and what is measured next must not include them.
async fn wait_quiet(pid: u32) {
    let mut last = cpu_us(pid).unwrap_or(0);
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_us(pid).unwrap_or(0);
        if now.saturating_sub(last) < 20_000 {
            return;
        }
        last = now;
    }
}

/// Record every message's step and latency until told to stop.
async fn read_into(
    mut stream: impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
    stats: Arc<Vec<StepStats>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) {
    while let Some(Ok(m)) = stream.next().await {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Message::Text(t) = m else { continue };
        // text is "B{step}:{intended_us}:{padding}"; only our messages start with "B".
        let Some(i) = t.find("\"text\":\"B") else {
            continue;
        };
        let rest = &t[i + 9..];
        let mut parts = rest.splitn(3, ':');
        let (Some(step), Some(sent)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(step), Ok(sent)) = (step.parse::<usize>(), sent.parse::<u64>()) else {
            continue;
        };
        let now = epoch.elapsed().as_micros() as u64;
        if let Some(s) = stats.get(step) {
            s.delivered.fetch_add(1, Ordering::Relaxed);
            s.hist[bucket(now.saturating_sub(sent))].fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct StepResult {
    rate: f64,
    sent: u64,
    expected: u64,
    delivered: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    server_cpu_us: Option<u64>,
    /// The kernel's part of `server_cpu_us`.
    server_sys_us: Option<u64>,
    /// The host's steal and the load generator's own CPU over the measured part.
    machine: Option<MachineUse>,
}

impl StepResult {
    fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
    fn delivered_ratio(&self) -> f64 {
        self.delivered as f64 / self.expected.max(1) as f64
    }
    fn json(&self, rss: Option<u64>) -> String {
        format!(
            "{{\"rate\":{},\"sent\":{},\"expected\":{},\"delivered\":{},\"deliveries_per_sec\":{:.0},\
             \"delivered_ratio\":{:.4},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\
             \"cpu_us_per_delivery\":{},\"sys_us_per_delivery\":{},\"server_rss_kib\":{}{}}}",
            self.rate,
            self.sent,
            self.expected,
            self.delivered,
            self.deliveries_per_sec(),
            self.delivered_ratio(),
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.server_cpu_us
                .map(|c| format!("{:.3}", c as f64 / self.delivered.max(1) as f64))
                .unwrap_or("null".into()),
            self.server_sys_us
                .map(|c| format!("{:.3}", c as f64 / self.delivered.max(1) as f64))
                .unwrap_or("null".into()),
            rss.map(|r| r.to_string()).unwrap_or("null".into()),
            machine_json(self.machine, Some(self.delivered)),
        )
    }
}

/// Send at `rate` for warm-up plus duration; measure only the part after warm-up.
async fn run_step(
    room: &mut Room,
    a: &BroadcastArgs,
    step: usize,
    rate: f64,
    pid: Option<u32>,
) -> StepResult {
    let senders = room.senders.len().max(1) as u64;
    let per_sender = rate / senders as f64;
    let interval_us = (1e6 / per_sender) as u64;
    let warm = Duration::from_secs(a.warmup_secs);
    let total = warm + Duration::from_secs(a.duration_secs);
    let pad = "x".repeat(a.size.saturating_sub(24));
    let sent = Arc::new(AtomicU64::new(0));
    // Warm-up messages go to a step nobody counts (the last slot), measured ones to `step`.
    let warm_step = room.stats.len() - 1;
    let start_us = room.epoch.elapsed().as_micros() as u64 + 20_000;
    let measure_from_us = start_us + warm.as_micros() as u64;
    let end_us = start_us + total.as_micros() as u64;
    let cpu_at = Arc::new(AtomicU64::new(0));
    let sys_at = Arc::new(AtomicU64::new(0));
    let machine_at = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::new();
    for (k, sink) in std::mem::take(&mut room.senders).into_iter().enumerate() {
        let (sent, pad, epoch) = (sent.clone(), pad.clone(), room.epoch);
        let (cpu_at, sys_at, machine_at) = (cpu_at.clone(), sys_at.clone(), machine_at.clone());
        tasks.push(tokio::spawn(async move {
            let mut sink = sink;
            // Senders start staggered across one interval (sender k of n at k/n of it) so the
            // room's load is smooth rather than n messages at once.
            let mut next = start_us + interval_us * k as u64 / senders;
            let mut n = 0u64;
            while next < end_us {
                let now = epoch.elapsed().as_micros() as u64;
                if now < next {
                    tokio::time::sleep(Duration::from_micros(next - now)).await;
                }
                if k == 0 && next >= measure_from_us && cpu_at.load(Ordering::Relaxed) == 0 {
                    let (user, system) = pid.and_then(cpu_split_us).unwrap_or((1, 0));
                    sys_at.store(system, Ordering::Relaxed);
                    cpu_at.store((user + system).max(1), Ordering::Relaxed);
                    if let Some(m) = Machine::now() {
                        let _ = machine_at.set(m);
                    }
                }
                // Everything due by now goes out in one batch and one flush.
                let now = epoch.elapsed().as_micros() as u64;
                while next <= now && next < end_us {
                    let s = if next >= measure_from_us {
                        step
                    } else {
                        warm_step
                    };
                    let text = format!("B{s}:{next}:{pad}");
                    let m = format!("{{\"type\":\"message\",\"text\":\"{text}\"}}");
                    if sink.feed(Message::text(m)).await.is_err() {
                        return sink;
                    }
                    if s == step {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    next += interval_us;
                }
                if sink.flush().await.is_err() {
                    return sink;
                }
            }
            let _ = n;
            sink
        }));
    }
    for t in tasks {
        if let Ok(sink) = t.await {
            room.senders.push(sink);
        }
    }
    let split_end = pid.and_then(cpu_split_us);
    let machine = machine_at.get().and_then(Machine::since);
    let cpu_end = split_end.map(|(user, system)| user + system);
    // Let deliveries in flight land (and count them): up to 2 s.
    let s = &room.stats[step];
    let mut last = s.delivered.load(Ordering::Relaxed);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = s.delivered.load(Ordering::Relaxed);
        if now == last && now >= sent.load(Ordering::Relaxed) * room.fanout {
            break;
        }
        last = now;
    }
    let sent = sent.load(Ordering::Relaxed);
    let cpu_start = cpu_at.load(Ordering::Relaxed);
    let max_ms = s
        .hist
        .iter()
        .rposition(|h| h.load(Ordering::Relaxed) > 0)
        .map_or(f64::NAN, |i| bucket_floor(i) as f64 / 1000.0);
    StepResult {
        rate,
        sent,
        expected: sent * room.fanout,
        delivered: s.delivered.load(Ordering::Relaxed),
        secs: a.duration_secs as f64,
        p50_ms: s.percentile_ms(0.50),
        p99_ms: s.percentile_ms(0.99),
        max_ms,
        server_cpu_us: match (cpu_start, cpu_end) {
            (c0, Some(c1)) if c0 > 1 => Some(c1.saturating_sub(c0)),
            _ => None,
        },
        server_sys_us: match (cpu_start, split_end) {
            (c0, Some((_, s1))) if c0 > 1 => {
                Some(s1.saturating_sub(sys_at.load(Ordering::Relaxed)))
            }
            _ => None,
        },
        machine,
    }
}

/// `,"steal_pct":..,"loadgen_pct":..[,"loadgen_us_per_delivery":..]` for a RESULT line, or
/// nothing when /proc could not say.
fn machine_json(m: Option<MachineUse>, delivered: Option<u64>) -> String {
    m.map(|m| {
        format!(
            ",\"steal_pct\":{:.1},\"loadgen_pct\":{:.1}{}",
            m.steal_pct,
            m.loadgen_pct,
            delivered
                .map(|d| format!(",\"loadgen_us_per_delivery\":{:.3}", m.loadgen_us_per(d)))
                .unwrap_or_default()
        )
    })
    .unwrap_or_default()
}

/// How busy the machine was, for a step's line: a run with steal or a saturated load
/// generator measured the host or the client as much as the server.
fn machine_text(m: Option<MachineUse>, delivered: Option<u64>) -> String {
    m.map(|m| {
        format!(
            "; host steal {:.1} %, load generator {:.0} % of a core{}{}",
            m.steal_pct,
            m.loadgen_pct,
            delivered
                .map(|d| format!(" ({:.2} CPU-us per delivery)", m.loadgen_us_per(d)))
                .unwrap_or_default(),
            if m.steal_pct > 5.0 || m.loadgen_pct > 90.0 {
                " (busy machine: compare ratios within this run only)"
            } else {
                ""
            }
        )
    })
    .unwrap_or_default()
}

fn print_step(r: &StepResult) {
    println!(
        "  rate {:>7.0} msg/s: {:>9.0} deliveries/s ({:.1} % of expected), p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms{}{}{}",
        r.rate,
        r.deliveries_per_sec(),
        r.delivered_ratio() * 100.0,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.server_cpu_us
            .map(|c| format!(", {:.2} CPU-us/delivery", c as f64 / r.delivered.max(1) as f64))
            .unwrap_or_default(),
        r.server_sys_us
            .map(|c| format!(" ({:.2} of it in the kernel)", c as f64 / r.delivered.max(1) as f64))
            .unwrap_or_default(),
        machine_text(r.machine, Some(r.delivered))
    );
}

pub async fn broadcast(target: Arc<Target>, a: BroadcastArgs) -> bool {
    let mut room = match fill_room(&target, &a, 2).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not fill the room: {e}");
            return false;
        }
    };
    println!(
        "broadcast: {} clients, {} senders, {} B messages",
        room.connected, a.senders, a.size
    );
    let r = run_step(&mut room, &a, 0, a.rate, target.server_pid).await;
    print_step(&r);
    room.stop.store(true, Ordering::Relaxed);
    println!("RESULT {}", r.json(target.server_pid.and_then(rss_kib)));
    true
}

pub async fn saturate(target: Arc<Target>, a: SaturateArgs) -> bool {
    let mut room = match fill_room(&target, &a.base, a.rates.len() + 1).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not fill the room: {e}");
            return false;
        }
    };
    println!(
        "saturation: {} clients, {} senders, {} B messages; pass = p99 <= 250 ms and >= 90 % delivered",
        room.connected, a.base.senders, a.base.size
    );
    let mut best: Option<StepResult> = None;
    for (i, &rate) in a.rates.iter().enumerate() {
        let r = run_step(&mut room, &a.base, i, rate, target.server_pid).await;
        print_step(&r);
        let pass = r.p99_ms <= 250.0 && r.delivered_ratio() >= 0.9;
        if !pass {
            break;
        }
        best = Some(r);
        // Let queues drain before the next step.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    room.stop.store(true, Ordering::Relaxed);
    match best {
        Some(r) => {
            println!("RESULT {}", r.json(target.server_pid.and_then(rss_kib)));
            true
        }
        None => {
            println!("RESULT {{\"deliveries_per_sec\":0}}");
            false
        }
    }
}

#[derive(clap::Args, Clone)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    #[arg(long, default_value = "bench")]
    room: String,
    /// Spread the clients over this many rooms (ROOM0, ROOM1, ...); 0 or 1: all in ROOM.
    #[arg(long, default_value_t = 0)]
    rooms: usize,
    /// Keep the connections open this long after measuring (several loadgens holding their
    /// connections at once, for a cluster figure).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

pub async fn idle(target: Arc<Target>, a: IdleArgs) -> bool {
    let Some(pid) = target.server_pid else {
        eprintln!("idle needs --server-pid");
        return false;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid).unwrap_or(0);
    let gate = Arc::new(Semaphore::new(100));
    let held = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::new();
    for i in 0..a.clients {
        let room = if a.rooms > 1 {
            format!("{}{}", a.room, i % a.rooms)
        } else {
            a.room.clone()
        };
        let (target, gate, held) = (target.clone(), gate.clone(), held.clone());
        joins.push(tokio::spawn(async move {
            let ws = {
                let _p = gate.acquire().await.unwrap();
                target.connect(i, &format!("i{i}"), &room).await.ok()?
            };
            held.fetch_add(1, Ordering::Relaxed);
            // Read (welcome, pings) so the connection is idle, not stalled.
            let mut ws = ws;
            while let Some(Ok(_)) = ws.next().await {}
            Some(())
        }));
    }
    while held.load(Ordering::Relaxed) < a.clients {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if joins.iter().all(|j| j.is_finished()) {
            break;
        }
    }
    wait_quiet(pid).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).unwrap_or(0);
    let n = held.load(Ordering::Relaxed);
    let per = (after.saturating_sub(before)) as f64 / n.max(1) as f64;
    println!(
        "idle: {n} connections, server RSS {before} -> {after} KiB, {per:.2} KiB per connection"
    );
    println!("RESULT {{\"connections\":{n},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_connection\":{per:.3}}}");
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    for j in joins {
        j.abort();
    }
    n == a.clients
}

#[derive(clap::Args, Clone)]
pub struct HandshakeArgs {
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value = "bench")]
    room: String,
}

pub async fn handshakes(target: Arc<Target>, a: HandshakeArgs) -> bool {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = target.server_pid.and_then(cpu_us);
    let machine0 = Machine::now();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let (target, done, failed, stop, room) = (
            target.clone(),
            done.clone(),
            failed.clone(),
            stop.clone(),
            a.room.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection each time; the client keeps no session, so no resumption.
                match target.connect_fresh(i, &format!("h{i}"), &room).await {
                    Ok(ws) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        drop(ws);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += a.concurrency;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.duration_secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, target.server_pid.and_then(cpu_us)) {
        (Some(a), Some(b)) => Some((b - a) as f64 / n.max(1) as f64),
        _ => None,
    };
    let machine = machine0.as_ref().and_then(Machine::since);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "handshakes: {n} in {secs:.1} s = {:.0}/s, {} failed{}{}",
        n as f64 / secs,
        failed.load(Ordering::Relaxed),
        cpu.map(|c| format!(", {c:.0} server CPU-us per handshake"))
            .unwrap_or_default(),
        machine_text(machine, None)
    );
    println!(
        "RESULT {{\"handshakes_per_sec\":{:.1},\"failed\":{},\"cpu_us_per_handshake\":{}{}}}",
        n as f64 / secs,
        failed.load(Ordering::Relaxed),
        cpu.map(|c| format!("{c:.1}")).unwrap_or("null".into()),
        machine_json(machine, None)
    );
    n > 0
}

#[derive(clap::Args, Clone)]
pub struct DirectArgs {
    /// Rooms of two: one member sends, the other receives.
    #[arg(long, default_value_t = 5000)]
    pairs: usize,
    /// Messages per second over all the rooms together.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Room name prefix: rooms are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "dm")]
    room: String,
}

/// Direct messages: `pairs` rooms of two, every room's sender at an even share of `rate`.
pub async fn direct(target: Arc<Target>, a: DirectArgs) -> bool {
    let epoch = Instant::now();
    let stats: Arc<Vec<StepStats>> = Arc::new((0..2).map(|_| StepStats::new()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(100));
    let mut joins = Vec::new();
    for i in 0..a.pairs * 2 {
        let (target, gate, room) = (target.clone(), gate.clone(), format!("{}{}", a.room, i / 2));
        joins.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            target.connect(i, &format!("d{i}"), &room).await
        }));
    }
    let mut senders = Vec::new();
    let mut connected = 0;
    for (i, j) in joins.into_iter().enumerate() {
        let ws = match j.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("could not connect client {i}: {e}");
                return false;
            }
        };
        connected += 1;
        let (sink, stream) = ws.split();
        let (stats, stop) = (stats.clone(), stop.clone());
        if i % 2 == 0 {
            senders.push(sink);
            tokio::spawn(read_into(stream, stats, stop, epoch));
        } else {
            tokio::spawn(async move {
                let _sink = sink;
                read_into(stream, stats, stop, epoch).await
            });
        }
    }
    let mut room = Room {
        senders,
        stats,
        stop,
        epoch,
        connected,
        fanout: 1,
    };
    println!(
        "direct: {} rooms of 2, {} msg/s over all, {} B messages",
        a.pairs, a.rate, a.size
    );
    let base = BroadcastArgs {
        clients: connected,
        senders: a.pairs,
        size: a.size,
        rate: a.rate,
        duration_secs: a.duration_secs,
        warmup_secs: a.warmup_secs,
        room: a.room.clone(),
    };
    let r = run_step(&mut room, &base, 0, a.rate, target.server_pid).await;
    print_step(&r);
    room.stop.store(true, Ordering::Relaxed);
    println!("RESULT {}", r.json(target.server_pid.and_then(rss_kib)));
    true
}

#[derive(clap::Args, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    base: BroadcastArgs,
    /// Extra clients joining the room per second, each leaving again `stay_ms` later (so as
    /// many leave per second as join).
    #[arg(long, default_value_t = 50.0)]
    joins_per_sec: f64,
    #[arg(long, default_value_t = 1000)]
    stay_ms: u64,
}

/// The broadcast shape with presence churn on top: clients keep joining and leaving the room
/// while it is measured. Compare its p99 with `broadcast` at the same rate.
pub async fn churn(target: Arc<Target>, a: ChurnArgs) -> bool {
    let mut room = match fill_room(&target, &a.base, 2).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("could not fill the room: {e}");
            return false;
        }
    };
    println!(
        "churn: {} clients, {} senders, {} B messages, {} joins and leaves per second",
        room.connected, a.base.senders, a.base.size, a.joins_per_sec
    );
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicU64::new(0));
    let churner = {
        let (target, stop, joined, room_name) = (
            target.clone(),
            stop.clone(),
            joined.clone(),
            a.base.room.clone(),
        );
        let every = Duration::from_secs_f64(1.0 / a.joins_per_sec.max(0.1));
        let stay = Duration::from_millis(a.stay_ms);
        let first = a.base.clients;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (target, joined, room_name) =
                    (target.clone(), joined.clone(), room_name.clone());
                let i = first + n;
                n += 1;
                tokio::spawn(async move {
                    if let Ok(mut ws) = target.connect(i, &format!("c{i}"), &room_name).await {
                        joined.fetch_add(1, Ordering::Relaxed);
                        let _ = tokio::time::timeout(stay, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        let _ = ws.close(None).await;
                    }
                });
            }
        })
    };
    let r = run_step(&mut room, &a.base, 0, a.base.rate, target.server_pid).await;
    stop.store(true, Ordering::Relaxed);
    churner.abort();
    print_step(&r);
    println!(
        "  {} churn clients joined and left",
        joined.load(Ordering::Relaxed)
    );
    room.stop.store(true, Ordering::Relaxed);
    println!("RESULT {}", r.json(target.server_pid.and_then(rss_kib)));
    true
}
