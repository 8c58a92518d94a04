//! The Kubernetes manifests (`deploy/kubernetes`) and the container build (`deploy/container`)
//! hold together and would be accepted where they run.
//!
//! - The base, each overlay, and an overlay with both components render with `kubectl
//!   kustomize`, and every core object validates strictly against the Kubernetes 1.32 schemas
//!   (`kubernetes-validate`, from PyPI). Without kubectl, the base's files are checked directly.
//! - cert-manager's `Issuer` and `Certificate` validate against a strict subset of its v1 API
//!   (`tests/fixtures/cert-manager-v1.schema.json`).
//! - The pod runs what the node accepts: the ConfigMap's `node.toml` and the container's flags
//!   make a `Config`, the mounts are where that config looks, and the probes, ports and seeds
//!   match what the node serves and reads; the certificate is each host's own.
//! - The Containerfile builds `target/release/grapevine` and the run stage ships it, non-root.
//!
//! A missing kubectl or Python prints a notice (a newcomer's machine passes); with
//! `GRAPEVINE_REQUIRE_DEPLOY_TOOLS=1` (CI) it fails instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use grapevine_node::config::{Config, RawConfig};
use serde::Deserialize;
use serde_json::{Value, json};

/// The Kubernetes release the manifests target, and the schemas of it that validate them.
const KUBERNETES_VERSION: &str = "1.32.0";
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.32.0";
/// Set (to anything) where kubectl and Python must be present: CI.
const REQUIRE_TOOLS: &str = "GRAPEVINE_REQUIRE_DEPLOY_TOOLS";
/// `SHUTDOWN_GRACE` in node/src/daemon.rs: how long a stopping node waits for its tasks.
const NODE_SHUTDOWN_GRACE_S: u64 = 5;
/// Measured RSS (deploy/kubernetes/README.md): idle, and holding 10,000 generations of 1 KiB.
const IDLE_RSS_MIB: f64 = 16.0;
const FULL_RETENTION_RSS_MIB: f64 = 90.0;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the repository root")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tool the test needs is absent: a notice on a newcomer's machine, a failure in CI.
fn tool_missing(what: &str) {
    assert!(std::env::var_os(REQUIRE_TOOLS).is_none(), "{REQUIRE_TOOLS} is set but {what}");
    eprintln!("notice: {what} (set {REQUIRE_TOOLS}=1 to make this an error)");
}

/// The documents of a YAML stream (separated by `---` lines, as kustomize writes them).
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else {
            documents.last_mut().unwrap().extend([line, "\n"]);
        }
    }
    (documents.iter())
        .map(|text| serde_yaml_ng::from_str::<Value>(text).unwrap_or_else(|e| panic!("YAML: {e}\n{text}")))
        .filter(|document| !document.is_null())
        .collect()
}

fn kubectl_present() -> bool {
    Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success())
}

/// `kubectl kustomize DIR`, as documents.
fn kustomize(dir: &Path) -> Vec<Value> {
    let output = Command::new("kubectl").arg("kustomize").arg(dir).output().expect("run kubectl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kubectl kustomize {} failed:\n{stderr}", dir.display());
    yaml_documents(&String::from_utf8(output.stdout).expect("UTF-8"))
}

/// What kustomize makes of a plain kustomization (resources, a namespace and ConfigMaps from
/// files), for machines without kubectl.
fn kustomize_by_hand(dir: &Path) -> Vec<Value> {
    let kustomization: Value = serde_yaml_ng::from_str(&read(&dir.join("kustomization.yaml"))).unwrap();
    let mut documents: Vec<Value> = Vec::new();
    for resource in kustomization["resources"].as_array().expect("resources") {
        documents.extend(yaml_documents(&read(&dir.join(resource.as_str().unwrap()))));
    }
    for generator in kustomization["configMapGenerator"].as_array().into_iter().flatten() {
        let data: serde_json::Map<String, Value> = (generator["files"].as_array().unwrap().iter())
            .map(|file| (file.as_str().unwrap().to_owned(), Value::from(read(&dir.join(file.as_str().unwrap())))))
            .collect();
        documents.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": generator["name"]}, "data": data}));
    }
    if let Some(namespace) = kustomization["namespace"].as_str() {
        for document in documents.iter_mut().filter(|d| d["kind"] != "Namespace") {
            document["metadata"]["namespace"] = json!(namespace);
        }
    }
    documents
}

