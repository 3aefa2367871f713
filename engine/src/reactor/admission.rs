//! Caps per source address (issue 22): how many connections one address may hold before
//! they authenticate (`--max-pending-per-ip`), and how many it may open a second
//! (`--connects-per-ip-per-sec`). A connection over either is closed as it is accepted,
//! before it costs a slot or a buffer.
//!
//! Only connections that have not authenticated are counted: an unauthenticated
//! connection is what an attacker can hold without a token, and an authenticated one
//! already has its user's limits. So the count needs no byte in an idle connection: a
//! reactor keeps the address of its pending connections only until they authenticate or
//! close. Loopback addresses are never counted (the quick start, a proxy on the box, the
//! loadgen).
//!
//! The counts are the whole process's, behind one lock taken once per accepted
//! connection from another host and once when it authenticates or closes, never for a
//! message.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

/// Why an accepted connection is closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds `--max-pending-per-ip` connections that have not authenticated.
    Pending,
    /// Its address opened `--connects-per-ip-per-sec` connections this second.
    Rate,
}

/// The caps and the counts, shared by every reactor.
#[derive(Debug)]
pub struct Admission {
    /// Connections one address may hold unauthenticated (0: no cap).
    pending_max: u32,
    /// Connections one address may open a second (0: no cap).
    per_second_max: u32,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Address → its connections not yet authenticated.
    pending: HashMap<IpAddr, u32>,
    /// Address → connections it opened in the second `second`.
    opened: HashMap<IpAddr, u32>,
    /// The second `opened` counts (Unix seconds).
    second: u64,
}

impl Admission {
    /// Caps of `pending_max` unauthenticated connections and `per_second_max` new ones a
    /// second per address (0: none).
    pub fn new(pending_max: u32, per_second_max: u32) -> Admission {
        Admission {
            pending_max,
            per_second_max,
            counts: Mutex::default(),
        }
    }

    /// Whether connections from `ip` are counted at all.
    pub fn counts(&self, ip: IpAddr) -> bool {
        (self.pending_max != 0 || self.per_second_max != 0) && !ip.is_loopback()
    }

    /// A connection from `ip` was accepted at `now_s` (Unix seconds): counted as pending,
    /// or refused. Call only where [`Admission::counts`] says so.
    pub fn admit(&self, ip: IpAddr, now_s: u64) -> Result<(), Refusal> {
        let mut counts = self.lock();
        if counts.second != now_s {
            counts.second = now_s;
            counts.opened.clear();
        }
        let opened = counts.opened.get(&ip).copied().unwrap_or(0);
        if self.per_second_max != 0 && opened >= self.per_second_max {
            return Err(Refusal::Rate);
        }
        let pending = counts.pending.get(&ip).copied().unwrap_or(0);
        if self.pending_max != 0 && pending >= self.pending_max {
            return Err(Refusal::Pending);
        }
        counts.opened.insert(ip, opened + 1);
        counts.pending.insert(ip, pending + 1);
        Ok(())
    }

    /// A connection [`Admission::admit`] took authenticated or closed.
    pub fn release(&self, ip: IpAddr) {
        let mut counts = self.lock();
        if let Some(pending) = counts.pending.get_mut(&ip) {
            *pending -= 1;
            if *pending == 0 {
                counts.pending.remove(&ip);
            }
        }
    }

    /// The counts; each change is one step, so a lock poisoned by a panic elsewhere holds
    /// consistent counts and is used as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_address_holds_its_pending_cap_until_one_authenticates_or_closes() {
        let admission = Admission::new(2, 0);
        let (a, b) = (ip("203.0.113.7"), ip("2001:db8::1"));
        assert_eq!(admission.admit(a, 10), Ok(()));
        assert_eq!(admission.admit(a, 10), Ok(()));
        assert_eq!(admission.admit(a, 11), Err(Refusal::Pending));
        assert_eq!(admission.admit(b, 11), Ok(()), "each address its own");
        admission.release(a);
        assert_eq!(admission.admit(a, 11), Ok(()));
        admission.release(ip("198.51.100.1"));
    }

    #[test]
    fn each_address_opens_its_rate_a_second() {
        let admission = Admission::new(0, 3);
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(admission.admit(a, 10), Ok(()));
        }
        assert_eq!(admission.admit(a, 10), Err(Refusal::Rate));
        assert_eq!(admission.admit(a, 11), Ok(()), "a new second");
    }

    #[test]
    fn loopback_and_no_caps_count_nothing() {
        let capped = Admission::new(1, 1);
        assert!(!capped.counts(ip("127.0.0.1")));
        assert!(!capped.counts(ip("::1")));
        assert!(capped.counts(ip("192.0.2.1")));
        assert!(!Admission::new(0, 0).counts(ip("192.0.2.1")));
    }
}
