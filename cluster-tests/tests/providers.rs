//! The real flagd providers against real `grapevine node` processes: the Python provider
//! (`openfeature-provider-flagd`) and the JavaScript one (`@openfeature/flagd-provider`), each
//! in `rpc` mode (the node evaluates) and `in-process` mode (the provider evaluates what the
//! node's sync stream sends). Also Grapevine's own guarantees through them: a waved change
//! reaches the canary host's provider first, a revert reaches an in-process provider within
//! 50 ms of its node applying it, and a node restart is survived with no stale value.
//!
//! A provider that is not installed skips with a notice (`GRAPEVINE_REQUIRE_PROVIDERS=1`, set
//! by `.ci/run`, makes it a failure).

use std::time::Duration;

use anyhow::{Context, Result};
use grapevine_cluster_tests::providers::{self, Language, Mode, Options, Provider, with_flagd};
use grapevine_cluster_tests::{Cluster, Node, next_sse_event};
use grapevine_proto::eval::FlagDefinition;
use grapevine_proto::flagd::Fractional;
use serde_json::{Value, json};

fn put_flag(node: &Node, dir: &std::path::Path, key: &str, definition: &Value, policy: &[&str]) -> Result<String> {
    let path = dir.join(format!("{}.json", key.replace('/', "_")));
    std::fs::write(&path, definition.to_string())?;
    let mut args = vec!["flag", "set", key, "--file", path.to_str().context("a UTF-8 path")?];
    args.extend(policy);
    Ok(node.change(&args)?.generation().context("a generation")?.to_owned())
}

fn split() -> Value {
    json!({"state": "ENABLED", "variants": {"a": "a", "b": "b", "c": "c"}, "defaultVariant": "a",
           "targeting": {"fractional": [["a", 34], ["b", 33], ["c", 33]]}})
}

/// The languages whose provider is installed.
fn installed() -> Result<Vec<Language>> {
    let mut languages = Vec::new();
    for language in [Language::Python, Language::JavaScript] {
        if providers::available(language)? {
            languages.push(language);
        }
    }
    Ok(languages)
}

/// Which `fractional` scheme each in-process provider's own evaluator buckets with (OFREP and
/// rpc clients get the node's, `v2` by default).
fn scheme_of(language: Language) -> Fractional {
    match language {
        // openfeature-provider-flagd 0.6.1 brings openfeature-flagd-core 2.0.0: CBOR-keyed.
        Language::Python => Fractional::Cbor,
        // @openfeature/flagd-core 4.0.1: string-keyed, flagd's v2.
        Language::JavaScript => Fractional::V2,
    }
}

