//! The cluster's simulators, and the simulated cluster they share.
//!
//! - [`SimCluster`] (`cluster`): a simulated nats-server with JetStream (`nats`,
//!   `jetstream`) and the real relayers of the nodes on it, stepped by a simulator. The
//!   chat core's simulator (`tests/simulator.rs`) runs its cluster seeds on it, with
//!   feature `simulation`.
//! - `stores` (tests): the inboxes and history of several nodes against the simulated
//!   JetStream, with faults.
//! - `live` (tests): the live relays of several nodes through the simulated server:
//!   presence, calls, huddles, broadcasts, stats and operators' calls, with nodes cut
//!   off, killed and leaving.

mod cluster;
mod jetstream;
#[cfg(test)]
mod live;
mod nats;
#[cfg(test)]
mod stores;

pub use cluster::{streams, NodeSetup, SimCluster};

/// A small deterministic generator (splitmix64).
#[cfg(test)]
struct Rng(u64);

#[cfg(test)]
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What seed `seed` reports when invariant `why` broke: the last 40 steps of its `log`,
/// or every step with `CLUSTER_SIM_LOG` set.
#[cfg(test)]
fn failure(seed: u64, why: &str, log: &[String]) -> String {
    let shown = match std::env::var_os("CLUSTER_SIM_LOG") {
        Some(_) => usize::MAX,
        None => 40,
    };
    let steps = &log[log.len().saturating_sub(shown)..];
    format!("seed {seed}: {why}\nlast steps:\n{steps:#?}")
}

/// Runs the seeds the environment names, `<prefix>_SEED` alone (its tally printed, and
/// `None` returned), or else `<prefix>_SEEDS` of them (`default`) from
/// `<prefix>_SEED_BASE`: their tallies added up. The first failure panics.
#[cfg(test)]
fn run_seeds<T: Default + std::fmt::Debug>(
    prefix: &str,
    default: u64,
    run: impl Fn(u64) -> Result<T, String>,
    add: impl Fn(&mut T, T),
) -> Option<T> {
    let panic_on_failure = |seed| run(seed).unwrap_or_else(|why| panic!("{why}"));
    if let Some(seed) = env_u64(&format!("{prefix}_SEED")) {
        eprintln!("seed {seed}: {:?}", panic_on_failure(seed));
        return None;
    }
    let base = env_u64(&format!("{prefix}_SEED_BASE")).unwrap_or(0);
    let seeds = env_u64(&format!("{prefix}_SEEDS")).unwrap_or(default);
    let mut total = T::default();
    for seed in base..base + seeds {
        add(&mut total, panic_on_failure(seed));
    }
    eprintln!("{seeds} seeds: {total:?}");
    Some(total)
}

#[cfg(test)]
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