/// Renders a kustomization made on the fly from `resources` and `components` (directories under
/// deploy/kubernetes); kustomize takes only relative paths, so they are made relative.
fn kustomize_composed(resources: &[&str], components: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let up: PathBuf = dir.path().canonicalize().unwrap().components().skip(1).map(|_| "..").collect();
    let kubernetes = up.join(repo().join("deploy/kubernetes").strip_prefix("/").unwrap());
    let list =
        |dirs: &[&str]| dirs.iter().map(|d| format!("  - {}\n", kubernetes.join(d).display())).collect::<String>();
    let text = format!("resources:\n{}components:\n{}", list(resources), list(components));
    std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
    kustomize(dir.path())
}

/// A Python 3 with kubernetes-validate, installed from PyPI if it is missing.
fn python_with_kubernetes_validate() -> Option<&'static str> {
    static PYTHON: OnceLock<Option<&'static str>> = OnceLock::new();
    *PYTHON.get_or_init(|| {
        let has_it = || Command::new("python3").args(["-c", "import kubernetes_validate"]).output();
        match has_it() {
            Err(_) => {
                tool_missing("python3 is not installed: no validation against the Kubernetes schemas");
                return None;
            }
            Ok(output) if output.status.success() => return Some("python3"),
            Ok(_) => {}
        }
        eprintln!("installing {KUBERNETES_VALIDATE} with pip");
        let pip = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE])
            .output()
            .expect("run pip");
        if has_it().is_ok_and(|o| o.status.success()) {
            return Some("python3");
        }
        tool_missing(&format!(
            "`python3 -m pip install {KUBERNETES_VALIDATE}` failed, so no validation against the Kubernetes schemas: {}",
            String::from_utf8_lossy(&pip.stderr).trim()
        ));
        None
    })
}

/// Validates `documents` strictly against the Kubernetes schemas; the output on failure.
fn kubernetes_validate(label: &str, documents: &[Value]) -> Result<(), String> {
    let Some(python) = python_with_kubernetes_validate() else { return Ok(()) };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut files = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        let name = format!("{label}-{index}-{}-{}.json", document["kind"].as_str().unwrap(), name_of(document));
        let path = dir.path().join(name.replace('/', "_"));
        std::fs::write(&path, serde_json::to_string_pretty(document).unwrap()).unwrap();
        files.push(path);
    }
    let output: Output = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // An unknown kind or apiVersion is only a warning, and would leave the object unchecked.
    if output.status.success() && !text.contains("WARN") { Ok(()) } else { Err(text) }
}

fn name_of(document: &Value) -> &str {
    document["metadata"]["name"].as_str().unwrap_or("?")
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && name_of(d).starts_with(name))
        .unwrap_or_else(|| panic!("no {kind} {name} among {} objects", documents.len()))
}

/// MiB in a Kubernetes memory quantity (Ki, Mi, Gi), or millicores in a CPU quantity.
fn quantity(text: &str) -> f64 {
    let units = [("Ki", 1.0 / 1024.0), ("Mi", 1.0), ("Gi", 1024.0), ("m", 1.0)];
    for (suffix, scale) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().unwrap() * scale;
        }
    }
    text.parse::<f64>().map(|cores| cores * 1000.0).unwrap_or_else(|_| panic!("quantity {text}"))
}

/// The flags of `grapevine node`, from the binary's own help.
fn node_flags() -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_grapevine")).args(["node", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    help.split_whitespace()
        .filter(|word| word.starts_with("--"))
        .map(|word| word.trim_end_matches(',').to_owned())
        .collect()
}