#[test]
fn providers_evaluate_in_both_modes_and_follow_changes() -> Result<()> {
    let languages = installed()?;
    if languages.is_empty() {
        return Ok(());
    }
    let mut cluster = Cluster::new(1)?;
    let (evaluation, sync) = with_flagd(&mut cluster.nodes[0]);
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path().to_owned();
    let flags = [
        ("app/bool", json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"})),
        (
            "app/string",
            json!({"state": "ENABLED", "variants": {"red": "red", "blue": "blue"}, "defaultVariant": "red",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "blue", null]}, "metadata": {"team": "ui"}}),
        ),
        ("app/int", json!({"state": "ENABLED", "variants": {"one": 1, "two": 2}, "defaultVariant": "two"})),
        ("app/float", json!({"state": "ENABLED", "variants": {"half": 0.5}, "defaultVariant": "half"})),
        ("app/object", json!({"state": "ENABLED", "variants": {"a": {"x": "y"}}, "defaultVariant": "a"})),
        ("app/off", json!({"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"})),
        ("app/split", split()),
        ("app/toggle", json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"})),
        ("other/flag", json!({"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a"})),
    ];
    for (key, definition) in &flags {
        put_flag(node, &dir, key, definition, &[])?;
    }
    let split_definition = FlagDefinition::from_value(split(), &Default::default()).map_err(anyhow::Error::msg)?;
    let mut round = 0;
    for language in languages {
        for (mode, port) in [(Mode::Rpc, evaluation), (Mode::InProcess, sync)] {
            let context = format!("{language} {}", mode.as_str());
            let mut provider = Provider::start(language, mode, port, &Options::default())?;
            let check = |answer: Value, value: Value, reason: &str| {
                assert_eq!(
                    (&answer["value"], answer["reason"].as_str()),
                    (&value, Some(reason)),
                    "{context}: {answer}"
                );
            };
            check(provider.eval("boolean", "app/bool", json!(false), json!({}))?, json!(true), "STATIC");
            let blue = provider.eval("string", "app/string", json!("none"), json!({"email": "a@example.com"}))?;
            check(blue.clone(), json!("blue"), "TARGETING_MATCH");
            check(provider.eval("integer", "app/int", json!(0), json!({}))?, json!(2), "STATIC");
            check(provider.eval("float", "app/float", json!(0.0), json!({}))?, json!(0.5), "STATIC");
            check(provider.eval("object", "app/object", json!({}), json!({}))?, json!({"x": "y"}), "STATIC");
            check(provider.eval("string", "app/off", json!("mine"), json!({}))?, json!("mine"), "DISABLED");
            let missing = provider.eval("string", "app/missing", json!("mine"), json!({}))?;
            assert_eq!(
                (&missing["value"], &missing["error_code"]),
                (&json!("mine"), &json!("FLAG_NOT_FOUND")),
                "{context}"
            );
            if mode == Mode::InProcess {
                assert_eq!(blue["metadata"]["team"], "ui", "{context}: flag metadata in process: {blue}");
            }
            // Bucketing: rpc gets the node's scheme (v2); in process, the provider's own core.
            let scheme = if mode == Mode::Rpc { Fractional::V2 } else { scheme_of(language) };
            for user in 0..20 {
                let key = format!("user-{user}");
                let expected = split_definition.evaluate(
                    "app/split",
                    &serde_json::Map::from_iter([("targetingKey".to_owned(), json!(key))]),
                    scheme,
                    0,
                );
                let answer = provider.eval("string", "app/split", json!("none"), json!({"targetingKey": key}))?;
                assert_eq!(Some(&answer["value"]), expected.value.as_ref(), "{context}: {key} under {scheme:?}");
            }
            // A change reaches the provider (the cache of an rpc provider is dropped by the event).
            round += 1;
            let variant = if round % 2 == 1 { "off" } else { "on" };
            let toggled =
                json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": variant});
            put_flag(node, &dir, "app/toggle", &toggled, &[])?;
            provider.wait_for("boolean", "app/toggle", json!(true), json!(variant == "on"), Duration::from_secs(10))?;
            // A selector of one prefix: other keys are not found.
            let selected = Options { selector: Some("prefix=other/".into()), ..Options::default() };
            if mode == Mode::InProcess {
                let mut scoped = Provider::start(language, mode, port, &selected)?;
                let hidden = scoped.eval("boolean", "app/bool", json!(false), json!({}))?;
                assert_eq!(hidden["error_code"], "FLAG_NOT_FOUND", "{context}: {hidden}");
                check(scoped.eval("string", "other/flag", json!("none"), json!({}))?, json!("A"), "STATIC");
            }
        }
    }
    // The two schemes differ for some of these users: the check above can tell them apart.
    let differ = (0..20).any(|user| {
        let context = serde_json::Map::from_iter([("targetingKey".to_owned(), json!(format!("user-{user}")))]);
        split_definition.evaluate("s", &context, Fractional::V2, 0).value
            != split_definition.evaluate("s", &context, Fractional::Cbor, 0).value
    });
    assert!(differ, "the test's users bucket alike under both schemes");
    Ok(())
}

