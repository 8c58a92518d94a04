//! `deploy/systemd/`: the unit passes `systemd-analyze verify` without a warning and keeps its
//! exposure score, keeps its hardening, runs the daemon command the built binary accepts, is
//! restarted only on failures a retry can fix, and agrees with the sysusers and tmpfiles files
//! on the user and the directories.
//!
//! The checks that run systemd's tools (`systemd-analyze`, `systemd-sysusers`,
//! `systemd-tmpfiles`, all in Debian's `systemd` package) need none of systemd running. Where a
//! tool is missing they print a notice to stderr and only the static checks run.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The unit's exposure as `systemd-analyze security --offline=true` rates it: 1.2 "OK" with
/// systemd 252. Loosening a setting raises it and fails the test; tightening one lowers it, and
/// this should follow.
const MAX_EXPOSURE: f64 = 1.2;

/// The unit's command, which `deploy/systemd/README.md` and docs/operations.md name.
const EXEC_START: &str = "/usr/local/bin/grapevine node --config /etc/grapevine/node.toml";

/// Settings in `[Service]` that the sandbox and the restart policy rest on, with their values.
const SERVICE_SETTINGS: &[(&str, &str)] = &[
    ("Type", "exec"),
    ("KillSignal", "SIGTERM"),
    ("TimeoutStopSec", "15s"),
    ("Restart", "on-failure"),
    ("RestartSec", "5s"),
    ("RestartPreventExitStatus", "2"),
    ("LimitNOFILE", "65536"),
    ("StateDirectoryMode", "0700"),
    ("UMask", "0077"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "true"),
    ("PrivateTmp", "true"),
    ("PrivateDevices", "true"),
    ("PrivateMounts", "true"),
    ("ProtectProc", "invisible"),
    ("ProtectKernelTunables", "true"),
    ("ProtectKernelModules", "true"),
    ("ProtectKernelLogs", "true"),
    ("ProtectControlGroups", "true"),
    ("ProtectClock", "true"),
    ("ProtectHostname", "true"),
    ("NoNewPrivileges", "true"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "true"),
    ("RestrictRealtime", "true"),
    ("RestrictSUIDSGID", "true"),
    ("LockPersonality", "true"),
    ("MemoryDenyWriteExecute", "true"),
    ("RemoveIPC", "true"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallErrorNumber", "EPERM"),
];

fn deploy_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd").join(file)
}

fn deploy(file: &str) -> String {
    let path = deploy_path(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A unit file's `key=value` settings as (section, key, value), in file order.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut section = String::new();
        let mut settings = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(!line.ends_with('\\'), "continued lines are not parsed here: {line}");
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else {
                let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
                settings.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Unit(settings)
    }

    fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
    }

    /// The value systemd uses for a single-valued setting: the last one.
    fn value(&self, section: &str, key: &str) -> Option<&str> {
        self.values(section, key).pop()
    }
}

/// The fields of the first line of a sysusers.d or tmpfiles.d file that starts with `kind`;
/// a quoted field (a sysusers GECOS) is one field.
fn entry(text: &str, kind: &str, name: &str) -> Vec<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.starts_with('#'));
    let line = lines
        .find(|l| l.split_whitespace().take(2).eq([kind, name]))
        .unwrap_or_else(|| panic!("no `{kind} {name}` line in:\n{text}"));
    let mut fields = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        rest = &rest[start..];
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').expect("closing quote") + 2
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        fields.push(rest[..end].trim_matches('"').to_owned());
        rest = &rest[end..];
    }
    fields
}

/// Runs one of systemd's tools, at log level notice (an inherited `SYSTEMD_LOG_LEVEL=debug`
/// would add lines that name the unit), or None with a notice when it is not installed.
fn systemd_tool<I: AsRef<OsStr>>(program: &str, args: impl IntoIterator<Item = I>) -> Option<Output> {
    let output = Command::new(program)
        .args(args)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output();
    match output {
        Ok(output) => Some(output),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("NOTICE: {program} is not installed (Debian: apt-get install systemd); skipping its checks");
            None
        }
        Err(error) => panic!("cannot run {program}: {error}"),
    }
}

