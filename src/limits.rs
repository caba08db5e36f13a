//! Rate limits and caps: messages per connection and per user, handshakes per source address,
//! and the counted caps on live connections per address and per user.
//!
//! The rates are governor GCRA limiters, which cost a few dozen bytes per key and need no
//! timer per client. The keyed ones grow with every distinct user or address they see, so
//! [`Limits::prune`] runs on a timer to drop keys idle for a full replenish interval. A
//! [`CapCounter`] holds an entry only while its key has live connections, so it is bounded by
//! `server.max_connections` however many addresses or users come and go. A [`ConnGuard`] is an
//! accepted connection's place under the connection caps.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, QuantaClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// Rate-limit violations are counted over this window for `limits.max_violations`.
pub const VIOLATION_WINDOW: Duration = Duration::from_secs(60);

/// The server-wide limiters.
pub struct Limits {
    /// Each connection's own limiter is built from this quota.
    message_quota: Quota,
    /// The same quota again, across all of one user's connections, so opening more sockets
    /// does not buy more messages.
    per_user: DefaultKeyedRateLimiter<String>,
    /// Handshakes per source address (IPv6 grouped by /64, which one host usually owns).
    handshakes: DefaultKeyedRateLimiter<IpAddr>,
    max_violations: u32,
    /// One clock for every connection's limiter: making a clock reads CPUID and calibrates,
    /// which cost ~10 % of a whole TLS handshake when each connection made its own
    /// (bench/profile.sh handshakes-x25519); a clone copies the calibration.
    clock: QuantaClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("users", &self.per_user.len())
            .field("addresses", &self.handshakes.len())
            .finish()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1) is non-zero")
}

impl Limits {
    pub fn new(cfg: &LimitsConfig) -> Limits {
        let message_quota =
            Quota::per_second(nz(cfg.messages_per_second)).allow_burst(nz(cfg.burst));
        let hs = nz(cfg.handshakes_per_minute_per_ip);
        Limits {
            message_quota,
            per_user: RateLimiter::keyed(message_quota),
            handshakes: RateLimiter::keyed(Quota::per_minute(hs).allow_burst(hs)),
            max_violations: cfg.max_violations,
            clock: QuantaClock::default(),
        }
    }

    /// A fresh limiter for one connection.
    pub fn connection(&self) -> ConnectionLimiter {
        ConnectionLimiter {
            limiter: RateLimiter::direct_with_clock(self.message_quota, self.clock.clone()),
            window_start: Instant::now(),
            violations: 0,
            max_violations: self.max_violations,
        }
    }

    /// May this address start another handshake? `Err` carries how long until it may.
    pub fn check_handshake(&self, ip: IpAddr) -> Result<(), Duration> {
        self.handshakes
            .check_key(&address_key(ip))
            .map_err(|nu| nu.wait_time_from(self.handshakes.clock().now()))
    }

    /// Drop keys whose state is back to full and give the memory back.
    pub fn prune(&self) {
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
        self.handshakes.retain_recent();
        self.handshakes.shrink_to_fit();
    }

    /// How many keys the keyed limiters hold (users, addresses).
    pub fn tracked_keys(&self) -> (usize, usize) {
        (self.per_user.len(), self.handshakes.len())
    }
}

/// The outcome of offering one message to the limiters.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refuse this message; the client may retry after this long.
    Limited(Duration),
    /// Too many refusals within [`VIOLATION_WINDOW`]: close the connection.
    Disconnect,
}

/// One connection's limiter and its count of recent violations.
pub struct ConnectionLimiter {
    limiter: DefaultDirectRateLimiter,
    window_start: Instant,
    violations: u32,
    max_violations: u32,
}

impl ConnectionLimiter {
    /// Offer one message from `user`; both the connection's and the user's quota must allow it.
    pub fn check(&mut self, limits: &Limits, user: &str) -> Verdict {
        let wait = match self.limiter.check() {
            Err(nu) => Some(nu.wait_time_from(self.limiter.clock().now())),
            // Only charge the user's shared quota when the connection's own allowed it, so one
            // flooding socket does not also drain the user's other sockets twice over.
            Ok(()) => match limits.per_user.check_key(&user.to_owned()) {
                Ok(()) => None,
                Err(nu) => Some(nu.wait_time_from(limits.per_user.clock().now())),
            },
        };
        let Some(wait) = wait else {
            return Verdict::Allowed;
        };
        let now = Instant::now();
        if now.duration_since(self.window_start) > VIOLATION_WINDOW {
            self.window_start = now;
            self.violations = 0;
        }
        self.violations += 1;
        if self.violations >= self.max_violations {
            Verdict::Disconnect
        } else {
            Verdict::Limited(wait)
        }
    }
}

