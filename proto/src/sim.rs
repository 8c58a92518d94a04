//! Pure simulations of the protocol, in rounds, for thousands of nodes without a socket.
//!
//! [`simulate_spread`] models how one generation spreads: every node that first stores it
//! pushes it to `fanout` peers drawn at random (push on first receipt, as `node`'s pusher
//! does), and, when anti-entropy is on, every node that lacks it pulls from one random peer
//! per round (the periodic log sync). A round is one network hop for a push, one gossip
//! interval for a pull. The randomness is a seeded [`SplitMix64`], so a seed repeats.
//!
//! `SplitMix64` is the project's one seedable generator, also used by the node's link filter and
//! the scenario runner. `epidemic_bound(n, f)` is `ln n / ln f + ln ln n` rounds. The test drives
//! 1,000 nodes with fanout 3 over 20 seeds: median 7 rounds, worst 8, bound 8.2
//! (`docs/benchmarks.md`).

pub mod fleet;

/// A small, fast, seedable generator (SplitMix64, Steele et al.): the same seed gives the same
/// sequence on every platform and version, which seeded test runs rely on.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform draw from `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        assert!(bound > 0, "below(0) has no value");
        (self.next_u64() % bound as u64) as usize
    }
}

/// What to simulate.
#[derive(Clone, Copy, Debug)]
pub struct SpreadConfig {
    pub nodes: usize,
    pub fanout: usize,
    pub anti_entropy: bool,
    pub seed: u64,
    /// Give up after this many rounds.
    pub max_rounds: usize,
}

/// What a simulation measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpreadResult {
    /// Rounds until every node held the generation, or `None` if some never did.
    pub rounds_to_full: Option<usize>,
    /// Nodes holding it at the end.
    pub covered: usize,
    /// Nodes that got it from a push (the rest from the origin or a pull).
    pub by_push: usize,
    /// Push messages sent in all.
    pub pushes: u64,
}

/// The epidemic bound for push-pull with fanout `f`: about log_f(n) + ln(ln(n)) rounds.
pub fn epidemic_bound(nodes: usize, fanout: usize) -> f64 {
    let n = nodes as f64;
    n.ln() / (fanout as f64).ln() + n.ln().ln()
}

/// Spreads one generation from node 0 and counts rounds to full coverage.
pub fn simulate_spread(config: SpreadConfig) -> SpreadResult {
    let SpreadConfig { nodes, fanout, anti_entropy, seed, max_rounds } = config;
    assert!(nodes >= 2 && fanout >= 1, "a spread needs two nodes and a fanout");
    let mut random = SplitMix64::new(seed);
    let mut has = vec![false; nodes];
    has[0] = true;
    let mut newly = vec![0usize];
    let (mut covered, mut by_push, mut pushes) = (1usize, 0usize, 0u64);
    for round in 1..=max_rounds {
        let had = has.clone();
        let mut next = Vec::new();
        for &sender in &newly {
            for _ in 0..fanout {
                let peer = random_peer(&mut random, nodes, sender);
                pushes += 1;
                if !has[peer] {
                    has[peer] = true;
                    by_push += 1;
                    next.push(peer);
                }
            }
        }
        if anti_entropy {
            for node in 0..nodes {
                if !had[node] && !has[node] && had[random_peer(&mut random, nodes, node)] {
                    has[node] = true;
                    next.push(node);
                }
            }
        }
        covered += next.len();
        if covered == nodes {
            return SpreadResult { rounds_to_full: Some(round), covered, by_push, pushes };
        }
        newly = next;
        if newly.is_empty() && !anti_entropy {
            break;
        }
    }
    SpreadResult { rounds_to_full: None, covered, by_push, pushes }
}

fn random_peer(random: &mut SplitMix64, nodes: usize, not: usize) -> usize {
    let peer = random.below(nodes - 1);
    if peer >= not { peer + 1 } else { peer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_nodes_are_covered_within_the_epidemic_bound() {
        let bound = epidemic_bound(1_000, 3);
        let mut rounds = Vec::new();
        for seed in 0..20 {
            let config = SpreadConfig { nodes: 1_000, fanout: 3, anti_entropy: true, seed, max_rounds: 100 };
            let result = simulate_spread(config);
            rounds.push(result.rounds_to_full.expect("anti-entropy always completes"));
        }
        rounds.sort();
        let median = rounds[rounds.len() / 2];
        println!(
            "1000 nodes, fanout 3, push + anti-entropy: median {median} rounds, worst {}, bound {bound:.1}",
            rounds[19]
        );
        assert!((median as f64) <= bound.ceil(), "median {median} rounds over the bound {bound:.1}");
        assert!((rounds[19] as f64) <= bound.ceil() + 2.0, "worst {} rounds", rounds[19]);
    }

    #[test]
    fn push_alone_leaves_a_few_nodes_to_anti_entropy() {
        let config = SpreadConfig { nodes: 1_000, fanout: 3, anti_entropy: false, seed: 1, max_rounds: 100 };
        let result = simulate_spread(config);
        // Infect-and-die with fanout 3 misses about e^-3 of the nodes.
        assert!(result.rounds_to_full.is_none());
        assert!((900..1_000).contains(&result.covered), "{result:?}");
        assert_eq!(result.pushes, 3 * result.covered as u64);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let config = SpreadConfig { nodes: 500, fanout: 3, anti_entropy: true, seed: 42, max_rounds: 100 };
        assert_eq!(simulate_spread(config), simulate_spread(config));
        let mut a = SplitMix64::new(9);
        let draws: Vec<usize> = (0..1000).map(|_| a.below(10)).collect();
        assert!(draws.iter().all(|d| *d < 10));
        assert!((0..10).all(|d| draws.contains(&d)));
    }
}
