//! Bad input through the real binary: each case exits with the documented code and a message
//! that says what was expected and what was found, and nothing is applied.
//!
//! Exit codes: 0 success, 1 refused, 2 usage error, 3 node unreachable.
//!
//! The cases: refused input, usage errors, an unreachable node, and start-up refusals; a key with
//! `/` and a 30-digit integer round trip exactly; and `grapevine history | head -c 1` does not
//! panic.

use anyhow::Result;
use grapevine_cluster_tests::{Cluster, Node, check, grapevine};

fn assert_fails(output: std::process::Output, code: i32, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "expected exit {code} with {message:?}, got stderr: {stderr}");
    assert!(stderr.contains(message), "expected {message:?} in stderr: {stderr}");
}

fn generations(node: &Node) -> Result<usize> {
    Ok(node.history()?.total)
}

#[test]
fn refused_changes_exit_1_and_change_nothing() -> Result<()> {
    let cluster = Cluster::start(1)?;
    let node = &cluster.nodes[0];
    check(node.cli(&["flag", "set", "f", "--on"]))?;
    check(node.cli(&["config", "put", "c", "--value", "1"]))?;
    let dir = cluster.dir.path();

    assert_fails(node.cli(&["config", "put", "c", "--value", ""]), 1, "expected a JSON value, got empty input");
    assert_fails(node.cli(&["config", "put", "c", "--value", "{oops"]), 1, "expected valid JSON");
    assert_fails(node.cli(&["config", "put", "c", "--value", "null"]), 1, "expected a JSON value other than null");
    let big = dir.join("big.json");
    std::fs::write(&big, format!("\"{}\"", "x".repeat(4 * 1024 * 1024)))?;
    assert_fails(
        node.cli(&["config", "put", "c", "--file", big.to_str().unwrap()]),
        1,
        "must be at most 4194304 bytes",
    );
    assert_fails(node.cli(&["config", "put", "bad key", "--value", "1"]), 1, "key must be 1 to 128");

    let flag = dir.join("flag.json");
    std::fs::write(
        &flag,
        r#"{"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "maybe"}"#,
    )?;
    assert_fails(
        node.cli(&["flag", "set", "f", "--file", flag.to_str().unwrap()]),
        1,
        "flag \"f\": /defaultVariant must be one of the variants (off, on), got \"maybe\"",
    );
    assert_fails(
        node.cli(&["flag", "set", "f", "--variant", "maybe"]),
        1,
        "/defaultVariant must be one of the variants",
    );
    assert_fails(node.cli(&["flag", "set", "nope", "--variant", "on"]), 1, "does not exist");
    assert_fails(node.cli(&["flag", "get", "nope"]), 1, "not found");

    assert_eq!(generations(node)?, 2, "a refused change was stored");
    assert_eq!(node.config("c")?.value, 1);
    Ok(())
}

#[test]
fn usage_errors_exit_2() {
    assert_fails(grapevine(&["flag", "set", "f"]), 2, "required");
    assert_fails(grapevine(&["status", "--node", "ftp://127.0.0.1:7401"]), 2, "--node must be an http:// URL");
    assert_fails(
        grapevine(&["config", "put", "k", "--file", "/nonexistent/value.json"]),
        2,
        "cannot read /nonexistent/value.json",
    );
}

#[test]
fn an_unreachable_node_exits_3() {
    let port = grapevine_cluster_tests::free_port(false);
    let url = format!("http://127.0.0.1:{port}");
    assert_fails(grapevine(&["status", "--node", &url]), 3, "could not reach node at");
    assert_fails(grapevine(&["flag", "set", "f", "--on", "--node", &url]), 3, "could not reach node at");
}

