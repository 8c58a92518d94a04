//! `grapevine demo`: a cluster on loopback in one process, driven over real HTTP and QUIC.
//!
//! It makes a fresh CA and a certificate per node in a temp dir, starts the nodes, waits for
//! every node to see every other, sets a flag on the first node with waves 1, 50%, 100% and
//! a 2 s bake and shows when each node serves it (wave by wave); then puts a config value
//! with `--emergency` on the last node (every node at once). Last, a bad change: each node
//! runs a simulated application that pushes its request counts to the node (`POST
//! /v1/health`) and fails when the config it reads says `timeout_ms: 0`. The canary applies
//! it, its application fails, it reports the anomaly, the quorum is reached and the revert
//! reaches every node; the demo prints that timeline, then stops.
//!
//! `run(nodes)` starts 2 to 20 nodes (`DEMO_GOSSIP_INTERVAL_MS` = 200) with the push health source
//! (200 ms sample interval), and `Applications`: per node, every 100 ms, read the `payments` config
//! and push 50 requests to `POST /v1/health` (1 error every other push, all 50 failing while
//! `timeout_ms` is 0). The flag's bake is `DEMO_BAKE`; it reads each node's wave from `GET
//! /v1/rollouts/{generation}` and checks that all the state digests are equal. `bad_change` puts a
//! good `payments` value with `emergency=true`, then `{"timeout_ms": 0}` with waves `1,50%,100%`,
//! and checks that no node outside the canary applied it (`applied_here`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::auth::AuthSection;
use crate::client::CliError;
use crate::clock;
use crate::config::{Config, RawConfig};
use crate::daemon::{self, RunningNode};
use crate::health::HealthConfig;
use crate::tls;

/// Gossip interval of the demo cluster: short, so the cluster forms in about a second.
const DEMO_GOSSIP_INTERVAL_MS: u64 = 200;
/// How long the demo waits for the cluster to form or a change to arrive.
const DEMO_DEADLINE: Duration = Duration::from_secs(30);
/// Bake time of the demo's rollout: long enough to see the waves, short enough to wait for.
const DEMO_BAKE: &str = "2s";

struct Style {
    color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}

fn failed(context: &str) -> impl FnOnce(String) -> CliError + '_ {
    move |error| CliError::Failed(format!("demo: {context}: {error}"))
}

pub async fn run(nodes: usize) -> Result<(), CliError> {
    use std::io::IsTerminal;
    let style = Style { color: std::io::stdout().is_terminal() };
    let dir = tempfile::tempdir().map_err(|e| failed("temp dir")(e.to_string()))?;
    println!(
        "{}",
        style.bold(&format!("Grapevine demo: {nodes} nodes on loopback, gossip every {DEMO_GOSSIP_INTERVAL_MS} ms"))
    );
    println!("{}", style.dim(&format!("  certificates from a fresh CA and data in {}", dir.path().display())));

    let ca = dir.path().join("ca");
    tls::ca_init(&ca).map_err(|e| failed("ca init")(e.to_string()))?;
    let mut running: Vec<RunningNode> = Vec::new();
    let started = clock::now();
    for index in 1..=nodes {
        let name = format!("n{index}");
        let tls_dir = dir.path().join(&name).join("tls");
        tls::ca_issue(&ca, &name, &["127.0.0.1".parse().expect("an IP")], &[], &tls_dir)
            .map_err(|e| failed("ca issue")(e.to_string()))?;
        let raw = RawConfig {
            name: Some(name.clone()),
            listen: Some("127.0.0.1:0".into()),
            api: Some("127.0.0.1:0".into()),
            seeds: running.first().map(|first| vec![first.gossip_addr.to_string()]),
            data: Some(dir.path().join(&name).join("data")),
            tls: Some(tls_dir),
            gossip_interval_ms: Some(DEMO_GOSSIP_INTERVAL_MS),
            // The simulated applications push their counts.
            health: Some(HealthConfig { push: true, sample_interval_ms: Some(200), ..HealthConfig::default() }),
            // The demo's nodes listen on loopback for this process only: its own requests need
            // no token, and there is no admin socket to clean up.
            auth: Some(AuthSection {
                anonymous: Some("write".into()),
                socket: Some(PathBuf::new()),
                ..AuthSection::default()
            }),
            ..RawConfig::default()
        };
        let config = Config::try_from(raw).map_err(|e| failed("config")(e.to_string()))?;
        let node = daemon::start(config).await.map_err(|e| failed("start")(e.to_string()))?;
        println!("  {} {name}  gossip quic://{}  api http://{}", style.green("✓"), node.gossip_addr, node.api_addr);
        running.push(node);
    }
    let applications = Applications::start(&running);
    let result = show(&style, &running, started, &applications).await;
    applications.stop();
    println!("{}", style.dim("stopping the nodes..."));
    for node in running {
        node.stop().await;
    }
    result
}

