//! The deterministic simulator: the engine's shards run against a simulated driver,
//! network, store (with crashes) and clients, one seed at a time, with the invariants of
//! `simulator/oracle.rs` checked as it goes (see `simulator/world.rs` for what is real
//! and what is simulated).
//!
//! `cargo test -p engine --test simulator` runs `SIM_SEEDS` seeds (default 2,000) from
//! `SIM_SEED_BASE` (default 0). A failing seed is printed with the last steps before the
//! failure; `SIM_SEED=N cargo test -p engine --test simulator` replays it exactly.

mod simulator {
    pub mod oracle;
    pub mod rng;
    pub mod store;
    pub mod world;
}

use std::time::{Duration, Instant};

use simulator::world::{Shape, World};

/// Seeds the default run covers.
const SEEDS_DEFAULT: u64 = 2_000;
/// The default run's bound (the issue's: thousands of seeds in under a minute).
const RUN_BOUND: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

/// The shape of seed `seed`'s world: small worlds mostly, so interleavings collide.
fn shape_of(seed: u64) -> Shape {
    Shape {
        reactors: 1 + (seed % 3) as usize,
        users: 3 + (seed % 4) as usize,
        groups: 2,
        steps: 300,
        devices_per_user: 2,
    }
}

/// What one seed exercised: messages acked sent, queued, refused; huddle signals relayed.
type Tally = (usize, usize, usize, usize);

fn run_seed(seed: u64) -> Result<Tally, String> {
    let mut world = World::new(seed, shape_of(seed));
    world.run()?;
    let (sent, queued, refused) = world.oracle.ack_counts();
    Ok((sent, queued, refused, world.oracle.huddle_signals))
}

#[test]
fn every_seed_keeps_the_invariants() {
    if let Some(seed) = env_u64("SIM_SEED") {
        match run_seed(seed) {
            Ok(counts) => {
                eprintln!("simulator: seed {seed} passed; acks (sent, queued, refused) {counts:?}")
            }
            Err(failure) => panic!("simulator: seed {seed} failed: {failure}"),
        }
        return;
    }
    let base = env_u64("SIM_SEED_BASE").unwrap_or(0);
    let seeds = env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let started = Instant::now();
    let mut totals = (0, 0, 0, 0);
    for seed in base..base + seeds {
        match run_seed(seed) {
            Ok((sent, queued, refused, huddles)) => {
                totals = (
                    totals.0 + sent,
                    totals.1 + queued,
                    totals.2 + refused,
                    totals.3 + huddles,
                );
            }
            Err(failure) => panic!(
                "simulator: seed {seed} failed: {failure}\n\
                 replay: SIM_SEED={seed} cargo test -p engine --test simulator"
            ),
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "simulator: {seeds} seeds from {base} in {:.1} s; messages acked sent {}, queued {}, \
         refused {}; huddle signals relayed {}",
        elapsed.as_secs_f64(),
        totals.0,
        totals.1,
        totals.2,
        totals.3
    );
    // The checks are only worth their names if the runs exercise every outcome.
    assert!(
        totals.0 > 0 && totals.1 > 0 && totals.2 > 0 && totals.3 > 0,
        "{totals:?}"
    );
    if seeds == SEEDS_DEFAULT {
        assert!(elapsed < RUN_BOUND, "{seeds} seeds took {elapsed:?}");
    }
}