/// The config the node would run with: `node.toml`, then the container's flags over it, as
/// `grapevine node` combines them; `$(VAR)` stands for the values the downward API gives.
fn node_config(node_toml: &str, args: &[String], env: &BTreeMap<&str, &str>) -> Config {
    let known = node_flags();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, node_toml).unwrap();
    let mut flags = RawConfig::default();
    assert_eq!(args.first().map(String::as_str), Some("node"), "the container runs `grapevine node`");
    let mut words = args.iter().skip(1).map(|a| expand(a, env));
    while let Some(word) = words.next() {
        let (flag, value) = match word.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), value.to_owned()),
            None => (word.clone(), words.next().unwrap_or_else(|| panic!("{word} has no value"))),
        };
        assert!(known.contains(&flag), "`grapevine node` has no flag {flag} (it has {known:?})");
        match flag.as_str() {
            "--config" | "--log-format" => {}
            "--name" => flags.name = Some(value),
            "--advertise" => flags.advertise = Some(value),
            "--listen" => flags.listen = Some(value),
            "--api" => flags.api = Some(value),
            "--seed" => flags.seeds.get_or_insert_with(Vec::new).push(value),
            "--gossip-interval-ms" => flags.gossip_interval_ms = Some(value.parse().expect("milliseconds")),
            other => panic!("the manifests use {other}: teach node_config what it sets"),
        }
    }
    let raw = RawConfig::from_file(&file).unwrap_or_else(|e| panic!("node.toml: {e}"));
    Config::try_from(raw.overlay(flags)).unwrap_or_else(|e| panic!("the node refuses this config: {e}"))
}

fn expand(word: &str, env: &BTreeMap<&str, &str>) -> String {
    env.iter().fold(word.to_owned(), |word, (name, value)| word.replace(&format!("$({name})"), value))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let mount = mounts.iter().find(|m| m["name"] == volume).unwrap_or_else(|| panic!("no mount of {volume}"));
    mount["mountPath"].as_str().unwrap()
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    let volumes = pod["volumes"].as_array().expect("volumes");
    volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"))
}

fn container_port(container: &Value, name: &str) -> u16 {
    let ports = container["ports"].as_array().expect("ports");
    let port = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no port {name}"));
    port["containerPort"].as_u64().unwrap() as u16
}

/// Hardening every container of the pod keeps, and the one capability the data-owner may add.
fn check_security(label: &str, pod: &Value) {
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{label}: seccomp");
    assert_eq!(pod["automountServiceAccountToken"], false, "{label}: no service account token");
    let containers = pod["containers"].as_array().unwrap().iter();
    for container in containers.chain(pod["initContainers"].as_array().into_iter().flatten()) {
        let context = &container["securityContext"];
        let name = &container["name"];
        assert_eq!(context["allowPrivilegeEscalation"], false, "{label}: {name} may escalate");
        assert_eq!(context["readOnlyRootFilesystem"], true, "{label}: {name} has a writable root");
        assert_eq!(strings(&context["capabilities"]["drop"]), ["ALL"], "{label}: {name} keeps capabilities");
        let added = strings(&context["capabilities"]["add"]);
        assert!(added.is_empty() || added == ["CHOWN"], "{label}: {name} adds {added:?}");
        if *name == "grapevine" {
            let user = context["runAsUser"].as_u64().or(pod["securityContext"]["runAsUser"].as_u64());
            assert_eq!(context["runAsNonRoot"], true, "{label}: the node must run as non-root");
            assert_ne!(user, Some(0), "{label}: the node runs as root");
        }
    }
}

/// Requests and limits hold the measured figures, and requests fit in limits.
fn check_resources(label: &str, container: &Value) {
    let get = |bound: &str, resource: &str| {
        let text = container["resources"][bound][resource].as_str();
        quantity(text.unwrap_or_else(|| panic!("{label}: no {bound}.{resource}")))
    };
    let (memory_request, memory_limit) = (get("requests", "memory"), get("limits", "memory"));
    let (cpu_request, cpu_limit) = (get("requests", "cpu"), get("limits", "cpu"));
    assert!(memory_request >= 2.0 * IDLE_RSS_MIB, "{label}: memory request {memory_request} MiB < 2 x idle RSS");
    assert!(
        memory_limit >= 1.5 * FULL_RETENTION_RSS_MIB,
        "{label}: memory limit {memory_limit} MiB leaves no room over the default retention's RSS"
    );
    assert!(memory_request <= memory_limit && cpu_request <= cpu_limit, "{label}: a request exceeds its limit");
}