/// At most `max` live holders per key.
#[derive(Debug)]
pub struct CapCounter<K: Hash + Eq> {
    counts: Mutex<HashMap<K, usize>>,
    max: usize,
}

impl<K: Hash + Eq + Clone> CapCounter<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(CapCounter {
            counts: Mutex::new(HashMap::new()),
            max,
        })
    }

    /// A slot for `key`, or `None` when it already holds `max`. The slot frees itself on drop.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<CapSlot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(CapSlot {
            owner: self.clone(),
            key,
        })
    }

    /// Keys with at least one live slot.
    pub fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One live holder's place under a [`CapCounter`].
#[derive(Debug)]
pub struct CapSlot<K: Hash + Eq + Clone> {
    owner: Arc<CapCounter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for CapSlot<K> {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
            }
        },
    }
}

/// What one accepted connection holds until it ends; dropping it frees its place under both
/// `server.max_connections` and `server.max_connections_per_ip`.
#[derive(Debug)]
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    _per_ip: CapSlot<IpAddr>,
}

impl ConnGuard {
    /// A place for a connection from `ip`, or `None` when either cap is reached.
    pub fn admit(
        slots: &Arc<Semaphore>,
        per_ip: &Arc<CapCounter<IpAddr>>,
        ip: IpAddr,
    ) -> Option<ConnGuard> {
        let permit = slots.clone().try_acquire_owned().ok()?;
        let slot = per_ip.try_take(address_key(ip))?;
        Some(ConnGuard {
            _permit: permit,
            _per_ip: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_sec: u32, burst: u32, max_violations: u32) -> LimitsConfig {
        LimitsConfig {
            messages_per_second: per_sec,
            burst,
            max_violations,
            handshakes_per_minute_per_ip: 2,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn burst_then_limited_then_disconnect() {
        let limits = Limits::new(&cfg(1, 3, 3));
        let mut c = limits.connection();
        for _ in 0..3 {
            assert_eq!(c.check(&limits, "u"), Verdict::Allowed);
        }
        match c.check(&limits, "u") {
            Verdict::Limited(d) => assert!(d > Duration::ZERO && d <= Duration::from_secs(1)),
            v => panic!("{v:?}"),
        }
        assert!(matches!(c.check(&limits, "u"), Verdict::Limited(_)));
        assert_eq!(c.check(&limits, "u"), Verdict::Disconnect);
    }

    #[test]
    fn user_quota_spans_connections() {
        let limits = Limits::new(&cfg(1, 2, 10));
        let (mut a, mut b) = (limits.connection(), limits.connection());
        assert_eq!(a.check(&limits, "u"), Verdict::Allowed);
        assert_eq!(b.check(&limits, "u"), Verdict::Allowed);
        assert!(matches!(a.check(&limits, "u"), Verdict::Limited(_)));
        assert_eq!(b.check(&limits, "v"), Verdict::Allowed);
    }

    #[test]
    fn handshakes_per_address_and_v6_grouping() {
        let limits = Limits::new(&cfg(1, 1, 1));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(limits.check_handshake(a).is_ok());
        assert!(limits.check_handshake(b).is_ok());
        let wait = limits.check_handshake(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(30));
        assert!(limits
            .check_handshake("2001:db9::1".parse().unwrap())
            .is_ok());
        assert!(limits.check_handshake("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn cap_counter_frees_on_drop_and_forgets_idle_keys() {
        let caps = CapCounter::new(2);
        let a1 = caps.try_take("a").unwrap();
        let _a2 = caps.try_take("a").unwrap();
        assert!(caps.try_take("a").is_none());
        let b = caps.try_take("b").unwrap();
        assert_eq!(caps.len(), 2);
        drop(a1);
        assert!(caps.try_take("a").is_some());
        drop(b);
        assert_eq!(caps.len(), 1, "a key with no live slot is forgotten");
    }

    #[test]
    fn prune_drops_idle_keys() {
        // A quota that replenishes in 1 ms so keys become idle at once.
        let limits = Limits::new(&LimitsConfig {
            messages_per_second: 1000,
            burst: 1,
            ..LimitsConfig::default()
        });
        for i in 0..10_000u32 {
            let _ = limits.per_user.check_key(&format!("user{i}"));
        }
        assert_eq!(limits.tracked_keys().0, 10_000);
        std::thread::sleep(Duration::from_millis(20));
        limits.prune();
        assert_eq!(limits.tracked_keys().0, 0);
    }
}
