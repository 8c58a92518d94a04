//! The real flagd providers (Python `openfeature-provider-flagd`, JavaScript
//! `@openfeature/flagd-provider`), run as child processes by the drivers in
//! `cluster-tests/providers/` and spoken to line by line in JSON: what the provider tests, the
//! testbed runner and the benchmarks use.
//!
//! `.ci/run` installs both (pinned). Elsewhere a missing provider skips its test with a loud
//! notice, unless `GRAPEVINE_REQUIRE_PROVIDERS=1` (which `.ci/run` sets) makes it a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// How long one driver command may take: the longest waits a test asks for, and a margin.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A provider's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
        })
    }
}

/// How a provider reaches the node: the evaluation service, or the sync service and its own
/// evaluator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Rpc,
    InProcess,
    /// The same language's OFREP provider against the node's API port (for comparison).
    Ofrep,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Rpc => "rpc",
            Mode::InProcess => "in-process",
            Mode::Ofrep => "ofrep",
        }
    }
}

/// Options of a provider beyond its mode and port.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub selector: Option<String>,
    /// Python only: the JavaScript provider has no call credentials.
    pub token: Option<String>,
    /// A CA certificate: the provider speaks TLS and checks the node's certificate with it.
    pub tls_ca: Option<PathBuf>,
    /// The name the node's certificate is issued for.
    pub authority: Option<String>,
    /// The rpc provider's cache: `lru` (the providers' default) or `disabled`.
    pub cache: Option<String>,
    /// Seconds a provider reports stale before error when its stream breaks (default 5).
    pub grace_s: Option<u64>,
}

fn providers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("providers")
}

/// Whether a missing provider fails (`GRAPEVINE_REQUIRE_PROVIDERS=1`) or skips.
pub fn required() -> bool {
    std::env::var("GRAPEVINE_REQUIRE_PROVIDERS").is_ok_and(|v| v == "1")
}

/// Whether `language`'s provider is installed; when it is not, says so loudly, or fails where
/// providers are required.
pub fn available(language: Language) -> Result<bool> {
    let (found, install) = match language {
        Language::Python => {
            let probe = Command::new("python3")
                .args(["-c", "import openfeature.contrib.provider.flagd"])
                .stderr(Stdio::null())
                .status();
            (probe.is_ok_and(|s| s.success()), "python3 -m pip install openfeature-provider-flagd==0.6.1")
        }
        Language::JavaScript => {
            let installed = providers_dir().join("js/node_modules/@openfeature/flagd-provider").is_dir();
            let node = Command::new("node").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
            (installed && node, "npm ci --prefix cluster-tests/providers/js")
        }
    };
    if found {
        return Ok(true);
    }
    if required() {
        bail!("the {language} flagd provider is not installed (GRAPEVINE_REQUIRE_PROVIDERS=1): {install}");
    }
    eprintln!("\n*** SKIPPED: the {language} flagd provider is not installed; install it with `{install}` ***\n");
    Ok(false)
}

/// A provider event (`PROVIDER_READY`, `PROVIDER_CONFIGURATION_CHANGED`, `PROVIDER_STALE`,
/// `PROVIDER_ERROR`), when it came, and the flags a change named.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub at_ms: u64,
    pub flags: Vec<String>,
}

/// A running provider behind its driver.
pub struct Provider {
    pub language: Language,
    pub mode: Mode,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Provider {
    /// Starts `language`'s provider in `mode` against `port` on loopback and waits until it is
    /// ready (its first configuration or event stream came).
    pub fn start(language: Language, mode: Mode, port: u16, options: &Options) -> Result<Provider> {
        let mut command = match language {
            Language::Python => {
                let mut command = Command::new("python3");
                command.arg(providers_dir().join("python/driver.py"));
                command
            }
            Language::JavaScript => {
                let mut command = Command::new("node");
                command.arg(providers_dir().join("js/driver.mjs"));
                command
            }
        };
        command.args(["--mode", mode.as_str(), "--port", &port.to_string()]);
        if let Some(selector) = &options.selector {
            command.args(["--selector", selector]);
        }
        if let Some(token) = &options.token {
            command.args(["--token", token]);
        }
        if let Some(ca) = &options.tls_ca {
            command.arg("--tls-ca").arg(ca);
        }
        if let Some(authority) = &options.authority {
            command.args(["--authority", authority]);
        }
        if let Some(cache) = &options.cache {
            command.args(["--cache", cache]);
        }
        if let Some(grace) = options.grace_s {
            command.args(["--grace", &grace.to_string()]);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut provider = Provider { language, mode, child, stdin, lines };
        let ready =
            provider.read().with_context(|| format!("the {language} provider ({}) did not start", mode.as_str()))?;
        anyhow::ensure!(ready["ready"] == true, "the {language} provider said {ready}");
        Ok(provider)
    }

    fn read(&mut self) -> Result<Value> {
        let line = self.lines.recv_timeout(COMMAND_TIMEOUT).context("no answer from the provider's driver")?;
        serde_json::from_str(&line).with_context(|| format!("the driver printed {line:?}"))
    }

    /// Sends one command and returns the driver's answer.
    pub fn call(&mut self, command: Value) -> Result<Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        let answer = self.read()?;
        if let Some(failed) = answer.get("failed") {
            bail!("the {} provider ({}) failed {command}: {failed}", self.language, self.mode.as_str());
        }
        Ok(answer)
    }

    /// Evaluates `key` as `kind` (boolean, string, integer, float, object).
    pub fn eval(&mut self, kind: &str, key: &str, default: Value, context: Value) -> Result<Value> {
        self.call(json!({"op": "eval", "type": kind, "key": key, "default": default, "context": context}))
    }

    /// Evaluates in a tight loop until the value is `value`; the Unix time in ms it was first
    /// seen, or an error after `timeout`.
    pub fn wait_for(&mut self, kind: &str, key: &str, default: Value, value: Value, timeout: Duration) -> Result<f64> {
        let command = json!({"op": "wait", "type": kind, "key": key, "default": default, "context": {},
                             "value": value, "timeout_ms": timeout.as_millis() as u64});
        let answer = self.call(command)?;
        anyhow::ensure!(
            answer["ok"] == true,
            "the {} provider ({}) never saw {key} = {value}: {answer}",
            self.language,
            self.mode.as_str()
        );
        answer["seen_at_ms"].as_f64().context("seen_at_ms")
    }

    /// The provider's events so far, in order.
    pub fn events(&mut self) -> Result<Vec<Event>> {
        let answer = self.call(json!({"op": "events"}))?;
        let events = answer["events"].as_array().context("events")?;
        Ok(events
            .iter()
            .filter_map(|e| {
                let flags = e[2].as_array().map(|f| f.iter().filter_map(|k| Some(k.as_str()?.to_owned())).collect());
                Some(Event { name: e[0].as_str()?.to_owned(), at_ms: e[1].as_u64()?, flags: flags.unwrap_or_default() })
            })
            .collect())
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unix time now, in ms, as the drivers report it.
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Opens the flagd services of `node` on free ports, with anonymous reads (the JavaScript
/// provider has no call credentials); returns the evaluation and sync ports.
pub fn with_flagd(node: &mut crate::Node) -> (u16, u16) {
    let (evaluation, sync) = (crate::free_port(false), crate::free_port(false));
    node.config_toml.push_str(&format!(
        "\n[auth]\nanonymous = \"read\"\n[flagd]\nevaluation = \"127.0.0.1:{evaluation}\"\nsync = \"127.0.0.1:{sync}\"\n"
    ));
    (evaluation, sync)
}