/// The node's own view of the pod: its config, mounts, probes, ports, seeds and Secret keys.
fn check_workload(label: &str, documents: &[Value]) {
    let daemonset = find(documents, "DaemonSet", "grapevine");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "grapevine");
    assert_eq!(strings(&container["command"]), ["/usr/local/bin/grapevine"], "{label}: the image's binary");
    check_security(label, pod);
    check_resources(label, container);

    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= 2 * NODE_SHUTDOWN_GRACE_S, "{label}: {grace} s does not cover the node's own 5 s grace");
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 0, "{label}: two pods of one node would fight over the store's lock");

    let config = pod_config(label, documents, pod, container);
    check_mounts(label, pod, container, &config);
    check_network(label, pod, container, &config);
    check_seeds(label, documents, &config, &daemonset["spec"]["selector"]["matchLabels"]);
    let budget = &find(documents, "PodDisruptionBudget", "grapevine")["spec"];
    assert!(budget["minAvailable"].is_u64(), "{label}: a DaemonSet's budget takes only an integer minAvailable");
    assert!(budget["maxUnavailable"].is_null(), "{label}: maxUnavailable is refused for DaemonSet pods");
}

/// What the node reads: node.toml from the ConfigMap, under the container's flags.
fn pod_config(label: &str, documents: &[Value], pod: &Value, container: &Value) -> Config {
    let args = strings(&container["args"]);
    let config_path = args.iter().skip_while(|a| *a != "--config").nth(1).expect("--config");
    let configmap = find(documents, "ConfigMap", "grapevine-config");
    let mut node_toml = configmap["data"]["node.toml"].as_str().expect("node.toml in the ConfigMap").to_owned();
    if args.contains(&"--name".to_owned()) {
        assert_eq!(Path::new(config_path), Path::new(mount_path(container, "config")).join("node.toml"));
    } else {
        // components/derived-name: an init container writes the config with the name first.
        let writer = pod["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "node-name");
        let writer = writer.unwrap_or_else(|| panic!("{label}: no --name and no init container naming the node"));
        assert!(writer["command"][2].as_str().unwrap().contains(config_path.as_str()), "{label}: {config_path}");
        node_toml = format!("name = \"derived\"\n{node_toml}");
    }
    for (variable, field) in [("NODE_NAME", "spec.nodeName"), ("POD_IP", "status.podIP")] {
        let vars = container["env"].as_array().unwrap();
        let var = vars.iter().find(|v| v["name"] == variable);
        if args.iter().any(|a| a.contains(&format!("$({variable})"))) {
            assert_eq!(var.expect(variable)["valueFrom"]["fieldRef"]["fieldPath"], field, "{label}: {variable}");
        }
    }
    let env: BTreeMap<&str, &str> = [("NODE_NAME", "kind-worker"), ("POD_IP", "10.244.1.7")].into();
    let config = node_config(&node_toml, &args, &env);
    assert_eq!(config.advertised().to_string(), "10.244.1.7:7400", "{label}: peers dial the pod IP");
    config
}

/// The config's `tls` is the host's own certificate directory (one certificate per node, naming
/// it: a shared Secret would make peers refuse every node's reports); `data` is the hostPath.
fn check_mounts(label: &str, pod: &Value, container: &Value, config: &Config) {
    assert_eq!(config.tls, Path::new(mount_path(container, "tls")), "{label}: the node's tls is the host's");
    let tls = &volume(pod, "tls")["hostPath"];
    assert_eq!(tls["path"], "/etc/grapevine/tls", "{label}: each host's own certificate, not a shared Secret");
    assert_eq!(tls["type"], "Directory", "{label}: a host without its certificate must not start an empty directory");
    assert_eq!(config.data, Path::new(mount_path(container, "data")), "{label}: the store is the data volume");
    assert_eq!(volume(pod, "data")["hostPath"]["path"], "/var/lib/grapevine", "{label}: hostPath store");
}

/// Ports are the ones the node listens on; probes reach the API where it listens.
fn check_network(label: &str, pod: &Value, container: &Value, config: &Config) {
    assert_eq!(config.listen.port(), container_port(container, "gossip"), "{label}: gossip port");
    assert_eq!(config.api.port(), container_port(container, "api"), "{label}: API port");
    let host_network = pod["hostNetwork"] == true;
    let api_host = if host_network { Some("127.0.0.1") } else { None };
    if host_network {
        assert!(config.api.ip().is_loopback(), "{label}: host networking must keep the API on loopback");
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{label}: seeds resolve by cluster DNS");
    }
    for (probe, path) in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!((get["path"].as_str(), get["port"].as_str()), (Some(path), Some("api")), "{label}: {probe}");
        assert_eq!(get["host"].as_str(), api_host, "{label}: {probe} host");
    }
}

