//! What operators see, against real processes: `/metrics` parses with real Prometheus parsers
//! and carries the families operators alert on; `/healthz` and `/readyz` answer.
//!
//! `/metrics` is parsed with `prometheus-parse` and, where installed (CI), the Python client's
//! strict OpenMetrics parser; the test also checks that a change's propagation was observed.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, check, http_request};

/// The OpenMetrics parser of the Python client (Debian's `python3-prometheus-client`, which
/// `.ci/run` installs), when a Python with it is on this machine.
fn python_with_prometheus_client() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn metrics_parse_with_real_parsers_and_probes_answer() -> Result<()> {
    let mut cluster = Cluster::new(2)?;
    cluster.start_all()?;
    let node = &cluster.nodes[1];
    check(cluster.nodes[0].cli(&["config", "put", "k", "--value", "1"]))?;
    grapevine_cluster_tests::wait_until(std::time::Duration::from_secs(10), "the change on n2", || {
        node.cli(&["config", "get", "k"]).status.success()
    })?;
    let _ = http_request("POST", &format!("{}/ofrep/v1/evaluate/flags/missing", node.url()), Some("{}"))?;

    let (status, text) = http_request("GET", &format!("{}/metrics", node.url()), None)?;
    assert_eq!(status, 200);
    // The Rust parser the node also uses for applications' endpoints.
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("prometheus-parse")?;
    let names: std::collections::BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in [
        "grapevine_members",
        "grapevine_generations_known",
        "grapevine_generations_applied_total",
        "grapevine_reverts_known",
        "grapevine_propagation_seconds",
        "grapevine_log_behind_generations",
        "grapevine_ofrep_requests_total",
        "grapevine_gossip_messages_received_total",
        "grapevine_tls_handshake_failures_total",
    ] {
        assert!(names.contains(family), "no {family} in:\n{text}");
    }
    assert!(
        text.contains("grapevine_generation_verdict{generation=\"n1.1\",verdict=\"healthy\"} 1"),
        "n2's verdict on the change it applied:\n{text}"
    );
    for stage in ["stored", "applied"] {
        let count = format!("grapevine_propagation_seconds_count{{reason=\"{stage}\"}} 1");
        assert!(text.contains(&count), "the change's propagation to {stage} was observed:\n{text}");
    }

    // The strict OpenMetrics parser, where installed (CI installs it).
    match python_with_prometheus_client() {
        Some(python) => {
            let mut child = Command::new(python)
                .args([
                    "-c",
                    "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
                     n = sum(1 for _ in p(sys.stdin.read()))\nprint(n)",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
            let output = child.wait_with_output()?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "the OpenMetrics parser refused /metrics: {stderr}\n{text}");
            let families: usize = String::from_utf8_lossy(&output.stdout).trim().parse()?;
            assert!(families > 20, "only {families} families");
        }
        None => eprintln!("python3-prometheus-client not installed: checked with prometheus-parse only"),
    }

    let (status, body) = http_request("GET", &format!("{}/healthz", node.url()), None)?;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_request("GET", &format!("{}/readyz", node.url()), None)?;
    assert_eq!(status, 200, "{body}");
    let readiness: grapevine_node::replies::Readiness = serde_json::from_str(&body)?;
    assert!(readiness.ready && readiness.behind.is_empty(), "{readiness:?}");
    Ok(())
}
