//! Abuse limits that span requests: sockets per user and per client address, and sign-ins per
//! address per minute. Each map is keyed by user or address and shrinks again when they go.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::ratelimit::TokenBucket;

/// Which limit a socket hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketLimitExceeded {
    /// `CONFAB_MAX_SOCKETS_PER_USER`.
    PerUser,
    /// `CONFAB_MAX_SOCKETS_PER_ADDRESS`.
    PerAddress,
}

/// Open sockets per user and per client address on this node.
pub struct SocketLimits {
    per_user: usize,
    per_address: usize,
    counts: Mutex<SocketCounts>,
}

#[derive(Default)]
struct SocketCounts {
    users: HashMap<String, usize>,
    addresses: HashMap<IpAddr, usize>,
}

/// One socket's place under the per-user and per-address limits; given back when dropped.
pub struct SocketPermit {
    limits: Arc<SocketLimits>,
    user: String,
    ip: IpAddr,
}

impl SocketLimits {
    /// Limits of `per_user` sockets per user and `per_address` per client address.
    pub fn new(per_user: usize, per_address: usize) -> Self {
        Self {
            per_user,
            per_address,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> MutexGuard<'_, SocketCounts> {
        // Held for a few map operations only; nothing in them panics.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more socket of `user` from `ip`, unless either is at its limit.
    ///
    /// # Errors
    /// The limit that was hit; nothing was counted.
    pub fn acquire(
        self: &Arc<Self>,
        user: &str,
        ip: IpAddr,
    ) -> Result<SocketPermit, SocketLimitExceeded> {
        let mut counts = self.counts();
        if counts.users.get(user).copied().unwrap_or(0) >= self.per_user {
            return Err(SocketLimitExceeded::PerUser);
        }
        if counts.addresses.get(&ip).copied().unwrap_or(0) >= self.per_address {
            return Err(SocketLimitExceeded::PerAddress);
        }
        *counts.users.entry(user.to_owned()).or_default() += 1;
        *counts.addresses.entry(ip).or_default() += 1;
        Ok(SocketPermit {
            limits: Arc::clone(self),
            user: user.to_owned(),
            ip,
        })
    }

    /// How many users and addresses are being counted (for tests: the maps shrink).
    pub fn tracked(&self) -> (usize, usize) {
        let counts = self.counts();
        (counts.users.len(), counts.addresses.len())
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        if let Some(count) = counts.users.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.users.remove(&self.user);
            }
        }
        if let Some(count) = counts.addresses.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.addresses.remove(&self.ip);
            }
        }
    }
}

/// Sign-ins per client address: a token bucket each, `per_minute` deep, refilled over a minute.
pub struct SigninLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl SigninLimiter {
    /// Allows `per_minute` sign-ins per address per minute (in a burst, then evenly).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::default(),
        }
    }

    /// Takes a sign-in for `ip`, or says how long until the next one is allowed.
    ///
    /// # Errors
    /// The wait, when the address has used up its sign-ins.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget addresses whose bucket has refilled: the map holds only recent sign-ins.
        if buckets.len() > 1024 {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let bucket = buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::with_rate_per_minute(self.per_minute, now));
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(bucket.time_to_next_token())
        }
    }

    /// How many addresses are being tracked.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_limited_per_user_and_per_address_and_the_maps_shrink() {
        let limits = Arc::new(SocketLimits::new(2, 3));
        let (home, office) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let a1 = limits.acquire("ann", home).unwrap();
        let a2 = limits.acquire("ann", home).unwrap();
        assert_eq!(
            limits.acquire("ann", office).err(),
            Some(SocketLimitExceeded::PerUser)
        );
        let b1 = limits.acquire("bob", home).unwrap();
        assert_eq!(
            limits.acquire("cid", home).err(),
            Some(SocketLimitExceeded::PerAddress)
        );
        drop(a1);
        let a3 = limits.acquire("ann", office).unwrap();
        drop((a2, a3, b1));
        assert_eq!(limits.tracked(), (0, 0));
    }

    #[test]
    fn sign_ins_are_limited_per_address_with_the_time_to_wait() {
        let limiter = SigninLimiter::new(3);
        let now = Instant::now();
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(ip, now).is_ok());
        }
        let wait = limiter.check(ip, now).unwrap_err();
        assert_eq!(
            wait.as_secs_f64().round(),
            20.0,
            "one sign-in comes back every 20 s at 3 a minute"
        );
        assert!(
            limiter.check("198.51.100.2".parse().unwrap(), now).is_ok(),
            "other addresses are not affected"
        );
        assert!(limiter.check(ip, now + Duration::from_secs(20)).is_ok());
    }
}