#[test]
fn a_python_provider_with_a_token_reads_only_its_prefix() -> Result<()> {
    if !providers::available(Language::Python)? {
        return Ok(());
    }
    let mut cluster = Cluster::new(1)?;
    let (evaluation, sync) = with_flagd(&mut cluster.nodes[0]);
    let node = &mut cluster.nodes[0];
    // No anonymous reads here: a read token of `app/` only.
    node.config_toml = node.config_toml.replace("anonymous = \"read\"", "anonymous = \"none\"");
    let token = "gv_python-app";
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    node.auth_toml.push_str(&format!(
        "\n[[auth.token]]\nname = \"py\"\nsha256 = \"{digest}\"\nrole = \"read\"\nprefixes = [\"app/\"]\n"
    ));
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path().to_owned();
    put_flag(
        node,
        &dir,
        "app/bool",
        &json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}),
        &[],
    )?;
    put_flag(
        node,
        &dir,
        "other/bool",
        &json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}),
        &[],
    )?;
    for (mode, port) in [(Mode::Rpc, evaluation), (Mode::InProcess, sync)] {
        let options = Options { token: Some(token.into()), ..Options::default() };
        let mut provider = Provider::start(Language::Python, mode, port, &options)?;
        assert_eq!(provider.eval("boolean", "app/bool", json!(false), json!({}))?["value"], true, "{mode:?}");
        let other = provider.eval("boolean", "other/bool", json!(false), json!({}))?;
        assert_eq!(other["error_code"], "FLAG_NOT_FOUND", "{mode:?}: {other}");
    }
    Ok(())
}

/// Opens the node's OFREP event stream: its events are the node applying a change.
async fn node_events(node: &Node) -> Result<reqwest::Response> {
    let response = grapevine_cluster_tests::http_client().get(format!("{}/ofrep/v1/events", node.url())).send().await?;
    anyhow::ensure!(response.status() == 200, "events: {}", response.status());
    Ok(response)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revert_reaches_an_in_process_provider_within_50_ms_of_its_node() -> Result<()> {
    let languages = installed()?;
    if languages.is_empty() {
        return Ok(());
    }
    let mut cluster = Cluster::new(1)?;
    let (_, sync) = with_flagd(&mut cluster.nodes[0]);
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path().to_owned();
    let flag = |variant: &str| json!({"state": "ENABLED", "variants": {"old": "old", "new": "new"}, "defaultVariant": variant});
    put_flag(node, &dir, "app/kill", &flag("old"), &[])?;
    for language in languages {
        put_flag(node, &dir, "app/kill", &flag("old"), &["--emergency"])?;
        let bad = put_flag(node, &dir, "app/kill", &flag("new"), &["--emergency"])?;
        let mut provider = Provider::start(language, Mode::InProcess, sync, &Options::default())?;
        provider.wait_for("string", "app/kill", json!("none"), json!("new"), Duration::from_secs(10))?;
        let mut events = node_events(node).await?;
        let rollback = std::thread::scope(|scope| -> Result<(f64, f64)> {
            let waiter = scope.spawn(|| {
                provider.wait_for("string", "app/kill", json!("none"), json!("old"), Duration::from_secs(10))
            });
            let output = node.cli(&["rollback", &bad]);
            anyhow::ensure!(output.status.success(), "rollback: {}", String::from_utf8_lossy(&output.stderr));
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), next_sse_event(&mut events)).await
                })
            })??;
            let applied_at = providers::unix_ms();
            let seen_at = waiter.join().expect("the waiter does not panic")?;
            Ok((applied_at, seen_at))
        })?;
        let (applied_at, seen_at) = rollback;
        let lag_ms = seen_at - applied_at;
        println!("{language}: the revert reached the in-process provider {lag_ms:.1} ms after the node applied it");
        assert!(lag_ms < 50.0, "{language}: {lag_ms:.1} ms");
    }
    Ok(())
}

