//! Who may use a node's API: bearer tokens with a role and key prefixes over TCP, the admin
//! socket whose file permissions decide who connects, and clear, counted 401s and 403s.

use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, check, grapevine, http_get};
use serde_json::Value;

/// Runs `grapevine ARGS --node URL` with `token` (or none) and no other credentials.
fn as_client(node: &Node, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let empty = tempfile::tempdir().expect("a temp dir");
    let mut command = std::process::Command::new(grapevine_cluster_tests::binary());
    command.args(args).args(["--node", &node.url()]).env_remove("GRAPEVINE_TOKEN").env("XDG_CONFIG_HOME", empty.path());
    if let Some(token) = token {
        command.env("GRAPEVINE_TOKEN", token);
    }
    command.output().expect("grapevine runs")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn new_token(name: &str, role: &str, prefixes: &[&str]) -> Result<(String, String)> {
    let mut args = vec!["token", "new", "--name", name, "--role", role, "--json"];
    for prefix in prefixes {
        args.extend(["--prefix", prefix]);
    }
    let output = check(grapevine(&args))?;
    let answer: Value = serde_json::from_slice(&output.stdout)?;
    Ok((answer["token"].as_str().context("a token")?.to_owned(), answer["toml"].as_str().context("toml")?.to_owned()))
}

fn refusals(node: &Node, reason: &str) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", node.url())).unwrap_or_default();
    let line = format!("grapevine_api_auth_refusals_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn tokens_roles_prefixes_and_the_admin_socket_decide_who_may_do_what() -> Result<()> {
    let (writer, writer_toml) = new_token("payments-deploy", "write", &["payments/"])?;
    let (reader, reader_toml) = new_token("dashboard", "read", &[])?;
    let mut cluster = Cluster::new(1)?;
    let node = &mut cluster.nodes[0];
    // The harness's own token (its start-up checks use it) beside the two under test.
    node.auth_toml = format!("{}{writer_toml}{reader_toml}", grapevine_cluster_tests::test_auth_toml());
    node.start()?;
    let node = &cluster.nodes[0];

    // No credentials: 401, saying what to send.
    let anonymous = as_client(node, None, &["config", "get", "payments/limits"]);
    assert_eq!(anonymous.status.code(), Some(1), "{}", stderr(&anonymous));
    assert!(stderr(&anonymous).contains("this endpoint needs the read role: send a token"), "{}", stderr(&anonymous));
    let unknown = as_client(node, Some("gv_not-a-token"), &["status"]);
    assert!(stderr(&unknown).contains("the bearer token is not one this node knows"), "{}", stderr(&unknown));
    let (status, _) = http_get(&format!("{}/healthz", node.url()))?;
    assert_eq!(status, 200, "probes need no token");

    // A writer of payments/ writes there, and nowhere else.
    check(as_client(node, Some(&writer), &["config", "put", "payments/limits", "--value", "1", "--emergency"]))?;
    let outside = as_client(node, Some(&writer), &["config", "put", "search/limits", "--value", "1"]);
    assert_eq!(outside.status.code(), Some(1));
    assert!(
        stderr(&outside).contains("token:payments-deploy may touch keys under payments/, not \"search/limits\""),
        "{}",
        stderr(&outside)
    );
    let backup = node.data.with_file_name("backup.redb");
    let refused_backup = as_client(node, Some(&writer), &["backup", "--out", backup.to_str().unwrap()]);
    assert!(stderr(&refused_backup).contains("this endpoint needs every key"), "{}", stderr(&refused_backup));

    // A reader reads everything and changes nothing.
    let read = as_client(node, Some(&reader), &["config", "get", "payments/limits", "--json"]);
    assert!(read.status.success(), "{}", stderr(&read));
    let write = as_client(node, Some(&reader), &["config", "put", "payments/limits", "--value", "2"]);
    assert!(
        stderr(&write).contains("token:dashboard has the read role; this endpoint needs write"),
        "{}",
        stderr(&write)
    );

    // Refusals are counted: two 401s (none, unknown) and three 403s.
    assert_eq!(refusals(node, "unauthenticated"), 2.0);
    assert_eq!(refusals(node, "forbidden"), 3.0);

    // The admin socket: only the node's user may connect (0600), and needs no token.
    let socket = node.data.join("admin.sock");
    let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is for the node's user only");
    let via_socket = format!("unix:{}", socket.display());
    let mut local = std::process::Command::new(grapevine_cluster_tests::binary());
    local.args(["config", "put", "search/limits", "--value", "3", "--emergency", "--json", "--node", &via_socket]);
    let local = local.env_remove("GRAPEVINE_TOKEN").output()?;
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));

    // Authors are who authenticated, not what the client claims.
    let history = node.history()?;
    let authors: Vec<&str> = history.generations.iter().filter_map(|g| g.author.as_ref()).map(|a| a.as_str()).collect();
    let user = String::from_utf8(std::process::Command::new("id").arg("-un").output()?.stdout)?;
    assert_eq!(authors, [format!("unix:{}", user.trim()).as_str(), "token:payments-deploy"]);

    // A user who cannot open the socket file cannot use it.
    if std::process::Command::new("id").arg("-u").output()?.stdout.starts_with(b"0\n") {
        std::fs::set_permissions(
            node.data.parent().unwrap().parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )?;
        std::fs::set_permissions(node.data.parent().unwrap(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(&node.data, std::fs::Permissions::from_mode(0o755))?;
        let binary = grapevine_cluster_tests::binary().to_str().unwrap();
        let other = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", binary, "status", "--node", &via_socket])
            .output()?;
        assert_eq!(other.status.code(), Some(3), "{}", String::from_utf8_lossy(&other.stderr));
        assert!(
            String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&other.stderr)
        );
    }
    Ok(())
}

