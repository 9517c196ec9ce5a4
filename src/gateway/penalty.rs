//! Per-source-address protection, like OpenSSH's PerSourcePenalties: an
//! address that keeps failing authentication is refused for a while, and
//! for longer each time it comes back and fails again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Limits;

#[derive(Debug, Clone, Copy)]
struct State {
    failures: u32,
    /// How many penalties this address has had; doubles the next one.
    strikes: u32,
    until: Option<Instant>,
}

pub struct Penalties {
    map: Mutex<HashMap<IpAddr, State>>,
    after: u32,
    base: Duration,
    max: Duration,
    /// Connections from one address that ended without authenticating: a
    /// token bucket, `noauth_burst` deep, refilled `noauth_rate` a second.
    /// An empty bucket refuses new connections from the address at accept,
    /// before the key exchange it would cost (the DHEat class of attack).
    noauth: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    noauth_burst: f64,
    noauth_rate: f64,
}

impl Penalties {
    pub fn new(limits: &Limits) -> Self {
        Penalties {
            map: Mutex::new(HashMap::new()),
            after: limits.penalty_after_failures.max(1),
            base: limits.penalty_base,
            max: limits.penalty_max,
            noauth: Mutex::new(HashMap::new()),
            noauth_burst: limits.per_source_noauth_burst as f64,
            noauth_rate: limits.per_source_noauth_rate,
        }
    }

    /// Time left on the address's penalty, if it is refused now.
    pub fn refused(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let until = map.get(&ip)?.until?;
        until.checked_duration_since(Instant::now())
    }

    /// Tokens left in the address's bucket of unauthenticated connections.
    fn noauth_tokens(&self, map: &mut HashMap<IpAddr, (f64, Instant)>, ip: IpAddr) -> f64 {
        let now = Instant::now();
        let (tokens, at) = map.entry(ip).or_insert((self.noauth_burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.noauth_rate)
            .min(self.noauth_burst);
        *at = now;
        *tokens
    }

    /// True when the address used up its unauthenticated connections and
    /// a new one is refused at accept.
    pub fn noauth_exhausted(&self, ip: IpAddr) -> bool {
        let mut map = self.noauth.lock().unwrap_or_else(|p| p.into_inner());
        self.noauth_tokens(&mut map, ip) < 1.0
    }

    /// Records a connection that ended without authenticating (a failed
    /// login, a probe, a health check).
    pub fn noauth_closed(&self, ip: IpAddr) {
        let mut map = self.noauth.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory under a spray of addresses: full buckets carry
            // nothing worth keeping.
            let (burst, rate) = (self.noauth_burst, self.noauth_rate);
            map.retain(|_, (t, at)| *t + at.elapsed().as_secs_f64() * rate < burst);
        }
        let left = self.noauth_tokens(&mut map, ip);
        if let Some((tokens, _)) = map.get_mut(&ip) {
            *tokens = (left - 1.0).max(0.0);
        }
    }

    /// Records a connection that ended without authenticating. Returns the
    /// penalty imposed, if this failure crossed the threshold.
    pub fn failure(&self, ip: IpAddr, shared: &super::Shared) -> Option<Duration> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory under a spray of addresses: forget expired entries.
            let now = Instant::now();
            map.retain(|_, s| s.until.is_some_and(|u| u > now));
        }
        let s = map.entry(ip).or_insert(State {
            failures: 0,
            strikes: 0,
            until: None,
        });
        s.failures += 1;
        if s.failures < self.after {
            return None;
        }
        let factor = 1u32 << s.strikes.min(16);
        let penalty = self.base.saturating_mul(factor).min(self.max);
        s.strikes += 1;
        s.failures = 0;
        s.until = Some(Instant::now() + penalty);
        shared.metrics.penalty();
        tracing::warn!(source = %ip, penalty = ?penalty, "too many authentication failures: refusing this address for a while");
        Some(penalty)
    }

    /// A successful login clears the address's failure count (not its strikes).
    pub fn success(&self, ip: IpAddr) {
        if let Some(s) = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&ip)
        {
            s.failures = 0;
        }
    }
}
