//! The pure checks, and a peer gossiping under another name than its certificate's, in process.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock;
use crate::gossip::{Gossip, GossipConfig};
use crate::metrics::{Metrics, reason};
use crate::tls::{NodeTls, ca_init, ca_issue};
use crate::transport::Transport;

fn namesake(port: u16, incarnation: u64) -> Namesake {
    Namesake { address: ([127, 0, 0, 1], port).into(), incarnation }
}

#[test]
fn a_namesake_is_live_after_its_heartbeat_rose_in_three_looks() {
    let mut watch = NamesakeWatch::default();
    let (old, other) = (namesake(1, 1), namesake(2, 2));
    let look = |old_beat: u64, other_beat: u64| BTreeMap::from([(old, old_beat), (other, other_beat)]);
    assert!(watch.observe(&look(10, 5)).is_empty());
    // The dead incarnation catches up once with a peer's fresher view, then stays.
    assert!(watch.observe(&look(12, 6)).is_empty());
    assert!(watch.observe(&look(12, 7)).is_empty());
    assert_eq!(watch.observe(&look(12, 8)), vec![other]);
    assert!(watch.observe(&look(12, 9)).is_empty(), "raised once");
    assert!(watch.observe(&BTreeMap::new()).is_empty());
    assert!(watch.is_empty(), "namesakes out of sight are forgotten");
}

#[test]
fn a_claim_is_held_to_the_certificate_of_the_connection_at_its_address() {
    let addr = "127.0.0.1:7400".parse().unwrap();
    let names = HashMap::from([(addr, vec!["n7".to_owned(), "n7.example".to_owned()])]);
    assert!(!claim_holds(&names, &ChitchatId::new("n3", 1, addr)));
    assert!(claim_holds(&names, &ChitchatId::new("n7", 1, addr)));
    let elsewhere = "127.0.0.1:7401".parse().unwrap();
    assert!(claim_holds(&names, &ChitchatId::new("n3", 1, elsewhere)), "no connection, nothing to check");
}

/// Starts gossip named `name` with the certificate issued for `certificate`.
async fn start(dir: &std::path::Path, name: &str, certificate: &str, seeds: Vec<String>) -> Gossip {
    let tls = NodeTls::load(&dir.join(certificate)).unwrap();
    let (transport, inboxes) = Transport::bind("127.0.0.1:0".parse().unwrap(), &tls, Arc::new(Metrics::new())).unwrap();
    let config = GossipConfig {
        name: name.parse().unwrap(),
        cluster_id: "test".into(),
        advertise: transport.local_addr(),
        seeds,
        interval: Duration::from_millis(50),
        dead_node_grace_period: Duration::from_secs(60),
        incarnation: 1,
    };
    Gossip::start(&config, transport, inboxes.gossip, Vec::new()).await.unwrap()
}

/// Whether `gossip`'s chitchat state holds a member named `name`, whatever the views say.
async fn knows(gossip: &Gossip, name: &'static str) -> bool {
    gossip.handle.with_chitchat(move |chitchat| chitchat.node_states().keys().any(|id| &*id.node_id == name)).await
}

/// A node with a certificate for `n7` that gossips as `n3` (a build without the start-up check)
/// is in chitchat's state, but in none of the views this node reads: not a member, not a peer
/// to sync with. Fails before this check: `members()` listed it as `n3`.
#[tokio::test]
async fn a_peer_gossiping_under_another_name_than_its_certificate_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    ca_init(&dir.path().join("ca")).unwrap();
    for name in ["n1", "n2", "n7"] {
        ca_issue(&dir.path().join("ca"), name, &["127.0.0.1".parse().unwrap()], &[], &dir.path().join(name)).unwrap();
    }
    let n1 = start(dir.path(), "n1", "n1", Vec::new()).await;
    let seed = vec![n1.transport.local_addr().to_string()];
    let n2 = start(dir.path(), "n2", "n2", seed.clone()).await;
    let impostor = start(dir.path(), "n3", "n7", seed).await;
    let deadline = clock::now() + Duration::from_secs(10);
    while !(knows(&n1, "n3").await && n1.live_names().await.len() >= 2) {
        assert!(clock::now() < deadline, "n1 never heard of n2 and the impostor");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names: Vec<String> = n1.members().await.into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["n1", "n2"], "the impostor got in");
    assert_eq!(n1.live_names().await.iter().map(ToString::to_string).collect::<Vec<_>>(), ["n1", "n2"]);
    let peers: Vec<_> = n1.peer_version_vectors().await.into_iter().map(|(addr, _)| addr).collect();
    assert_eq!(peers, [n2.transport.local_addr()]);
    n1.count_false_claims().await;
    n1.count_false_claims().await;
    let refused = n1.transport.metrics().members_refused.get_or_create(&reason("wrong_name")).get();
    assert_eq!(refused, 1, "counted once");
    for gossip in [n1, n2, impostor] {
        gossip.shutdown().await;
    }
}
