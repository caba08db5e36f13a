//! Moderation: what a moderator may do to a room, and what stays in force afterwards.
//!
//! An [`Action`] (kick, mute, delete) is checked here ([`Action::check`]: a reason that is
//! short plain text, a mute within `moderation.max_mute_s`) and then carried out by the engine,
//! whoever asked: a moderator's socket or a back end's API key. What outlives the action lives
//! in [`Sanctions`]: who is kept out of a room (a kick's ban) and who may not post there (a
//! mute), each until a deadline. They are held per (room, user) beside the rooms, not in a
//! room, so a ban holds even when the kicked user's room empties and is dropped; with Redis
//! every node keeps the same entries (redis_store.rs publishes them). Every action is written
//! to the audit log ([`audit`]) at info, naming who, what, whom, where and why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tracing::info;

use crate::store::now_ms;

/// Longest kick reason, in bytes: it must fit a Close frame's reason (123 bytes).
pub const MAX_REASON_BYTES: usize = 120;
/// Entries [`Sanctions`] holds at most; expired ones are dropped first.
const MAX_SANCTIONS: usize = 100_000;

/// What a moderator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Kick { user: String, reason: String },
    Mute { user: String, seconds: u64 },
    Delete { seq: u64 },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Kick { .. } => "kick",
            Action::Mute { .. } => "mute",
            Action::Delete { .. } => "delete",
        }
    }

    /// The user acted on, for kick and mute.
    pub fn target(&self) -> Option<&str> {
        match self {
            Action::Kick { user, .. } | Action::Mute { user, .. } => Some(user),
            Action::Delete { .. } => None,
        }
    }

    /// Whether the request is well formed; `Err` says what is wrong with it.
    pub fn check(&self, max_mute_s: u64) -> Result<(), String> {
        match self {
            Action::Kick { user, reason } => {
                check_user(user)?;
                if reason.len() > MAX_REASON_BYTES || reason.chars().any(char::is_control) {
                    return Err(format!(
                        "reason must be at most {MAX_REASON_BYTES} bytes without control characters"
                    ));
                }
                Ok(())
            }
            Action::Mute { user, seconds } => {
                check_user(user)?;
                if !(1..=max_mute_s).contains(seconds) {
                    return Err(format!("seconds must be 1 to {max_mute_s}"));
                }
                Ok(())
            }
            Action::Delete { seq } if *seq == 0 => Err("seq must be at least 1".into()),
            Action::Delete { .. } => Ok(()),
        }
    }
}

fn check_user(user: &str) -> Result<(), String> {
    if crate::protocol::valid_user_name(user) {
        Ok(())
    } else {
        Err("user must be 1 to 64 characters without control characters".into())
    }
}

/// The audit line for an action carried out in `room` by `by` (a user, or an API key's name
/// with `via` = "api"). Debug formatting quotes each value, so no field can forge a line.
pub fn audit(room: &str, by: &str, via: &str, action: &Action) {
    match action {
        Action::Kick { user, reason } => info!(
            target: "audit", room = ?room, by = ?by, via, action = "kick", user = ?user,
            reason = ?reason, "moderation"
        ),
        Action::Mute { user, seconds } => info!(
            target: "audit", room = ?room, by = ?by, via, action = "mute", user = ?user,
            seconds, "moderation"
        ),
        Action::Delete { seq } => info!(
            target: "audit", room = ?room, by = ?by, via, action = "delete", seq,
            "moderation"
        ),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Sanction {
    banned_until_ms: u64,
    muted_until_ms: u64,
}

/// Bans and mutes in force, by room and user, each until a deadline in Unix milliseconds.
#[derive(Debug, Default)]
pub struct Sanctions {
    /// Room -> user -> sanction: looked up by `&str` on every message, without allocating.
    entries: Mutex<HashMap<String, HashMap<String, Sanction>>>,
    /// Entries held, read without the lock so a message when no sanction is in force anywhere
    /// costs an atomic load, not a lock.
    held: AtomicUsize,
}

/// Which sanction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ban,
    Mute,
}

impl Sanction {
    fn until(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            Kind::Ban => &mut self.banned_until_ms,
            Kind::Mute => &mut self.muted_until_ms,
        }
    }

    fn over(&self, now: u64) -> bool {
        self.banned_until_ms <= now && self.muted_until_ms <= now
    }
}

impl Sanctions {
    /// Put `user` under `kind` in `room` until `until_ms` (a later deadline already in force
    /// stays). `false` when the table is full of sanctions still in force.
    pub fn impose(&self, room: &str, user: &str, kind: Kind, until_ms: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.load(Ordering::Relaxed);
        let known = entries.get(room).is_some_and(|r| r.contains_key(user));
        if !known && held >= MAX_SANCTIONS {
            let now = now_ms();
            for users in entries.values_mut() {
                users.retain(|_, s| !s.over(now));
            }
            entries.retain(|_, users| !users.is_empty());
            held = entries.values().map(HashMap::len).sum();
            self.held.store(held, Ordering::Relaxed);
            if held >= MAX_SANCTIONS {
                return false;
            }
        }
        let s = entries
            .entry(room.to_string())
            .or_default()
            .entry(user.to_string())
            .or_default();
        let slot = s.until(kind);
        *slot = (*slot).max(until_ms);
        if !known {
            self.held.store(held + 1, Ordering::Relaxed);
        }
        true
    }

    /// How long `user` stays under `kind` in `room`, in milliseconds, if at all.
    pub fn remaining(&self, room: &str, user: &str, kind: Kind) -> Option<u64> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let users = entries.get_mut(room)?;
        let s = users.get_mut(user)?;
        let now = now_ms();
        let until = *s.until(kind);
        if s.over(now) {
            users.remove(user);
            if users.is_empty() {
                entries.remove(room);
            }
            self.held.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        until.checked_sub(now).filter(|&ms| ms > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanctions_end_and_stay_in_their_room() {
        let s = Sanctions::default();
        let now = now_ms();
        assert!(s.impose("lobby", "bob", Kind::Ban, now + 60_000));
        assert!(s
            .remaining("lobby", "bob", Kind::Ban)
            .is_some_and(|ms| ms > 59_000));
        assert_eq!(s.remaining("lobby", "bob", Kind::Mute), None);
        assert_eq!(s.remaining("ops", "bob", Kind::Ban), None);
        assert!(s.impose("lobby", "eve", Kind::Mute, now - 1));
        assert_eq!(s.remaining("lobby", "eve", Kind::Mute), None);
        // A shorter sanction does not cut a longer one.
        assert!(s.impose("lobby", "bob", Kind::Ban, now + 1_000));
        assert!(s
            .remaining("lobby", "bob", Kind::Ban)
            .is_some_and(|ms| ms > 59_000));
    }

    #[test]
    fn requests_are_checked() {
        let kick = |r: &str| Action::Kick {
            user: "bob".into(),
            reason: r.into(),
        };
        assert!(kick("spam").check(60).is_ok());
        assert!(kick(&"x".repeat(121)).check(60).is_err());
        assert!(kick("a\nforged line").check(60).is_err());
        let mute = |s| Action::Mute {
            user: "bob".into(),
            seconds: s,
        };
        assert!(mute(60).check(60).is_ok());
        assert!(mute(61).check(60).is_err() && mute(0).check(60).is_err());
        assert!(Action::Delete { seq: 0 }.check(60).is_err());
    }
}
