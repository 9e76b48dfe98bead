//! Connection limits — for the node, per user (the token's `sub`) and per client address —
//! and raising the open-file limit they depend on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// File descriptors kept free for listeners, Redis, logs and HTTP requests.
pub const RESERVED_FDS: u64 = 64;

/// The limits in force; 0 means none for the per-user and per-address ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections the node holds at most.
    pub node: usize,
    /// Connections one user holds at most (0: no limit).
    pub per_user: usize,
    /// Connections one client address holds at most (0: no limit).
    pub per_address: usize,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The node holds its limit.
    #[error("the node holds its limit of {0} connections; retry later or elsewhere")]
    Node(usize),
    /// This user holds their limit.
    #[error("this user holds the limit of {0} connections per user; close one first")]
    User(usize),
    /// This client address holds its limit.
    #[error("this address holds the limit of {0} connections per client address")]
    Address(usize),
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    users: HashMap<String, usize>,
    addresses: HashMap<IpAddr, usize>,
}

/// Counts open WebSocket connections against the limits.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    counts: Arc<Mutex<Counts>>,
    limits: Limits,
}

/// One connection's place under the limits; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<Mutex<Counts>>,
    user: Option<String>,
    address: Option<IpAddr>,
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    // Every update leaves the counts consistent, so a poisoned lock is still usable.
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decrements a keyed count, forgetting the key at zero (no entry outlives its connections).
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.open -= 1;
        if let Some(user) = &self.user {
            release(&mut counts.users, user);
        }
        if let Some(address) = &self.address {
            release(&mut counts.addresses, address);
        }
    }
}

impl ConnectionSlots {
    /// Slots under `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            counts: Arc::default(),
            limits,
        }
    }

    /// The limits in force.
    #[must_use]
    pub const fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for a connection of `user` (counted only when per-user limits apply) from
    /// `address` (counted only when per-address limits apply).
    ///
    /// # Errors
    /// [`Refused`] names the limit that is reached.
    pub fn try_acquire(
        &self,
        user: Option<&str>,
        address: Option<IpAddr>,
    ) -> Result<ConnectionSlot, Refused> {
        let Limits {
            node,
            per_user,
            per_address,
        } = self.limits;
        let user = user.filter(|_| per_user > 0);
        let address = address.filter(|_| per_address > 0);
        let mut counts = lock(&self.counts);
        if counts.open >= node {
            return Err(Refused::Node(node));
        }
        if user.is_some_and(|user| counts.users.get(user).copied().unwrap_or(0) >= per_user) {
            return Err(Refused::User(per_user));
        }
        if address.is_some_and(|ip| counts.addresses.get(&ip).copied().unwrap_or(0) >= per_address)
        {
            return Err(Refused::Address(per_address));
        }
        counts.open += 1;
        if let Some(user) = user {
            *counts.users.entry(user.to_owned()).or_default() += 1;
        }
        if let Some(address) = address {
            *counts.addresses.entry(address).or_default() += 1;
        }
        Ok(ConnectionSlot {
            counts: self.counts.clone(),
            user: user.map(str::to_owned),
            address,
        })
    }
}

/// The client's address: the connection's peer, or — only when a trusted proxy header is
/// configured — the last address in that header (the one the proxy in front of the node
/// appended; earlier entries are whatever the client claimed).
#[must_use]
pub fn client_address(peer: Option<IpAddr>, header: Option<&str>) -> Option<IpAddr> {
    match header {
        Some(value) => value
            .rsplit(',')
            .next()
            .and_then(|last| last.trim().parse().ok())
            .or(peer),
        None => peer,
    }
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit (or the
/// old one, or `None` where the platform has no such limit).
#[must_use]
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// The connection limit to use when none is configured: what the open-file limit allows,
/// less a reserve.
#[must_use]
pub fn automatic_limit(open_files: Option<u64>) -> usize {
    let open_files = open_files.unwrap_or(1024);
    usize::try_from(open_files.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(node: usize, per_user: usize, per_address: usize) -> Limits {
        Limits {
            node,
            per_user,
            per_address,
        }
    }

    #[test]
    fn the_node_limit_holds_and_slots_are_given_back() {
        let slots = ConnectionSlots::new(limits(2, 0, 0));
        let a = slots.try_acquire(None, None).unwrap();
        let _b = slots.try_acquire(None, None).unwrap();
        assert_eq!(slots.try_acquire(None, None).unwrap_err(), Refused::Node(2));
        drop(a);
        assert!(slots.try_acquire(None, None).is_ok());
    }

    #[test]
    fn users_and_addresses_have_their_own_limits_and_leave_no_entries() {
        let slots = ConnectionSlots::new(limits(10, 2, 3));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.try_acquire(Some("a"), Some(ip)).unwrap();
        let a2 = slots.try_acquire(Some("a"), Some(ip)).unwrap();
        assert_eq!(
            slots.try_acquire(Some("a"), Some(other)).unwrap_err(),
            Refused::User(2)
        );
        let b = slots.try_acquire(Some("b"), Some(ip)).unwrap();
        assert_eq!(
            slots.try_acquire(Some("c"), Some(ip)).unwrap_err(),
            Refused::Address(3)
        );
        assert!(slots.try_acquire(None, Some(other)).is_ok());
        drop((a1, a2, b));
        let counts = lock(&slots.counts);
        assert_eq!(counts.open, 0);
        assert!(counts.users.is_empty() && counts.addresses.is_empty());
    }

    #[test]
    fn the_address_comes_from_the_trusted_header_only_when_configured() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_address(Some(peer), None), Some(peer));
        let header = "203.0.113.5, 198.51.100.7";
        assert_eq!(
            client_address(Some(peer), Some(header)),
            Some("198.51.100.7".parse().unwrap()),
            "the address the proxy appended, not what the client claimed"
        );
        assert_eq!(client_address(Some(peer), Some("garbage")), Some(peer));
    }

    #[test]
    fn automatic_limit_keeps_a_reserve() {
        assert_eq!(automatic_limit(Some(20_000)), 19_936);
        assert_eq!(automatic_limit(Some(10)), 1);
    }
}
