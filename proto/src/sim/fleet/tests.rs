//! The simulator's own tests: determinism, a clean run, a broken rule caught, and a change down
//! its push tree.

use super::*;

fn small(seed: u64) -> Options {
    Options { limit_ms: 60_000, ..Options::new(20, seed) }
}

#[test]
fn the_same_seed_gives_the_same_history_byte_for_byte() {
    let (one, two) = (run(small(7)), run(small(7)));
    assert_eq!(one.trace, two.trace);
    assert_eq!(one.trace_digest(), two.trace_digest());
    assert!(one.trace.len() > 20, "a run decides things: {}", one.trace.len());
    assert_ne!(run(small(8)).trace_digest(), one.trace_digest(), "another seed, another history");
}

#[test]
fn a_run_with_faults_keeps_every_invariant_and_reverts_the_bad_change() {
    for seed in 0..3 {
        let outcome = run(small(seed));
        println!("{}", outcome.summary());
        assert!(outcome.violations.is_empty(), "{}", outcome.summary());
        let figures = &outcome.figures;
        assert!(figures.revert_done_ms.is_some(), "{}", outcome.summary());
        assert!(figures.good_served_ms.is_some(), "{}", outcome.summary());
        assert!(figures.bad_applied >= 1, "the canary applies it: {}", outcome.summary());
    }
}

#[test]
fn a_gate_broken_on_purpose_is_caught() {
    let outcome = run(Options { break_gates: true, faults: false, ..small(3) });
    let broken = outcome.violations.iter().filter(|v| v.invariant.contains("wave's gate is open")).count();
    assert!(broken > 0, "{}", outcome.summary());
    assert!(
        outcome.summary().contains("replay: cargo run -p grapevine-cluster-tests --release -- sim --seed 3 --nodes 20")
    );
}

#[test]
fn a_change_goes_down_its_push_tree_one_push_per_node() {
    // With random fanout 3 on first receipt and the writer's nudge, 100 nodes took 6 hops and
    // 7 messages per node per change; down the tree it is the heap's depth and one push each.
    let outcome = run(Options { faults: false, waves: false, ..Options::new(100, 1) });
    let figures = &outcome.figures;
    assert!(outcome.violations.is_empty(), "{}", outcome.summary());
    assert_eq!(figures.good_hops, crate::push::depth(100, 3), "{}", outcome.summary());
    assert!(figures.change_messages < 1.2, "messages per node per change: {}", figures.change_messages);
}

#[test]
fn a_one_cell_run_is_the_run_before_cells() {
    // Recorded on 334d9bb, before the simulator knew cells: a fleet of one cell must keep
    // every draw and decision of the flat fleet, byte for byte. A change that moves these on
    // purpose (a new rule of the flat fleet) records them again and says why.
    let pinned = [
        (small(7), 0x429d_c48d_2323_2e8a, 7460),
        (small(1), 0x0c89_cc13_2b78_5757, 7012),
        (Options { faults: false, waves: false, ..Options::new(100, 1) }, 0xb703_e889_7c33_57a7, 19_993),
    ];
    for (options, digest, events) in pinned {
        let replay = options.replay_command();
        let outcome = run(options);
        assert_eq!((outcome.trace_digest(), outcome.figures.events), (digest, events), "{replay}");
    }
}

fn cells(nodes: usize, cells: usize, seed: u64) -> Options {
    Options { faults: false, waves: false, cells, ..Options::new(nodes, seed) }
}

#[test]
fn a_change_crosses_every_cell_down_the_backbone_one_push_per_node() {
    // 300 nodes in 10 cells of 30: the writer's cell tree reaches the entry in one hop, the
    // backbone tree over 10 cells is 2 hops deep, and each cell's tree 3.
    let outcome = run(cells(300, 10, 1));
    let figures = &outcome.figures;
    assert!(outcome.violations.is_empty(), "{}", outcome.summary());
    let hops = 1 + crate::push::depth(10, 3) + crate::push::depth(30, 3);
    assert!(figures.good_hops <= hops, "at most {hops} hops: {}", outcome.summary());
    assert!(figures.change_messages < 1.2, "messages per node per change: {}", outcome.summary());
    let crossing = 20 * crate::push::depth(10, 3) as u64;
    assert!(figures.good_stored_ms.is_some_and(|ms| ms >= crossing), "two backbone hops: {}", outcome.summary());
    // The revert goes the same way, keyed by its target: down the backbone, not left to
    // anti-entropy (a gossip round, 1 s).
    let (written, everywhere) = (figures.revert_written_ms.unwrap_or(0), figures.revert_everywhere_ms);
    assert!(everywhere.is_some_and(|ms| ms < written + 200), "the revert crosses every cell: {}", outcome.summary());
}

#[test]
fn cells_give_the_same_history_for_the_same_seed() {
    let (one, two) = (run(cells(120, 4, 5)), run(cells(120, 4, 5)));
    assert_eq!(one.trace_digest(), two.trace_digest());
    assert!(
        one.options.replay_command().ends_with("--no-faults --spread --cells 4"),
        "{}",
        one.options.replay_command()
    );
}

#[test]
fn cells_with_faults_keep_every_invariant() {
    for seed in 0..3 {
        let outcome = run(Options { faults: true, ..cells(200, 8, seed) });
        assert!(outcome.violations.is_empty(), "{}", outcome.summary());
        assert!(outcome.figures.revert_everywhere_ms.is_some(), "{}", outcome.summary());
    }
}

