//! Unauthenticated connections, limited as OpenSSH's `MaxStartups` and
//! `PerSourceMaxStartups` do (sshd_config(5)): past `start` of them, a new
//! connection is dropped with probability `rate`% rising linearly to 100%
//! at `full` (random early drop), and one source address may hold at most
//! `per_source`. A slot is held from accept until the connection
//! authenticates or ends, so idle or slow handshakes cannot lock others out
//! beyond these numbers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::MaxStartups;

pub struct Startups {
    limits: MaxStartups,
    per_source: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Random early drop between `start` and `full`, or `full` reached.
    MaxStartups,
    /// The source already holds `per_source` unauthenticated connections.
    PerSource,
}

/// One unauthenticated connection's place; released on drop.
pub struct Slot {
    startups: Arc<Startups>,
    ip: IpAddr,
}

impl Startups {
    /// `per_source` 0 means no per-source limit.
    pub fn new(limits: MaxStartups, per_source: usize) -> Arc<Startups> {
        Arc::new(Startups {
            limits,
            per_source,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, or says why not. `roll` is a
    /// number in 0..100, uniformly random in production (a parameter so
    /// the rule can be tested).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, roll: u32) -> Result<Slot, Dropped> {
        let mut st = self.lock();
        let from_source = st.by_source.get(&ip).copied().unwrap_or(0);
        if self.per_source > 0 && from_source >= self.per_source {
            return Err(Dropped::PerSource);
        }
        let MaxStartups { start, rate, full } = self.limits;
        if st.total >= full {
            return Err(Dropped::MaxStartups);
        }
        if st.total >= start {
            // rate% at `start`, rising linearly to 100% at `full`.
            let span = (full - start).max(1) as u64;
            let p = u64::from(rate) + (100 - u64::from(rate)) * (st.total - start) as u64 / span;
            if u64::from(roll) < p {
                return Err(Dropped::MaxStartups);
            }
        }
        st.total += 1;
        *st.by_source.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            startups: self.clone(),
            ip,
        })
    }

    /// Unauthenticated connections held now.
    pub fn held(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.startups.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.by_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_cap_then_released() {
        let s = Startups::new(
            MaxStartups {
                start: 100,
                rate: 30,
                full: 100,
            },
            2,
        );
        let a = s.admit(ip("10.0.0.1"), 0).unwrap();
        let _b = s.admit(ip("10.0.0.1"), 0).unwrap();
        assert_eq!(s.admit(ip("10.0.0.1"), 99).err(), Some(Dropped::PerSource));
        assert!(
            s.admit(ip("10.0.0.2"), 0).is_ok(),
            "other sources unaffected"
        );
        drop(a);
        assert!(
            s.admit(ip("10.0.0.1"), 0).is_ok(),
            "a released slot is free"
        );
    }

    #[test]
    fn random_early_drop_between_start_and_full() {
        let s = Startups::new(
            MaxStartups {
                start: 2,
                rate: 50,
                full: 4,
            },
            0,
        );
        let mut held = vec![s.admit(ip("10.0.0.1"), 0).unwrap()];
        held.push(s.admit(ip("10.0.0.2"), 0).unwrap());
        // At start (2 held): 50% drop. A roll of 49 drops, 50 passes.
        assert_eq!(
            s.admit(ip("10.0.0.3"), 49).err(),
            Some(Dropped::MaxStartups)
        );
        held.push(s.admit(ip("10.0.0.3"), 50).unwrap());
        // 3 held: 75%.
        assert!(s.admit(ip("10.0.0.4"), 74).is_err());
        held.push(s.admit(ip("10.0.0.4"), 75).unwrap());
        // Full: always dropped.
        assert!(s.admit(ip("10.0.0.5"), 99).is_err());
        assert_eq!(s.held(), 4);
        held.clear();
        assert_eq!(s.held(), 0);
    }
}
