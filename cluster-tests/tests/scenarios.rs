//! Partition, isolation and loss scenarios against in-process nodes (real QUIC, redb, HTTP),
//! faults through each node's link filter. Each prints its seed and ops if it fails.
//!
//! Six scenarios at a 100 ms gossip interval: a 2|3 split with writes (one key on both sides) that
//! heals to one state; one node isolated through 41 changes; 20% loss on every link; a stopped node
//! that restarts and catches up; skewed clocks (2 s behind keeps causal order, 10 min ahead is
//! refused everywhere); and a node away longer than `retain_generations = 5` catching up from a
//! snapshot.

use std::time::Duration;

use anyhow::Result;
use grapevine_cluster_tests::scenario::{Op, Scenario};

const INTERVAL_MS: u64 = 100;

fn converged(seconds: u64) -> Op {
    Op::AssertConverged { within: Duration::from_secs(seconds) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_3_split_with_writes_on_both_sides_heals_to_one_state() -> Result<()> {
    let report = Scenario {
        name: "split-2-3",
        nodes: 5,
        seed: 0x5EED_0001,
        gossip_interval_ms: INTERVAL_MS,
        clock_skews_ms: vec![],
        retain_generations: None,
        ops: vec![
            Op::Change { node: 0, key: "before".into(), value: 1 },
            converged(10),
            Op::Partition(vec![vec![0, 1], vec![2, 3, 4]]),
            // The same key on both sides: the later (hlc, origin) must win everywhere.
            Op::Change { node: 0, key: "shared".into(), value: 100 },
            Op::Change { node: 3, key: "shared".into(), value: 200 },
            Op::Change { node: 1, key: "left".into(), value: 1 },
            Op::Change { node: 4, key: "right".into(), value: 2 },
            Op::RandomChanges { count: 10, keys: 4 },
            Op::AssertAbsent { nodes: vec![2, 3, 4], key: "left".into(), after: Duration::from_secs(1) },
            Op::AssertAbsent { nodes: vec![0, 1], key: "right".into(), after: Duration::ZERO },
            Op::Heal,
            converged(10),
        ],
    }
    .run()
    .await?;
    assert_eq!(report.acknowledged, 15);
    println!("split 2|3 healed in {:?}", report.convergence[1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_isolated_through_many_changes_catches_up_after_heal() -> Result<()> {
    let report = Scenario {
        name: "isolated-node",
        nodes: 4,
        seed: 0x5EED_0002,
        gossip_interval_ms: INTERVAL_MS,
        clock_skews_ms: vec![],
        retain_generations: None,
        ops: vec![
            Op::Partition(vec![vec![3], vec![0, 1, 2]]),
            Op::RandomChanges { count: 40, keys: 8 },
            Op::Change { node: 3, key: "lonely".into(), value: 7 },
            Op::AssertAbsent { nodes: vec![0, 1, 2], key: "lonely".into(), after: Duration::from_secs(1) },
            Op::Heal,
            converged(10),
        ],
    }
    .run()
    .await?;
    assert_eq!(report.acknowledged, 41);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_loss_on_every_link_still_converges() -> Result<()> {
    Scenario {
        name: "loss-20",
        nodes: 5,
        seed: 0x5EED_0003,
        gossip_interval_ms: INTERVAL_MS,
        clock_skews_ms: vec![],
        retain_generations: None,
        ops: vec![
            Op::Loss(0.2),
            Op::RandomChanges { count: 30, keys: 6 },
            converged(20),
            Op::AssertFaultsDropped,
            Op::Heal,
        ],
    }
    .run()
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_restarts_with_its_log_and_catches_up() -> Result<()> {
    Scenario {
        name: "stop-restart",
        nodes: 3,
        seed: 0x5EED_0004,
        gossip_interval_ms: INTERVAL_MS,
        clock_skews_ms: vec![],
        retain_generations: None,
        ops: vec![
            Op::RandomChanges { count: 5, keys: 3 },
            converged(10),
            Op::Stop(2),
            Op::RandomChanges { count: 5, keys: 3 },
            Op::Restart(2),
            converged(10),
        ],
    }
    .run()
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_keep_causal_order_and_a_clock_far_ahead_cannot_win() -> Result<()> {
    Scenario {
        name: "skewed-clocks",
        nodes: 3,
        seed: 0x5EED_0005,
        gossip_interval_ms: INTERVAL_MS,
        // n2 runs 2 s behind (within no bound: stamps from the past are fine); n3 runs 10 min
        // ahead, far past the 100 ms maximum offset.
        clock_skews_ms: vec![0, -2_000, 600_000],
        retain_generations: None,
        ops: vec![
            Op::Change { node: 0, key: "k".into(), value: 1 },
            converged(10),
            // n2 has seen n1's stamp: its later write wins although its wall clock is behind.
            Op::Change { node: 1, key: "k".into(), value: 2 },
            converged(10),
            Op::AssertValue { key: "k".into(), value: 2 },
            // n3 measures its clock against its peers' and fences itself: it takes no change
            // (its stamps would win over newer writes); what it stamped before that is refused
            // by every node whose clock is correct, and stays refused.
            Op::ChangeRefused {
                node: 2,
                key: "future".into(),
                because: "clock runs 600",
                within: Duration::from_secs(10),
            },
            Op::AssertAbsent { nodes: vec![0, 1], key: "future".into(), after: Duration::from_secs(1) },
            // The others go on taking changes (a refused one fails the scenario).
            Op::Change { node: 0, key: "k".into(), value: 4 },
        ],
    }
    .run()
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_away_longer_than_the_retention_catches_up_from_a_snapshot() -> Result<()> {
    Scenario {
        name: "compaction",
        nodes: 3,
        seed: 0x5EED_0006,
        gossip_interval_ms: INTERVAL_MS,
        clock_skews_ms: vec![],
        retain_generations: Some(5),
        ops: vec![
            Op::RandomChanges { count: 8, keys: 4 },
            converged(10),
            Op::Stop(2),
            Op::RandomChanges { count: 30, keys: 6 },
            // n3 is gone (dead in the others' view): the live nodes compact without it.
            Op::AssertCompacted { node: 0, at_least: 20 },
            Op::Restart(2),
            converged(15),
            Op::AssertCompacted { node: 2, at_least: 20 },
        ],
    }
    .run()
    .await?;
    Ok(())
}