async fn show(
    style: &Style,
    nodes: &[RunningNode],
    started: Instant,
    applications: &Applications,
) -> Result<(), CliError> {
    let http = reqwest::Client::new();
    let apis: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.api_addr)).collect();
    wait_formed(&http, &apis).await?;
    println!(
        "\n{} every node sees all {} members alive after {} ms",
        style.green("✓"),
        nodes.len(),
        clock::elapsed(started).as_millis()
    );

    let first = &apis[0];
    let command =
        format!("$ grapevine flag set new-checkout --on --waves 1,50%,100% --bake {DEMO_BAKE} --node {first}");
    println!("\n{}", style.bold(&command));
    let set = clock::now();
    let url = format!("{first}/v1/flags/new-checkout?waves=1,50%25,100%25&bake={DEMO_BAKE}");
    let answer = post(&http, &url, json!({"on": true})).await?;
    let generation = answer["generation"].as_str().unwrap_or_default().to_owned();
    println!(
        "  accepted as generation {} in {:.1} ms (stored durably on n1 before the reply; every node holds it within ms)",
        style.bold(&generation),
        clock::elapsed(set).as_secs_f64() * 1000.0
    );
    println!(
        "  {}",
        style.dim(&format!(
            "applied in waves: the canary first, each next wave once the one before reports healthy for {DEMO_BAKE}"
        ))
    );
    let rollout = get(&http, &format!("{first}/v1/rollouts/{generation}")).await?.unwrap_or_default();
    let mut waves = std::collections::BTreeMap::new();
    for wave in rollout["waves"].as_array().into_iter().flatten() {
        for member in wave["members"].as_array().into_iter().flatten() {
            waves.insert(member["name"].as_str().unwrap_or_default().to_owned(), wave["index"].as_u64().unwrap_or(0));
        }
    }
    watch_arrival(style, &http, nodes, "flags/new-checkout", &generation, set, &waves).await?;

    let last = apis.last().expect("at least two nodes");
    let last_name = &nodes.last().expect("at least two nodes").name;
    let value = json!({"requests_per_second": 500, "burst": 50});
    let command = format!("$ grapevine config put ratelimit --value '{value}' --emergency --node {last}");
    println!("\n{}", style.bold(&command));
    let put = clock::now();
    let url = format!("{last}/v1/config/ratelimit?emergency=true");
    let answer = post(&http, &url, json!({ "value": value })).await?;
    let generation = answer["generation"].as_str().unwrap_or_default().to_owned();
    println!(
        "  accepted as generation {} on {last_name} in {:.1} ms; --emergency: one wave, every node at once",
        style.bold(&generation),
        clock::elapsed(put).as_secs_f64() * 1000.0
    );
    watch_arrival(style, &http, nodes, "config/ratelimit", &generation, put, &Default::default()).await?;

    let mut digests = std::collections::BTreeSet::new();
    for api in &apis {
        let status = get(&http, &format!("{api}/v1/status")).await?.unwrap_or_default();
        digests.insert(status["state_digest"].as_str().unwrap_or("?").to_owned());
    }
    if digests.len() != 1 {
        return Err(failed("convergence")(format!("nodes report different state digests: {digests:?}")));
    }
    let digest = digests.into_iter().next().unwrap_or_default();
    println!("\n{} all {} nodes report the same applied-state digest {digest}", style.green("✓"), nodes.len());
    bad_change(style, &http, nodes, applications).await?;
    println!("\nNext: `grapevine ca init`, `grapevine ca issue`, `grapevine node` to run real nodes (see README.md).");
    Ok(())
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Option<Value>, CliError> {
    let response = http.get(url).send().await.map_err(|e| failed("request")(e.to_string()))?;
    if !response.status().is_success() {
        return Ok(None);
    }
    Ok(Some(response.json().await.map_err(|e| failed("response")(e.to_string()))?))
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Result<Value, CliError> {
    let response = http.post(url).json(&body).send().await.map_err(|e| failed("request")(e.to_string()))?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| failed("response")(e.to_string()))?;
    if !status.is_success() {
        return Err(failed("change refused")(answer.to_string()));
    }
    Ok(answer)
}