/// The node's only seed is the headless Service over every grapevine pod, ready or not.
fn check_seeds(label: &str, documents: &[Value], config: &Config, selector: &Value) {
    assert_eq!(config.seeds.len(), 1, "{label}: {:?}", config.seeds);
    let (host, port) = config.seeds[0].rsplit_once(':').unwrap();
    let service = find(documents, "Service", host);
    assert_eq!(name_of(service), host, "{label}: the seed names the Service");
    let spec = &service["spec"];
    assert_eq!(spec["clusterIP"], "None", "{label}: the seed Service must be headless");
    assert_eq!(spec["publishNotReadyAddresses"], true, "{label}: peers must find each other before ready");
    assert_eq!(&spec["selector"], selector, "{label}: the seed Service selects the DaemonSet's pods");
    let ports = spec["ports"].as_array().unwrap();
    let gossip = ports.iter().any(|p| p["port"].as_u64() == port.parse().ok() && p["protocol"] == "UDP");
    assert!(gossip, "{label}: the seed Service has no UDP port {port}: {ports:?}");
    assert_eq!(find(documents, "ServiceAccount", "grapevine")["automountServiceAccountToken"], false);
}

#[test]
fn base_and_overlays_render_validate_and_run_what_the_node_accepts() {
    let kubernetes = repo().join("deploy/kubernetes");
    if !kubectl_present() {
        tool_missing(
            "kubectl is not installed: the overlays are not rendered; the base's files are checked as they are",
        );
        let documents = kustomize_by_hand(&kubernetes.join("base"));
        check_workload("base (by hand)", &documents);
        kubernetes_validate("base", &documents).unwrap_or_else(|e| panic!("base: {e}"));
        return;
    }
    let mut rendered: Vec<(String, Vec<Value>)> = ["base", "overlays/small", "overlays/large"]
        .iter()
        .map(|dir| (dir.to_string(), kustomize(&kubernetes.join(dir))))
        .collect();
    let components = ["components/derived-name", "components/host-network"];
    rendered.push(("small+components".into(), kustomize_composed(&["overlays/small"], &components)));
    for (label, documents) in &rendered {
        check_workload(label, documents);
        let label = label.replace('/', "-");
        kubernetes_validate(&label, documents).unwrap_or_else(|e| panic!("{label} fails the 1.32 schemas:\n{e}"));
    }
    let args = |documents: &[Value]| {
        strings(&find(documents, "DaemonSet", "grapevine")["spec"]["template"]["spec"]["containers"][0]["args"])
    };
    assert_ne!(args(&rendered[1].1), args(&rendered[2].1), "small and large set different gossip intervals");

    // The validation can fail: a misspelt field in the DaemonSet is refused.
    let mut bad = rendered[0].1.clone();
    let daemonset = bad.iter_mut().find(|d| d["kind"] == "DaemonSet").unwrap();
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = json!(5);
    if python_with_kubernetes_validate().is_some() {
        let error = kubernetes_validate("misspelt", &bad).expect_err("a misspelt field must fail validation");
        assert!(error.contains("periodSecond"), "{error}");
    }
}

