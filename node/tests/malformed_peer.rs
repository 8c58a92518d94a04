//! A peer with a valid certificate that sends garbage: every malformed datagram, stream and
//! pull is counted in a metric and dropped, and the node keeps serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use grapevine_node::config::{Config, RawConfig};
use grapevine_node::daemon;
use grapevine_node::metrics::Metrics;
use grapevine_node::tls::{NodeTls, ca_init, ca_issue};
use grapevine_node::transport::{STREAM_PULL, Transport};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_traffic_is_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ca_init(&ca).unwrap();
    for name in ["n1", "mallory"] {
        ca_issue(&ca, name, &["127.0.0.1".parse().unwrap()], &[], &dir.path().join(name)).unwrap();
    }
    let raw = RawConfig {
        name: Some("n1".into()),
        listen: Some("127.0.0.1:0".into()),
        api: Some("127.0.0.1:0".into()),
        data: Some(dir.path().join("data")),
        tls: Some(dir.path().join("n1")),
        gossip_interval_ms: Some(100),
        ..RawConfig::default()
    };
    let node = daemon::start(Config::try_from(raw).unwrap()).await.unwrap();

    let tls = NodeTls::load(&dir.path().join("mallory")).unwrap();
    let (mallory, _inboxes) = Transport::bind("127.0.0.1:0".parse().unwrap(), &tls, Arc::new(Metrics::new())).unwrap();
    // A gossip datagram that is not a chitchat message.
    mallory.send_gossip(node.gossip_addr, Bytes::from_static(b"\x07garbage")).await.unwrap();
    // A gossip stream too large to be a message (takes the stream path).
    mallory.send_gossip(node.gossip_addr, Bytes::from(vec![0xff; 70 * 1024])).await.unwrap();
    // A pull whose request frame is not a pull request.
    let (mut send, mut recv) = mallory.open_stream(node.gossip_addr, STREAM_PULL).await.unwrap();
    send.write_all(&[0, 0, 0, 3, 9, 9, 9]).await.unwrap();
    send.finish().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
    // A pull announcing a frame far over the limit.
    let (mut send, mut recv) = mallory.open_stream(node.gossip_addr, STREAM_PULL).await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    send.finish().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;

    let url = format!("http://{}/metrics", node.api_addr);
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let dropped = metric(&text, "grapevine_gossip_messages_dropped_total{reason=\"malformed\"}")
            + metric(&text, "grapevine_peer_malformed_total");
        if dropped >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&text, "grapevine_gossip_messages_dropped_total{reason=\"malformed\"}") >= 1.0, "{text}");
    assert!(metric(&text, "grapevine_peer_malformed_total{reason=\"pull_request\"}") >= 2.0, "{text}");
    assert!(metric(&text, "grapevine_peer_malformed_total{reason=\"gossip_stream\"}") >= 1.0, "{text}");

    // Still serving.
    let health = reqwest::get(format!("http://{}/healthz", node.api_addr)).await.unwrap();
    assert!(health.status().is_success());
    mallory.close().await;
    node.stop().await;
}