#[test]
fn a_node_refuses_to_start_and_says_why() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    let node = &cluster.nodes[0];
    let (data, tls) = (node.data.to_str().unwrap().to_owned(), node.tls.to_str().unwrap().to_owned());

    assert_fails(grapevine(&["node", "--data", &data, "--tls", &tls]), 2, "missing required option `name`");
    assert_fails(
        grapevine(&["node", "--name", "n1", "--listen", "nowhere", "--data", &data, "--tls", &tls]),
        2,
        "option `listen`: expected IP:PORT, got \"nowhere\"",
    );
    let config = cluster.dir.path().join("bad.toml");
    std::fs::write(&config, "nmae = \"n1\"\n")?;
    assert_fails(grapevine(&["node", "--config", config.to_str().unwrap()]), 2, "unknown field `nmae`");
    let missing = cluster.dir.path().join("no-certs");
    assert_fails(
        grapevine(&["node", "--name", "n1", "--data", &data, "--tls", missing.to_str().unwrap()]),
        1,
        "ca.pem",
    );

    cluster.nodes[0].start()?;
    let listen = format!("127.0.0.1:{}", grapevine_cluster_tests::free_port(true));
    let api = format!("127.0.0.1:{}", grapevine_cluster_tests::free_port(false));
    assert_fails(
        grapevine(&["node", "--name", "n1", "--listen", &listen, "--api", &api, "--data", &data, "--tls", &tls]),
        1,
        "is locked by another process",
    );
    Ok(())
}

#[test]
fn keys_with_slashes_and_exact_numbers_round_trip() -> Result<()> {
    let cluster = Cluster::start(1)?;
    let node = &cluster.nodes[0];
    let big = "123456789012345678901234567890";
    check(node.cli(&["config", "put", "team/limits", "--value", &format!(r#"{{"max": {big}, "ratio": 0.1}}"#)]))?;
    let answer = node.config("team/limits")?;
    assert_eq!(answer.key, "team/limits");
    assert_eq!(answer.value["max"].to_string(), big, "{answer:?}");
    assert_eq!(answer.value["ratio"].to_string(), "0.1");
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} history --node {} | head -c 1", grapevine_cluster_tests::binary().display(), node.url()))
        .output()?;
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("panicked"), "{piped:?}");
    Ok(())
}

#[test]
fn status_wait_says_whether_the_node_never_answered_or_was_not_ready() -> Result<()> {
    // Nothing listens on port 1: exit 3 once the wait is over, saying how long it waited.
    let started = std::time::Instant::now();
    let output = grapevine(&["status", "--wait", "300ms", "--node", "http://127.0.0.1:1"]);
    assert_fails(output, 3, "(after waiting 300 ms)");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "it did not wait");
    assert_fails(grapevine(&["status", "--wait", "soon"]), 2, "--wait: expected a duration like 30s");

    // A lone node answers and is ready, but does not see the two members asked for: exit 1.
    let cluster = Cluster::start(1)?;
    let node = &cluster.nodes[0];
    assert_fails(node.cli(&["status", "--wait", "500ms", "--members", "2"]), 1, "it sees 1 live members (n1)");
    check(node.cli(&["status", "--wait", "5s", "--members", "1"]))?;
    Ok(())
}

#[test]
fn unknown_or_bad_query_parameters_are_refused_naming_them() -> Result<()> {
    use grapevine_cluster_tests::http_request;
    let cluster = Cluster::start(1)?;
    let url = cluster.nodes[0].url();
    let paths = [
        ("GET", "/v1/history?foo=1"),
        ("GET", "/v1/rollouts?foo=1"),
        ("GET", "/v1/config/x?foo=1"),
        ("GET", "/v1/status?foo=1"),
        ("GET", "/v1/rollouts/n1.1?foo=1"),
        ("GET", "/v1/backup?foo=1"),
        ("POST", "/v1/health?foo=1"),
    ];
    for (method, path) in paths {
        let (status, body) = http_request(method, &format!("{url}{path}"), Some("{}"))?;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("unknown field `foo`"), "{path}: {body}");
    }
    let (status, body) =
        http_request("POST", &format!("{url}/v1/config/x?anomaly_quorum_min=-1"), Some(r#"{"value": 1}"#))?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("anomaly_quorum_min must be a whole number from 0, got \\\"-1\\\""), "{body}");
    Ok(())
}