#[test]
fn cert_manager_resources_follow_its_v1_api_and_make_one_certificate_per_node() {
    let kubernetes = repo().join("deploy/kubernetes");
    let (documents, workload) = if kubectl_present() {
        (kustomize(&kubernetes.join("cert-manager")), kustomize(&kubernetes.join("base")))
    } else {
        (kustomize_by_hand(&kubernetes.join("cert-manager")), kustomize_by_hand(&kubernetes.join("base")))
    };
    let schema: Value =
        serde_json::from_str(&read(&repo().join("node/tests/fixtures/cert-manager-v1.schema.json"))).unwrap();
    jsonschema::meta::validate(&schema).expect("the fixture is a valid JSON Schema");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors = |document: &Value| {
        validator.iter_errors(document).map(|e| format!("{}: {e}", e.instance_path)).collect::<Vec<_>>()
    };
    for document in &documents {
        let found = errors(document);
        assert!(
            found.is_empty(),
            "{} {} breaks cert-manager's v1 API: {found:#?}",
            document["kind"],
            name_of(document)
        );
    }
    // One Certificate per node, as node-certificates.sh prints them.
    let script = kubernetes.join("cert-manager/node-certificates.sh");
    let printed = Command::new("sh").arg(&script).args(["kind-worker", "kind-worker2"]).output().unwrap();
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let nodes: Vec<Value> = serde_yaml_ng::Deserializer::from_str(std::str::from_utf8(&printed.stdout).unwrap())
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect();
    assert_eq!(nodes.len(), 2);
    for document in &nodes {
        let found = errors(document);
        assert!(found.is_empty(), "{} breaks cert-manager's v1 API: {found:#?}", name_of(document));
    }
    // The schema can fail: a misspelt field and a key size ECDSA does not have are refused.
    let mut bad = nodes[0].clone();
    bad["spec"]["secretNme"] = json!("x");
    bad["spec"]["privateKey"]["size"] = json!(2048);
    let found = errors(&bad).join("\n");
    assert!(found.contains("secretNme") && found.contains("2048"), "the schema let a bad Certificate through: {found}");

    // The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> node Certificate -> Secret.
    let ca = find(&documents, "Certificate", "grapevine-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    find(&documents, "Issuer", ca["spec"]["issuerRef"]["name"].as_str().unwrap());
    let node = &nodes[0];
    assert_eq!(node["spec"]["dnsNames"], json!(["kind-worker"]), "a node's certificate names the node");
    assert_eq!(node["spec"]["secretName"], "grapevine-tls-kind-worker");
    let issuer = find(&documents, "Issuer", node["spec"]["issuerRef"]["name"].as_str().unwrap());
    assert_eq!(issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"], "the node's issuer signs with the CA");
    let usages = strings(&node["spec"]["usages"]);
    for usage in ["server auth", "client auth"] {
        assert!(usages.contains(&usage.to_owned()), "each peer is a TLS server and client: {usage} is missing");
    }
    let namespace = |docs: &[Value]| docs.iter().map(|d| d["metadata"]["namespace"].clone()).find(|n| !n.is_null());
    assert_eq!(namespace(&documents), namespace(&workload), "the Issuer must be in the pods' namespace");
}

#[test]
fn derived_node_names_follow_the_node_name_rule() {
    let path = repo().join("deploy/kubernetes/components/derived-name/kustomization.yaml");
    let component: Value = serde_yaml_ng::from_str(&read(&path)).unwrap();
    let ops: Value = serde_yaml_ng::from_str(component["patches"][0]["patch"].as_str().unwrap()).unwrap();
    let init = ops.as_array().unwrap().iter().find(|op| op["value"]["name"] == "node-name").expect("node-name");
    let script = init["value"]["command"][2].as_str().unwrap();
    let node_toml = read(&repo().join("deploy/kubernetes/base/node.toml"));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (input, output) = (dir.path().join("in.toml"), dir.path().join("out.toml"));
    std::fs::write(&input, &node_toml).unwrap();
    let script = script
        .replace("/etc/grapevine/config/node.toml", input.to_str().unwrap())
        .replace("/run/grapevine/node.toml", output.to_str().unwrap());
    let cases = [
        ("kind-worker", "kind-worker"),
        ("node_7", "node_7"),
        ("ip-10-0-1-23.eu-west-1.compute.internal", "ip-10-0-1-23-eu-west-1--817c4901"),
        ("aks-nodepool1-12345678-vmss000000", "aks-nodepool1-12345678--0d95e483"),
        ("aks-nodepool1-12345678-vmss000001", "aks-nodepool1-12345678--3604dd57"),
    ];
    let env: BTreeMap<&str, &str> = [("POD_IP", "10.244.1.7")].into();
    for (node_name, expected) in cases {
        let run = Command::new("sh").args(["-c", &script]).env("NODE_NAME", node_name).output().expect("run sh");
        assert!(run.status.success(), "{node_name}: {}", String::from_utf8_lossy(&run.stderr));
        let written = read(&output);
        let config = node_config(&written, &["node".into(), "--advertise".into(), "$(POD_IP):7400".into()], &env);
        assert_eq!(config.name.to_string(), expected, "the name derived from {node_name}");
    }
}

/// Instructions of a Containerfile: (line, KEYWORD, arguments), continuation lines joined.
fn instructions(text: &str) -> Vec<(usize, String, String)> {
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "MAINTAINER",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    ];
    let mut parsed = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue; // comments (and parser directives) end no instruction
        }
        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        joined.push_str(trimmed.trim_end_matches('\\').trim_end());
        if trimmed.ends_with('\\') {
            pending = Some((start, joined + " "));
            continue;
        }
        let (keyword, arguments) = joined.split_once(char::is_whitespace).unwrap_or((&joined, ""));
        assert!(KNOWN.contains(&keyword), "Containerfile line {start}: unknown instruction {keyword:?}");
        parsed.push((start, keyword.to_owned(), arguments.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    assert!(pending.is_none(), "the Containerfile ends in a continuation line");
    parsed
}

/// The value of `key = "value"` in `[section]` of a Cargo manifest.
fn manifest_value(manifest: &str, section: &str, key: &str) -> String {
    let mut in_section = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == section;
        } else if let Some((_, value)) = line.split_once('=').filter(|(k, _)| in_section && k.trim() == key) {
            return value.trim().trim_matches('"').to_owned();
        }
    }
    panic!("no {key} in {section}")
}