async fn wait_formed(http: &reqwest::Client, apis: &[String]) -> Result<(), CliError> {
    let deadline = clock::now() + DEMO_DEADLINE;
    loop {
        let mut formed = true;
        for api in apis {
            let status = get(http, &format!("{api}/v1/status")).await?.unwrap_or_default();
            let alive = status["members"].as_array().into_iter().flatten().filter(|m| m["alive"] == true).count();
            formed &= alive == apis.len();
        }
        if formed {
            return Ok(());
        }
        if clock::now() > deadline {
            return Err(failed("cluster")(format!("did not form within {DEMO_DEADLINE:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls every node until it serves `generation` at `path`, printing when each did.
async fn watch_arrival(
    style: &Style,
    http: &reqwest::Client,
    nodes: &[RunningNode],
    path: &str,
    generation: &str,
    since: Instant,
    waves: &std::collections::BTreeMap<String, u64>,
) -> Result<(), CliError> {
    // Poll every node at once, so each arrival time is its own.
    let mut waits = tokio::task::JoinSet::new();
    for node in nodes {
        let (http, name, generation) = (http.clone(), node.name.to_string(), generation.to_owned());
        let url = format!("http://{}/v1/{path}", node.api_addr);
        waits.spawn(async move {
            loop {
                if let Ok(Some(answer)) = get(&http, &url).await
                    && answer["generation"] == generation.as_str()
                {
                    return Ok((name, clock::elapsed(since), answer["value"].clone()));
                }
                if clock::elapsed(since) > DEMO_DEADLINE {
                    return Err(failed("propagation")(format!("{name} did not get {generation}")));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    let mut arrivals = Vec::new();
    for result in waits.join_all().await {
        arrivals.push(result?);
    }
    arrivals.sort_by_key(|(_, elapsed, _)| *elapsed);
    let slowest = arrivals.last().map(|(_, elapsed, _)| *elapsed).unwrap_or_default();
    for (name, elapsed, value) in &arrivals {
        let width = (elapsed.as_secs_f64() / slowest.as_secs_f64().max(1e-9) * 30.0).round() as usize;
        let wave = waves.get(name).map_or(String::new(), |wave| format!("wave {wave}  "));
        println!(
            "  {} {name:<4} {wave}serves {value} after {:>7.1} ms  {}",
            style.green("✓"),
            elapsed.as_secs_f64() * 1000.0,
            style.dim(&"█".repeat(width.max(1)))
        );
    }
    Ok(())
}

/// The config the simulated applications read; `timeout_ms: 0` makes every request fail.
const PAYMENTS: &str = "payments";

/// A simulated application on each node: every 100 ms it reads `payments` from its node, serves
/// 50 requests (all failing while `timeout_ms` is 0, 1% otherwise) and pushes the counts.
struct Applications {
    /// When an application first failed because of the bad value.
    first_failure: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Applications {
    fn start(nodes: &[RunningNode]) -> Applications {
        let apis: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.api_addr)).collect();
        let first_failure = std::sync::Arc::new(std::sync::Mutex::new(None));
        let failed_at = first_failure.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = 0u64;
            loop {
                for api in &apis {
                    let config = get(&http, &format!("{api}/v1/config/{PAYMENTS}")).await.ok().flatten();
                    let broken = config.is_some_and(|c| c["value"]["timeout_ms"] == 0);
                    tick += 1;
                    let errors = if broken { 50 } else { u64::from(tick.is_multiple_of(2)) };
                    if broken {
                        failed_at.lock().expect("demo lock").get_or_insert_with(clock::now);
                    }
                    let sample = json!({"requests": 50, "errors": errors, "latency_p99_ms": 20});
                    let _ = http.post(format!("{api}/v1/health")).json(&sample).send().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Applications { first_failure, task }
    }

    fn first_failure(&self) -> Option<Instant> {
        *self.first_failure.lock().expect("demo lock")
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Ships a bad change and prints how the cluster undoes it.
async fn bad_change(
    style: &Style,
    http: &reqwest::Client,
    nodes: &[RunningNode],
    applications: &Applications,
) -> Result<(), CliError> {
    let first = format!("http://{}", nodes[0].api_addr);
    let good = json!({"timeout_ms": 800});
    post(http, &format!("{first}/v1/config/{PAYMENTS}?emergency=true"), json!({ "value": good })).await?;
    for node in nodes {
        wait_for(&format!("{} to serve the good payments config", node.name), || {
            node.engine().view().state.config.contains_key(&PAYMENTS.parse::<grapevine_proto::Key>().expect("a key"))
        })
        .await?;
    }
    let bad = json!({"timeout_ms": 0});
    let command = format!("$ grapevine config put {PAYMENTS} --value '{bad}' --waves 1,50%,100% --bake {DEMO_BAKE}");
    println!("\n{}", style.bold(&command));
    println!("  {}", style.dim("a bad change: with timeout_ms 0 the application on a node fails every request"));
    let accepted = clock::now();
    let url = format!("{first}/v1/config/{PAYMENTS}?waves=1,50%25,100%25&bake={DEMO_BAKE}");
    let answer = post(http, &url, json!({ "value": bad })).await?;
    let generation: grapevine_proto::GenId = answer["generation"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| failed("bad change")(answer.to_string()))?;
    let rollout = get(http, &format!("{first}/v1/rollouts/{generation}")).await?.unwrap_or_default();
    let canary_name = rollout["waves"][0]["members"][0]["name"].as_str().unwrap_or_default().to_owned();
    let canary =
        nodes.iter().find(|n| n.name.as_str() == canary_name).ok_or_else(|| failed("canary")(canary_name.clone()))?;

    let mut timeline: Vec<(Duration, String)> =
        vec![(Duration::ZERO, format!("accepted as {generation} on {}", nodes[0].name))];
    let serves_bad = |node: &RunningNode| {
        node.engine()
            .view()
            .state
            .config
            .get(&PAYMENTS.parse::<grapevine_proto::Key>().expect("a key"))
            .is_some_and(|e| e.generation == generation)
    };
    wait_for("the canary to apply the bad change", || serves_bad(canary)).await?;
    timeline.push((clock::elapsed(accepted), format!("canary {canary_name} applied it")));
    wait_for("the canary's application to fail", || applications.first_failure().is_some()).await?;
    let first_failure = applications.first_failure().expect("just seen");
    timeline.push((first_failure - accepted, format!("the application on {canary_name} fails its first requests")));
    let canary_api = format!("http://{}", canary.api_addr);
    let rollout_url = format!("{canary_api}/v1/rollouts/{generation}");
    let deadline = clock::now() + DEMO_DEADLINE;
    loop {
        let status = get(http, &rollout_url).await?.unwrap_or_default();
        if status["anomaly_quorum"]["anomalous"].as_array().is_some_and(|a| !a.is_empty()) {
            let quorum = &status["anomaly_quorum"];
            timeline.push((
                clock::elapsed(accepted),
                format!("{canary_name} reports it anomalous: {}", status["judgement"].as_str().unwrap_or("")),
            ));
            timeline.push((
                clock::elapsed(accepted),
                format!(
                    "quorum: {} of {} nodes that applied it report an anomaly, {} needed",
                    quorum["anomalous"].as_array().map_or(0, Vec::len),
                    quorum["applied"],
                    quorum["needed"]
                ),
            ));
            break;
        }
        if clock::now() > deadline {
            return Err(failed("anomaly")(format!("{canary_name} never reported {generation} anomalous")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Each node applies the revert the moment it holds it: watch every node's view.
    let mut waits = tokio::task::JoinSet::new();
    for node in nodes {
        let (mut view, name, target) = (node.engine().watch(), node.name.to_string(), generation.clone());
        waits.spawn(async move {
            let reverted = tokio::time::timeout(DEMO_DEADLINE, view.wait_for(|v| v.reverted.contains(&target))).await;
            reverted
                .map(|_| (clock::elapsed(accepted), name))
                .map_err(|_| failed("revert")(format!("{target} not reverted")))
        });
    }
    let mut reverted = Vec::new();
    for result in waits.join_all().await {
        reverted.push(result?);
    }
    for (at, name) in &reverted {
        timeline.push((*at, format!("revert applied on {name}")));
    }
    timeline.sort_by_key(|(at, _)| *at);
    println!();
    for (at, event) in &timeline {
        println!("  {:>8.1} ms  {event}", at.as_secs_f64() * 1000.0);
    }
    let everywhere = reverted.iter().map(|(at, _)| *at).max().unwrap_or_default();
    let others: Vec<&str> = nodes.iter().filter(|n| n.name != canary.name).map(|n| n.name.as_str()).collect();
    for node in nodes.iter().filter(|n| n.name != canary.name) {
        let status = get(http, &format!("http://{}/v1/rollouts/{generation}", node.api_addr)).await?;
        if status.is_none_or(|s| s["applied_here"] != false) {
            return Err(failed("revert")(format!("{} outside the canary applied the bad change", node.name)));
        }
    }
    println!(
        "\n{} reverted on every node {:.0} ms after the first failed request; {} never applied it",
        style.green("✓"),
        (everywhere - (first_failure - accepted)).as_secs_f64() * 1000.0,
        others.join(", ")
    );
    Ok(())
}

/// Polls `condition` every millisecond until it holds or the demo deadline passes.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> Result<(), CliError> {
    let deadline = clock::now() + DEMO_DEADLINE;
    while !condition() {
        if clock::now() > deadline {
            return Err(failed("waiting")(format!("{what} within {DEMO_DEADLINE:?}")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