#[test]
fn a_client_over_its_rate_is_told_to_wait_and_others_are_not() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    let node = &mut cluster.nodes[0];
    let (other, other_toml) = new_token("other", "read", &[])?;
    // Admin: 1 request per second after a burst of 30 (the harness's start-up checks draw on it).
    let limits = "[limits]\nadmin_per_s = 1\nadmin_burst = 30\napplications_per_s = 1\napplications_burst = 2\n";
    node.auth_toml = format!("{}{other_toml}\n{limits}", grapevine_cluster_tests::test_token_toml());
    node.start()?;
    let node = &cluster.nodes[0];
    let statuses: Vec<std::process::Output> = (0..40).map(|_| node.cli(&["status"])).collect();
    let limited: Vec<&std::process::Output> = statuses.iter().filter(|o| !o.status.success()).collect();
    assert!(!limited.is_empty(), "40 requests in a row stay under 1/s after a burst of 30");
    let message = stderr(limited[0]);
    assert!(
        message.contains("token:tests is over its 1 requests per second on the admin endpoints; retry in"),
        "{message}"
    );
    assert_eq!(limited[0].status.code(), Some(1));
    // Another client has its own budget.
    assert!(as_client(node, Some(&other), &["status"]).status.success());

    // Applications: OFREP answers 429 with Retry-After.
    let http = grapevine_cluster_tests::http_client();
    let url = format!("{}/ofrep/v1/evaluate/flags", node.url());
    let runtime = tokio::runtime::Runtime::new()?;
    let answers: Vec<(u16, Option<String>)> = runtime.block_on(async {
        let mut answers = Vec::new();
        for _ in 0..4 {
            let response = http.post(&url).body("{\"context\": {}}").send().await.expect("the node answers");
            let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
            answers.push((response.status().as_u16(), retry));
        }
        answers
    });
    assert!(answers.iter().any(|(status, retry)| *status == 429 && retry.as_deref() == Some("1")), "{answers:?}");
    let (_, metrics) = http_get(&format!("{}/metrics", node.url()))?;
    for class in ["admin", "applications"] {
        let line = format!("grapevine_api_rate_limited_total{{reason=\"{class}\"}} ");
        let count: f64 = metrics.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0.0);
        assert!(count >= 1.0, "{class}: {count}");
    }
    Ok(())
}

#[test]
fn connections_past_the_limit_are_answered_503_and_counted() -> Result<()> {
    use std::io::{Read, Write};
    let mut cluster = Cluster::new(1)?;
    let node = &mut cluster.nodes[0];
    node.auth_toml = format!(
        "{}\n{}api_connections = 2\n",
        grapevine_cluster_tests::test_token_toml(),
        grapevine_cluster_tests::TEST_LIMITS_TOML
    );
    node.start()?;
    let node = &cluster.nodes[0];
    // Two watchers hold their connections open.
    let watch = format!(
        "GET /v1/watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        grapevine_cluster_tests::TEST_TOKEN
    );
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut stream = std::net::TcpStream::connect(node.api)?;
        stream.write_all(watch.as_bytes())?;
        let mut first = [0u8; 12];
        stream.read_exact(&mut first)?;
        assert_eq!(&first, b"HTTP/1.1 200");
        watchers.push(stream);
    }
    let (status, body) = http_get(&format!("{}/v1/status", node.url()))?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has 2 API connections open, its limit ([limits] api_connections); retry later"), "{body}");
    drop(watchers.pop());
    grapevine_cluster_tests::wait_until(std::time::Duration::from_secs(5), "a slot to free", || {
        http_get(&format!("{}/v1/status", node.url())).is_ok_and(|(status, _)| status == 200)
    })?;
    // The server frees a slot once it has seen the previous connection close: retry briefly.
    let mut metrics = String::new();
    grapevine_cluster_tests::wait_until(std::time::Duration::from_secs(5), "the metrics", || {
        let answer = http_get(&format!("{}/metrics", node.url()));
        answer.is_ok_and(|(status, body)| {
            metrics = body;
            status == 200
        })
    })?;
    let refused =
        metrics.lines().find_map(|l| l.strip_prefix("grapevine_api_connections_refused_total ")?.parse::<f64>().ok());
    assert!(refused.is_some_and(|count| count >= 1.0), "{refused:?}");
    Ok(())
}
