//! What the deterministic simulations share (`cluster::simulation`,
//! `replication::simulation`; test builds only): the seeded random source
//! that picks every fault, and how seeds and step counts come from the
//! environment for longer runs on demand.

/// splitmix64: small, seedable, good enough to pick faults.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `[0, n)` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `[low, high)` (`high` > `low`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low)
    }

    /// True `per_mille` times in a thousand.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A number from the environment (`KAFKI_SIM_SEEDS=200`), if set and valid.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

/// The seeds and steps a simulation runs: `<PREFIX>_SEED` (just that one)
/// or `<PREFIX>_SEEDS` (seeds 1 to N), and `<PREFIX>_STEPS`, else the
/// defaults CI runs.
pub fn seed_plan(prefix: &str, default_seeds: u64, default_steps: u64) -> (Vec<u64>, u64) {
    let steps = env_u64(&format!("{prefix}_STEPS")).unwrap_or(default_steps);
    let seeds = match env_u64(&format!("{prefix}_SEED")) {
        Some(seed) => vec![seed],
        None => (1..=env_u64(&format!("{prefix}_SEEDS")).unwrap_or(default_seeds)).collect(),
    };
    (seeds, steps)
}

/// Runs `run(seed, steps)` for every seed, printing each seed's statistics
/// (while there are at most `print_each_up_to` seeds), each failure's
/// report and the totals; fails naming the failing seeds, then checks that
/// the first seed run again over `replay_steps` gives the same run.
/// Returns the totals, summed with `add`.
pub fn run_seeds<S: std::fmt::Debug + Default>(
    seeds: &[u64],
    steps: u64,
    replay_steps: u64,
    print_each_up_to: usize,
    run: impl Fn(u64, u64) -> Result<S, String>,
    add: impl Fn(&mut S, &S),
) -> S {
    let started = std::time::Instant::now();
    let mut total = S::default();
    let mut failures = Vec::new();
    for &seed in seeds {
        match run(seed, steps) {
            Ok(stats) => {
                if seeds.len() <= print_each_up_to {
                    eprintln!("seed {seed}: {stats:?}");
                }
                add(&mut total, &stats);
            }
            Err(report) => {
                eprintln!("{report}");
                failures.push(seed);
            }
        }
    }
    eprintln!(
        "{} seeds x {steps} steps in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    // A seed is its run: the same seed again gives the same run.
    if let Some(&first) = seeds.first() {
        let again = || format!("{:?}", run(first, steps.min(replay_steps)));
        assert_eq!(again(), again(), "seed {first} is not deterministic");
    }
    total
}