#[test]
fn a_dead_entry_is_taken_over_by_its_cells_next_representative() {
    // The entry of a cell the change crosses to crashes just after the change is accepted, not
    // yet judged dead: the push to it goes unanswered, and TAKEOVER_MS later the cell's next
    // representative gets it. Backbone anti-entropy alone would take a gossip round (3 s here).
    let options = Options { gossip_interval_ms: 3000, ..cells(300, 10, 2) };
    let mut world = World::new(options);
    world.run_until(SETTLE_MS);
    let change = Change::with_ops(vec![put(FEATURE_KEY, "\"on\"")]);
    world.at(0, Event::Submit { node: 0, change: Box::new(change), bad: false });
    world.run_until(world.now);
    let id = world.good.clone().expect("the change is sealed");
    let tree = world.backbone_tree(&id, 0);
    let child = crate::push::children_at(&tree.order, 0, 3)[0];
    let entry = world.entry_seen(0, child, &id).expect("the cell has representatives");
    world.crash(entry);
    world.run_until(world.now + 1_000);
    let accepted = world.good_at.expect("the change is accepted");
    let stored = &world.record.stored[&id];
    let cell = world.cells.get(child).members.clone();
    let latest = cell.clone().filter(|x| *x != entry).map(|x| stored.get(&x).map(|(at, _)| at - accepted));
    let latest: Option<Vec<u64>> = latest.collect();
    let latest = latest.expect("every live member of the cell stores it within a second").into_iter().max();
    assert!(latest.is_some_and(|ms| (TAKEOVER_MS..TAKEOVER_MS + 200).contains(&ms)), "{latest:?}");
    assert!(
        world.trace.iter().any(|line| line.contains(&format!("of cell {child}: n{entry} did not answer"))),
        "the takeover is traced"
    );
}

/// Cuts the cells `apart` from the others, has `writers` each accept a change during the cut,
/// and checks each change stays on its side until the heal and reaches every node after.
fn changes_across_a_cut_between_cells(apart: &[usize], writers: &[usize]) {
    let mut world = World::new(cells(120, 4, 3));
    world.run_until(SETTLE_MS);
    let side: Vec<bool> = (0..120).map(|x| apart.contains(&world.cells.of(x))).collect();
    let since = world.now;
    world.handle(Event::Cut(Partition { side: side.clone(), mode: Mode::Full, since, healed_at: 0 }));
    for (index, writer) in writers.iter().enumerate() {
        let change = Change::with_ops(vec![put(&format!("k{index}"), "\"v\"")]);
        world.at(0, Event::Submit { node: *writer, change: Box::new(change), bad: false });
    }
    world.run_until(world.now + 3_000);
    let ids: Vec<GenId> = world.record.acknowledged.iter().map(|(id, ..)| id.clone()).collect();
    assert_eq!(ids.len(), writers.len(), "every writer accepts its change during the cut");
    for (id, writer) in ids.iter().zip(writers) {
        let stored = &world.record.stored[id];
        for x in 0..120 {
            let same_side = side[x] == side[*writer];
            assert_eq!(stored.contains_key(&x), same_side, "{id} on n{x} during the cut (same side: {same_side})");
        }
    }
    world.handle(Event::Heal);
    world.run_until(world.now + 10_000);
    for id in &ids {
        assert_eq!(world.record.stored[id].len(), 120, "{id} reaches every node after the heal");
    }
    // (Applying them is waves' business, which stay inside the writer's cell for now.)
    let first = world.replica(0).log().version_vector().clone();
    for x in 1..120 {
        assert_eq!(world.replica(x).log().version_vector(), &first, "n{x} holds the same log as n0 after the heal");
    }
}

#[test]
fn a_cell_cut_off_from_the_backbone_takes_changes_inside_and_they_cross_after_the_heal() {
    // Cell 1 is nodes 30..60; n40 writes inside it, n5 outside.
    changes_across_a_cut_between_cells(&[1], &[40, 5]);
}

#[test]
fn a_backbone_split_in_two_converges_after_the_heal() {
    changes_across_a_cut_between_cells(&[0, 1], &[10, 100]);
}

#[test]
fn a_dead_child_in_the_push_tree_is_taken_over_by_its_parent() {
    // The writer's first child crashes just after the change is accepted, not yet judged dead:
    // its children get the change from the writer TAKEOVER_MS later, not from the sweep (two
    // gossip rounds) or a pull (a round).
    let mut world = World::new(Options { faults: false, waves: false, ..Options::new(100, 4) });
    world.run_until(SETTLE_MS);
    let change = Change::with_ops(vec![put(FEATURE_KEY, "\"on\"")]);
    world.at(0, Event::Submit { node: 0, change: Box::new(change), bad: false });
    world.run_until(world.now);
    let id = world.good.clone().expect("the change is sealed");
    let tree = world.cell_tree(0, &id);
    let child = crate::push::children_at(&tree.order, 0, 3)[0];
    let grandchildren = crate::push::children_at(&tree.order, tree.position[child], 3).to_vec();
    world.crash(child);
    world.run_until(world.now + 1_000);
    let accepted = world.good_at.expect("the change is accepted");
    for x in grandchildren {
        let stored = world.record.stored[&id].get(&x).map(|(at, _)| at - accepted);
        assert!(stored.is_some_and(|ms| (TAKEOVER_MS..TAKEOVER_MS + 100).contains(&ms)), "n{x}: {stored:?}");
    }
}