/// Copies the unit into `dir` as `grapevine.service`, its command pointed at the binary this
/// test built (verify refuses a command that does not exist), with `extra` appended and with
/// `drop_in` as `grapevine.service.d/files.conf` when given.
fn stage_unit(dir: &Path, extra: &str, drop_in: Option<&str>) -> PathBuf {
    let binary = env!("CARGO_BIN_EXE_grapevine");
    assert!(!binary.contains(char::is_whitespace), "the unit's command cannot name {binary} unquoted");
    let unit = deploy("grapevine.service");
    let from = "ExecStart=/usr/local/bin/grapevine ";
    assert_eq!(unit.matches(from).count(), 1, "one ExecStart of /usr/local/bin/grapevine");
    let unit = unit.replace(from, &format!("ExecStart={binary} ")) + extra;
    let path = dir.join("grapevine.service");
    std::fs::write(&path, unit).unwrap();
    if let Some(drop_in) = drop_in {
        std::fs::create_dir(dir.join("grapevine.service.d")).unwrap();
        std::fs::write(dir.join("grapevine.service.d/files.conf"), drop_in).unwrap();
    }
    path
}

/// The lines of `systemd-analyze verify` about the staged unit or its drop-in, or None when
/// the tool is missing. Lines about other units (the host's, loaded as dependencies of
/// network-online.target and multi-user.target) are printed, not returned: they are not this
/// unit's to fix. In a container without systemd as PID 1 (systemd 252, Docker, root or not)
/// verify prints nothing else at level notice; the container's refusals ("Failed to read
/// $container of PID 1", "PR_SET_MM_ARG_START failed") are logged at debug.
fn verify(dir: &Path, unit: &Path) -> Option<(bool, Vec<String>)> {
    let output = systemd_tool("systemd-analyze", [OsStr::new("verify"), unit.as_os_str()])?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let dir = dir.to_string_lossy();
    let (ours, others): (Vec<&str>, Vec<&str>) = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .partition(|l| l.contains("grapevine.service") || l.contains(&*dir));
    for line in others {
        eprintln!("systemd-analyze verify, not about this unit (ignored): {line}");
    }
    Some((output.status.success(), ours.into_iter().map(str::to_owned).collect()))
}

#[test]
fn unit_passes_systemd_analyze_verify_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = stage_unit(dir.path(), "", Some(&deploy("files.conf")));
    let Some((success, findings)) = verify(dir.path(), &unit) else { return };
    let findings = findings.join("\n");
    assert!(success && findings.is_empty(), "systemd-analyze verify (with files.conf), success {success}:\n{findings}");

    // The filter above must see a warning when there is one, or this test could not fail.
    let broken = tempfile::tempdir().unwrap();
    let unit = stage_unit(broken.path(), "NoSuchSetting=1\n", None);
    let (_, findings) = verify(broken.path(), &unit).expect("systemd-analyze ran a moment ago");
    assert!(findings.iter().any(|l| l.contains("NoSuchSetting")), "a bad setting went unreported: {findings:?}");
}

#[test]
fn unit_exposure_stays_at_most_the_measured_score() {
    let dir = tempfile::tempdir().unwrap();
    let unit = stage_unit(dir.path(), "", None);
    let args = [OsStr::new("security"), OsStr::new("--offline=true"), OsStr::new("--no-pager"), unit.as_os_str()];
    let Some(output) = systemd_tool("systemd-analyze", args) else { return };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && stderr.contains("offline") {
        eprintln!("NOTICE: this systemd-analyze has no `security --offline` (systemd 250 and later); skipping");
        return;
    }
    assert!(output.status.success(), "systemd-analyze security failed:\n{stderr}");
    let prefix = "Overall exposure level for grapevine.service: ";
    let score = stdout
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{stdout}"));
    let open: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert!(
        score <= MAX_EXPOSURE + 1e-9,
        "exposure {score} is above {MAX_EXPOSURE}; settings not confined:\n{}",
        open.join("\n")
    );
}

#[test]
fn unit_keeps_its_sandbox_and_restart_policy() {
    let unit = Unit::parse(&deploy("grapevine.service"));
    for (key, expected) in SERVICE_SETTINGS {
        assert_eq!(unit.value("Service", key), Some(*expected), "[Service] {key}");
    }
    assert_eq!(unit.values("Service", "SystemCallFilter"), ["@system-service", "~@privileged @resources"]);
    assert_eq!(unit.values("Service", "ReadWritePaths"), Vec::<&str>::new(), "the state directory is writable");
    // The node has no reload: it reads its config only at start, and SIGHUP would end it.
    assert_eq!(unit.value("Service", "ExecReload"), None);
    for key in ["After", "Wants"] {
        assert_eq!(unit.value("Unit", key), Some("network-online.target"), "[Unit] {key}");
    }
    assert!(unit.value("Unit", "StartLimitIntervalSec").is_some() && unit.value("Unit", "StartLimitBurst").is_some());
    assert_eq!(unit.value("Install", "WantedBy"), Some("multi-user.target"));
}