#[test]
fn an_in_process_provider_survives_a_node_restart_without_stale_values() -> Result<()> {
    let languages = installed()?;
    if languages.is_empty() {
        return Ok(());
    }
    let mut cluster = Cluster::new(1)?;
    let (_, sync) = with_flagd(&mut cluster.nodes[0]);
    cluster.start_all()?;
    let dir = cluster.dir.path().to_owned();
    let flag = |variant: &str| json!({"state": "ENABLED", "variants": {"a": "a", "b": "b", "c": "c"}, "defaultVariant": variant});
    put_flag(&cluster.nodes[0], &dir, "app/f", &flag("a"), &[])?;
    let mut providers: Vec<Provider> = languages
        .iter()
        .map(|l| Provider::start(*l, Mode::InProcess, sync, &Options::default()))
        .collect::<Result<_>>()?;
    for provider in &mut providers {
        provider.wait_for("string", "app/f", json!("none"), json!("a"), Duration::from_secs(10))?;
    }
    cluster.nodes[0].terminate()?;
    // While the node is down, providers serve what they have (flagd's grace).
    for provider in &mut providers {
        assert_eq!(provider.eval("string", "app/f", json!("none"), json!({}))?["value"], "a");
    }
    cluster.nodes[0].start()?;
    put_flag(&cluster.nodes[0], &dir, "app/f", &flag("b"), &[])?;
    let changed_at = providers::unix_ms();
    for provider in &mut providers {
        // The provider reconnected and follows the restarted node: the change reaches it, and
        // from then on it never serves the value from before.
        let seen = provider.wait_for("string", "app/f", json!("none"), json!("b"), Duration::from_secs(15))?;
        for _ in 0..200 {
            assert_eq!(
                provider.eval("string", "app/f", json!("none"), json!({}))?["value"],
                "b",
                "{}",
                provider.language
            );
        }
        let events = provider.events()?;
        assert!(
            events.iter().filter(|event| event.name == "PROVIDER_READY").count() >= 2,
            "{}: {events:?}",
            provider.language
        );
        println!(
            "{}: the change after the restart reached it {:.0} ms after the write",
            provider.language,
            seen - changed_at
        );
    }
    Ok(())
}

#[test]
fn a_waved_change_reaches_the_canary_hosts_provider_before_a_later_waves() -> Result<()> {
    let languages = installed()?;
    let Some(language) = languages.first().copied() else { return Ok(()) };
    let mut cluster = Cluster::new(2)?;
    let mut ports = Vec::new();
    for node in &mut cluster.nodes {
        node.config_toml = "[health]\npush = true\nsample_interval_ms = 200\n[rollout]\nmin_samples = 10\n".to_owned();
        ports.push(with_flagd(node).1);
    }
    cluster.start_all()?;
    let dir = cluster.dir.path().to_owned();
    let flag = |variant: &str| json!({"state": "ENABLED", "variants": {"old": "old", "new": "new"}, "defaultVariant": variant});
    put_flag(&cluster.nodes[0], &dir, "app/waved", &flag("old"), &["--emergency"])?;
    let mut providers: Vec<Provider> = ports
        .iter()
        .map(|port| Provider::start(language, Mode::InProcess, *port, &Options::default()))
        .collect::<Result<_>>()?;
    for provider in &mut providers {
        provider.wait_for("string", "app/waved", json!("none"), json!("old"), Duration::from_secs(10))?;
    }
    let generation =
        put_flag(&cluster.nodes[0], &dir, "app/waved", &flag("new"), &["--waves", "1,100%", "--bake", "2s"])?;
    let canary = cluster.nodes[0].rollout(&generation)?.waves[0].members[0].name.to_string();
    let canary_index = cluster.nodes.iter().position(|n| n.name == canary).context("the canary node")?;
    let later_index = 1 - canary_index;
    // Healthy reports from both hosts open the second wave after the bake.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|scope| -> Result<Vec<f64>> {
        let pusher = scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for node in &cluster.nodes {
                    let body = r#"{"requests": 100, "errors": 0, "latency_p99_ms": 5}"#;
                    let _ =
                        grapevine_cluster_tests::http_request("POST", &format!("{}/v1/health", node.url()), Some(body));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Each provider polls in its own thread: the time each first saw the change.
        let waiters: Vec<_> = providers
            .iter_mut()
            .map(|provider| {
                scope.spawn(|| {
                    provider.wait_for("string", "app/waved", json!("none"), json!("new"), Duration::from_secs(30))
                })
            })
            .collect();
        let seen: Vec<_> =
            waiters.into_iter().map(|waiter| waiter.join().expect("the waiter does not panic")).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pusher.join().expect("the pusher does not panic");
        seen.into_iter().collect()
    })?;
    let lead_ms = seen[later_index] - seen[canary_index];
    println!("{language}: the canary host's provider saw the change {lead_ms:.0} ms before the later wave's");
    assert!(lead_ms >= 1500.0, "the later wave's provider saw it {lead_ms:.0} ms after the canary's (bake 2 s)");
    Ok(())
}