#[test]
fn the_containerfile_builds_and_ships_the_release_binary_as_non_root() {
    let bin = manifest_value(&read(&repo().join("node/Cargo.toml")), "[[bin]]", "name");
    assert_eq!(bin, "grapevine", "grapevine-node's binary; cargo build --release makes target/release/{bin}");
    let rust_version = manifest_value(&read(&repo().join("Cargo.toml")), "[workspace.package]", "rust-version");
    let parsed = instructions(&read(&repo().join("deploy/container/Containerfile")));
    let stages: Vec<&[(usize, String, String)]> = {
        let starts: Vec<usize> = (0..parsed.len()).filter(|&i| parsed[i].1 == "FROM").collect();
        assert_eq!(starts.first(), Some(&0), "the Containerfile starts with FROM");
        starts.iter().zip(starts.iter().skip(1).chain([&parsed.len()])).map(|(&a, &b)| &parsed[a..b]).collect()
    };
    assert_eq!(stages.len(), 2, "a build stage and a run stage");
    let (build, run) = (stages[0], stages[1]);
    let from: Vec<&str> = build[0].2.split(' ').collect();
    let [image, as_keyword, stage] = from[..] else { panic!("the build stage must be named: FROM IMAGE AS NAME") };
    assert!(as_keyword.eq_ignore_ascii_case("as"));
    let tag = image.strip_prefix("docker.io/library/rust:").or(image.strip_prefix("rust:"));
    let tag = tag.unwrap_or_else(|| panic!("the build stage uses the official Rust image, not {image}"));
    assert!(
        tag.starts_with(&format!("{rust_version}-")),
        "Rust {rust_version} (the workspace's rust-version), got {tag}"
    );
    let find_in = |stage: &[(usize, String, String)], keyword: &str| -> Vec<String> {
        stage.iter().filter(|i| i.1 == keyword).map(|i| i.2.clone()).collect()
    };
    let workdir = find_in(build, "WORKDIR").pop().expect("a WORKDIR in the build stage");
    let builds = find_in(build, "RUN");
    assert!(
        builds.iter().any(|r| r.contains("cargo build --release --locked -p grapevine-node")
            && r.contains(&format!("strip target/release/{bin}"))),
        "the build stage must run `cargo build --release --locked -p grapevine-node` and strip the binary: {builds:?}"
    );

    let base = &run[0].2;
    let debian = [("bookworm", "debian12"), ("trixie", "debian13")].iter().find(|(codename, _)| tag.contains(codename));
    let (_, release) = debian.unwrap_or_else(|| panic!("the build image names its Debian release: {tag}"));
    assert!(base.contains(release), "the run stage ({base}) must be the build stage's Debian ({release}): glibc");
    let copy = format!("--from={stage} {workdir}/target/release/{bin} /usr/local/bin/{bin}");
    assert!(find_in(run, "COPY").contains(&copy), "the run stage must COPY {copy}");
    let user = find_in(run, "USER").pop().expect("a USER in the run stage");
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "the run stage runs as {user}, not as a non-root user");
    assert_eq!(find_in(run, "ENTRYPOINT"), [format!("[\"/usr/local/bin/{bin}\"]")]);

    let ignored: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(ignored.contains(&"target".to_owned()), "the build context must leave out target/");
    for needed in ["Cargo.toml", "Cargo.lock", "node", "proto", "cluster-tests"] {
        assert!(!ignored.iter().any(|l| l == needed), ".dockerignore leaves out {needed}, which the build needs");
    }
}