#[test]
fn unit_user_and_directories_match_sysusers_and_tmpfiles() {
    let unit = Unit::parse(&deploy("grapevine.service"));
    let user = unit.value("Service", "User").expect("User=");
    assert_eq!(unit.value("Service", "Group"), Some(user));
    let state = format!("/var/lib/{}", unit.value("Service", "StateDirectory").expect("StateDirectory="));
    let mode = unit.value("Service", "StateDirectoryMode").expect("StateDirectoryMode=");

    let sysusers = entry(&deploy("grapevine.sysusers"), "u", user);
    assert_eq!(sysusers.len(), 5, "u NAME ID GECOS HOME: {sysusers:?}");
    assert_eq!(sysusers[4], state, "the user's home is the state directory");

    let tmpfiles = deploy("grapevine.tmpfiles");
    assert_eq!(entry(&tmpfiles, "d", &state)[2..5], [mode, user, user], "tmpfiles makes what StateDirectory= makes");
    for dir in ["/etc/grapevine", "/etc/grapevine/tls"] {
        assert_eq!(entry(&tmpfiles, "d", dir)[2..5], ["0750", "root", user], "{dir}: root's, the node's group reads");
    }
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_directories() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let sysusers = deploy_path("grapevine.sysusers");
    let Some(output) = systemd_tool("systemd-sysusers", [OsStr::new(&root_arg), sysusers.as_os_str()]) else {
        return;
    };
    assert!(output.status.success(), "systemd-sysusers: {}", String::from_utf8_lossy(&output.stderr));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let fields: Vec<&str> =
        passwd.lines().find(|l| l.starts_with("grapevine:")).expect("grapevine in passwd").split(':').collect();
    let (uid, gid): (u32, u32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!(fields[5], "/var/lib/grapevine");
    assert!(fields[6].ends_with("nologin"), "no login shell: {}", fields[6]);

    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("NOTICE: not root, so systemd-tmpfiles cannot chown; skipping it");
        return;
    }
    let tmpfiles = deploy_path("grapevine.tmpfiles");
    let args = [OsStr::new(&root_arg), OsStr::new("--create"), tmpfiles.as_os_str()];
    let output = systemd_tool("systemd-tmpfiles", args).expect("systemd-tmpfiles comes with systemd-sysusers");
    assert!(output.status.success(), "systemd-tmpfiles: {}", String::from_utf8_lossy(&output.stderr));
    for (dir, mode, owner, group) in
        [("etc/grapevine", 0o750, 0, gid), ("etc/grapevine/tls", 0o750, 0, gid), ("var/lib/grapevine", 0o700, uid, gid)]
    {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (mode, owner, group), "/{dir}: mode, uid, gid");
    }
}

#[test]
fn binary_accepts_the_units_command_and_exits_as_the_restart_policy_expects() {
    let unit = Unit::parse(&deploy("grapevine.service"));
    assert_eq!(unit.value("Service", "ExecStart"), Some(EXEC_START));
    let grapevine = || Command::new(env!("CARGO_BIN_EXE_grapevine"));

    let help = grapevine().args(["node", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config <CONFIG>"), "`grapevine node` takes --config");

    // A configuration error exits 2, which the unit does not restart (RestartPreventExitStatus=2):
    // the file is named in the error, so `--config` was taken as the option it is.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("node.toml");
    let output = grapevine().arg("node").arg("--config").arg(&missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("config file {}", missing.display())), "{stderr}");

    // A missing resource exits 1, which the unit restarts: the certificates may yet arrive.
    let config = format!(
        "name = \"n1\"\nlisten = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\ndata = \"{}\"\ntls = \"{}\"\n",
        dir.path().join("data").display(),
        dir.path().join("tls").display()
    );
    std::fs::write(&missing, config).unwrap();
    let output = grapevine().arg("node").arg("--config").arg(&missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node cannot start: certificates in"), "{stderr}");
}
