//! `flotillad runtime` end to end, as root: real namespaces, cgroups, seccomp and mounts,
//! checked from inside the container by `flotilla-probe`. Every test deletes its
//! containers (and with them their cgroups) even when it fails.

use flotilla_tests::{bundle, probe, RuntimeCli};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// Fields drop in order: the containers go before the directory holding their state.
struct Fixture {
    rt: RuntimeCli,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir =
            tempfile::Builder::new().prefix("rt-test").tempdir_in("/var/tmp").expect("tempdir");
        let rt = RuntimeCli::new(&dir.path().join("state"));
        let rootfs = dir.path().join("rootfs");
        bundle::busybox_rootfs(&rootfs, &[(probe().as_path(), "/bin/flotilla-probe")])
            .expect("rootfs");
        Self { dir, rt }
    }

    /// A bundle dir named `name` whose config is `config` (rootfs shared).
    fn bundle(&self, name: &str, config: &Value) -> PathBuf {
        let b = self.dir.path().join(name);
        std::fs::create_dir_all(&b).unwrap();
        let mut config = config.clone();
        config["root"]["path"] = json!(self.dir.path().join("rootfs"));
        bundle::write_config(&b, &config).unwrap()
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// create (logging to a CRI file), start, wait; returns the exit JSON and the log's stdout lines.
    fn run_to_exit(&self, id: &str, config: &Value) -> (Value, Vec<String>) {
        let b = self.bundle(id, config);
        let log = self.log(id);
        let out = self.rt.create(id, &b, &["--log-path", log.to_str().unwrap()]);
        assert!(out.ok, "create: {}", out.stderr);
        self.rt.ok(&["start", id]);
        let exit: Value =
            serde_json::from_str(&self.rt.ok(&["wait", id, "--timeout", "60"])).unwrap();
        (exit, stdout_lines(&log))
    }
}

/// The stdout lines of a CRI log, checking each record's shape on the way.
fn stdout_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for rec in text.lines() {
        let parts: Vec<&str> = rec.splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "CRI record {rec:?}");
        assert!(parts[0].ends_with('Z') && parts[0].contains('T'), "timestamp in {rec:?}");
        assert!(parts[2] == "F" || parts[2] == "P", "tag in {rec:?}");
        if parts[1] == "stdout" {
            out.push(parts[3].to_string());
        } else {
            assert_eq!(parts[1], "stderr", "stream in {rec:?}");
        }
    }
    out
}

fn facts(lines: &[String]) -> HashMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pod-like config: containerd's default capabilities, masked and read-only paths, our
/// default seccomp profile, limits, and a cgroup namespace.
fn hardened(args: &[&str]) -> Value {
    let mut c = bundle::runc_default_config(args);
    let caps = json!(flotilla_isolation::spec::DEFAULT_CAPABILITIES);
    c["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    c["hostname"] = json!("probe-host");
    c["linux"]["maskedPaths"] = json!(flotilla_isolation::spec::DEFAULT_MASKED_PATHS);
    c["linux"]["readonlyPaths"] = json!(flotilla_isolation::spec::DEFAULT_READONLY_PATHS);
    c["linux"]["seccomp"] =
        serde_json::to_value(flotilla_isolation::seccomp::default_profile()).unwrap();
    c["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
    c["linux"]["resources"]["pids"] = json!({"limit": 64});
    c["linux"]["resources"]["cpu"] = json!({"shares": 512, "quota": 50000, "period": 100000});
    c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "cgroup"}));
    c
}

/// The workload is PID 1 with its hostname, no_new_privs, seccomp filter, containerd's
/// capabilities, only stdio open, masked and read-only paths in place, and its cgroup
/// limits visible at /sys/fs/cgroup.
#[test]
fn a_container_is_isolated_as_seen_from_inside() {
    let f = Fixture::new();
    let (exit, lines) = f.run_to_exit("inspect", &hardened(&["/bin/flotilla-probe", "inspect"]));
    assert_eq!(exit["code"], 0, "exit {exit}; output {lines:?}");
    let got = facts(&lines);
    let want = [
        ("pid", "1"),
        ("hostname", "probe-host"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        // containerd's default set: the well-known 00000000a80425fb.
        ("CapEff", "00000000a80425fb"),
        ("CapBnd", "00000000a80425fb"),
        ("CapAmb", "0000000000000000"),
        ("fds", "0,1,2"),
        // Masked files read as /dev/null, masked directories are empty.
        ("read:/proc/keys", "ok:0"),
        ("read:/proc/timer_list", "ok:0"),
        ("entries:/sys/firmware", "0"),
        // EROFS: /proc/sys and the root are read-only.
        ("write:/proc/sys/kernel/hostname", "err:30"),
        ("write:/bin/busybox", "err:30"),
        ("pids.max", "64"),
    ];
    // The same limits in each cgroup version's terms (v2: shares 512 is weight 20, by
    // the OCI conversion 1 + (shares - 2) * 9999 / 262142).
    let cpu: &[(&str, &str)] = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        &[("cpu.weight", "20"), ("cpu.max", "50000 100000")]
    } else {
        &[("cpu.shares", "512"), ("cpu.cfs_quota_us", "50000")]
    };
    // Absent on some kernels; where present it must read as empty.
    assert!(matches!(got["read:/proc/kcore"].as_str(), "ok:0" | "err:2"), "{got:#?}");
    assert!(matches!(got["write:/proc/sysrq-trigger"].as_str(), "err:30" | "err:2"), "{got:#?}");
    for &(k, v) in want.iter().chain(cpu) {
        assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}; all facts: {got:#?}");
    }
    let limit = got.get("memory.limit").filter(|v| *v != "none").or(got.get("memory.max")).unwrap();
    assert_eq!(limit, &(64u64 << 20).to_string(), "memory limit visible inside: {got:#?}");
    f.rt.ok(&["delete", "inspect"]);
}

/// Device rules hold inside (the devices controller on cgroup v1, an eBPF program on v2):
/// any node may be made, as runc allows, but only the standard ones opened.
#[test]
fn devices_outside_the_rules_cannot_be_opened() {
    let f = Fixture::new();
    let script = "exec 2>&1; mknod /dev/kmsg2 c 1 11 && mknod /dev/loop9 b 7 0 && for d in null kmsg2 loop9; \
        do if (: < /dev/$d) 2>/dev/null; then echo $d=ok; else echo $d=denied; fi; done";
    let (exit, lines) = f.run_to_exit("devs", &hardened(&["/bin/sh", "-c", script]));
    assert_eq!(exit["code"], 0, "exit {exit}; output {lines:?}");
    assert_eq!(lines, ["null=ok", "kmsg2=denied", "loop9=denied"]);
    f.rt.ok(&["delete", "devs"]);
}

/// A process past its memory limit is OOM-killed, and wait reports it as such.
#[test]
fn a_process_over_its_memory_limit_is_oom_killed_and_reported() {
    let f = Fixture::new();
    let mut c = hardened(&["/bin/flotilla-probe", "hog", "512"]);
    c["linux"]["resources"]["memory"] = json!({"limit": 32 << 20, "swap": 32 << 20});
    let (exit, lines) = f.run_to_exit("hog", &c);
    assert_eq!(exit["oom_killed"], true, "exit {exit}; output {lines:?}");
    assert_eq!(exit["signal"], 9, "exit {exit}");
    assert!(!lines.iter().any(|l| l.contains("survived")), "{lines:?}");
}

/// created → running → (SIGTERM, handled by the workload) stopped → deleted, with the
/// state dir and cgroup gone.
#[test]
fn the_lifecycle_follows_the_oci_states_and_delete_leaves_nothing() {
    let f = Fixture::new();
    let b = f.bundle(
        "life",
        &bundle::runc_default_config(&["/bin/sh", "-c", "trap 'exit 7' TERM; sleep 300 & wait"]),
    );
    let out = f.rt.create("life", &b, &["--pid-file", f.dir.path().join("pid").to_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(f.rt.status("life"), "created");
    let pid: i32 =
        std::fs::read_to_string(f.dir.path().join("pid")).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // Not running yet: delete without --force of a created container is allowed, but
    // first check start and kill.
    f.rt.ok(&["start", "life"]);
    assert_eq!(f.rt.status("life"), "running");
    let stats: Value = serde_json::from_str(&f.rt.ok(&["stats", "life"])).unwrap();
    assert!(
        stats["memory_usage_bytes"].as_u64().unwrap() > 0 && stats["pids"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    let refused = f.rt.run(&["delete", "life"]);
    assert!(!refused.ok && refused.stderr.contains("running"), "{}", refused.stderr);
    f.rt.ok(&["kill", "life", "TERM"]);
    let exit: Value = serde_json::from_str(&f.rt.ok(&["wait", "life", "--timeout", "30"])).unwrap();
    assert_eq!(exit["code"], 7, "the TERM trap ran: {exit}");
    assert_eq!(f.rt.status("life"), "stopped");
    let st: Value = serde_json::from_str(&f.rt.ok(&["state", "life"])).unwrap();
    assert_eq!(st["pid"], 0);
    f.rt.ok(&["delete", "life"]);
    assert!(!f.rt.root.join("life").exists());
    assert!(
        !Path::new("/sys/fs/cgroup/memory/flotilla/life").exists()
            && !Path::new("/sys/fs/cgroup/flotilla/life").exists()
    );
    let gone = f.rt.run(&["state", "life"]);
    assert!(!gone.ok && gone.stderr.contains("does not exist"), "{}", gone.stderr);
}

/// Output lands in the CRI log, stdout and stderr apart, each line a record.
#[test]
fn stdout_and_stderr_are_logged_in_the_cri_format() {
    let f = Fixture::new();
    let c = bundle::runc_default_config(&[
        "/bin/sh",
        "-c",
        "echo one; echo two >&2; printf 'no newline'",
    ]);
    let (exit, lines) = f.run_to_exit("logs", &c);
    assert_eq!(exit["code"], 0);
    assert_eq!(lines, vec!["one".to_string(), "no newline".to_string()]);
    let text = std::fs::read_to_string(f.log("logs")).unwrap();
    assert!(text.lines().any(|l| l.ends_with(" stderr F two")), "{text}");
}

/// Bad bundles fail with the field and reason named, and leave no state dir and no cgroup.
#[test]
fn bad_bundles_are_refused_by_name_and_leave_nothing() {
    let f = Fixture::new();
    let base = bundle::runc_default_config(&["/bin/true"]);
    let mut bogus_ns = base.clone();
    bogus_ns["linux"]["namespaces"][1] = json!({"type": "bogus"});
    let mut no_rootfs = base.clone();
    no_rootfs["root"]["path"] = json!("/nonexistent/rootfs");
    let mut no_program = base.clone();
    no_program["process"]["args"] = json!(["/bin/not-there"]);
    let mut unmapped_user = base.clone();
    unmapped_user["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    let mut overlapping = unmapped_user.clone();
    overlapping["linux"]["uidMappings"] = json!([
        {"containerID": 0, "hostID": 100000, "size": 1000},
        {"containerID": 500, "hostID": 200000, "size": 10}
    ]);
    let mut offsets_alone = base.clone();
    offsets_alone["linux"]["timeOffsets"] = json!({"boottime": {"secs": 10}});
    let mut bad_access = base.clone();
    bad_access["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rx"}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("bogus-ns", bogus_ns, "linux.namespaces[1].type"),
        ("unmapped-user", unmapped_user, "linux.uidMappings`: a new user namespace needs"),
        ("overlapping", overlapping, "linux.uidMappings[1]`: overlaps linux.uidMappings[0]"),
        ("offsets-alone", offsets_alone, "linux.timeOffsets`: offsets need a new time namespace"),
        ("bad-access", bad_access, "linux.resources.devices[1].access`: unknown access 'x'"),
        ("no-program", no_program, "not-there"),
    ];
    for (id, config, needle) in cases {
        let b = f.bundle(id, &config);
        let out = f.rt.create(id, &b, &[]);
        assert!(!out.ok, "{id} was accepted");
        assert!(out.stderr.contains(needle), "{id}: {}", out.stderr);
        assert!(!f.rt.root.join(id).exists(), "{id} left a state dir");
        for v in ["memory/", ""] {
            let cg = format!("/sys/fs/cgroup/{v}flotilla/{id}");
            assert!(!Path::new(&cg).exists(), "{id} left a cgroup: {cg}");
        }
    }
    // The rootfs check needs the bundle's own path, not the fixture's.
    let b = f.dir.path().join("no-rootfs");
    std::fs::create_dir_all(&b).unwrap();
    bundle::write_config(&b, &no_rootfs).unwrap();
    let out = f.rt.create("no-rootfs", &b, &[]);
    assert!(
        !out.ok && out.stderr.contains("root.path") && out.stderr.contains("/nonexistent/rootfs"),
        "{}",
        out.stderr
    );
    let malformed = f.dir.path().join("malformed");
    std::fs::create_dir_all(&malformed).unwrap();
    std::fs::write(malformed.join("config.json"), "{\"ociVersion\": ").unwrap();
    let out = f.rt.create("malformed", &malformed, &[]);
    assert!(!out.ok && out.stderr.contains("malformed JSON"), "{}", out.stderr);
}

/// exec joins a running container: same hostname, cgroup and pid namespace (not PID 1),
/// the container's no_new_privs, seccomp and capabilities, its exit code passed back; with
/// --tty the process gets a terminal from the container's own /dev/pts.
#[test]
fn exec_runs_a_process_inside_a_running_container_with_its_restrictions() {
    let f = Fixture::new();
    let b = f.bundle("ex", &hardened(&["/bin/sleep", "300"]));
    let out = f.rt.create("ex", &b, &["--log-path", f.log("ex").to_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    f.rt.ok(&["start", "ex"]);
    let got = facts(
        &f.rt
            .ok(&["exec", "ex", "/bin/flotilla-probe", "inspect"])
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    assert_eq!(got.get("hostname").map(String::as_str), Some("probe-host"), "{got:#?}");
    assert_eq!(got.get("NoNewPrivs").map(String::as_str), Some("1"));
    assert_eq!(got.get("Seccomp").map(String::as_str), Some("2"));
    assert_eq!(got.get("CapEff").map(String::as_str), Some("00000000a80425fb"));
    assert_eq!(
        got.get("pids.max").map(String::as_str),
        Some("64"),
        "in the container's cgroup: {got:#?}"
    );
    let pid: u32 = got["pid"].parse().unwrap();
    assert!(pid > 1, "a second process in the pid namespace, got pid {pid}");

    let status = std::process::Command::new(flotilla_tests::flotillad())
        .args([
            "runtime",
            "--root",
            f.rt.root.to_str().unwrap(),
            "exec",
            "ex",
            "/bin/sh",
            "-c",
            "exit 3",
        ])
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "exec exits with the process's code");

    let tty =
        f.rt.ok(&["exec", "--tty", "ex", "/bin/sh", "-c", "tty; [ -t 0 ] && echo stdin-is-a-tty"]);
    assert!(tty.contains("/dev/pts/0") && tty.contains("stdin-is-a-tty"), "{tty:?}");

    // The CVE-2019-5736 class: what joins the container runs from a sealed memfd copy of
    // the runtime, so /proc/PID/exe inside leads to nothing writable on the host.
    let mut joiner = std::process::Command::new(flotilla_tests::flotillad())
        .args(["runtime", "--root", f.rt.root.to_str().unwrap(), "exec", "ex", "/bin/sleep", "2"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It re-executes itself first thing; how soon depends on the machine (a copy of the
    // binary), so look until it has or the exec is over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let exe = loop {
        let exe = std::fs::read_link(format!("/proc/{}/exe", joiner.id())).unwrap_or_default();
        if exe.to_string_lossy().contains("memfd:") || std::time::Instant::now() > deadline {
            break exe;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(exe.to_string_lossy().contains("memfd:flotillad-sealed"), "exec runs from {exe:?}");
    let w = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/exe", joiner.id()));
    assert!(w.is_err(), "the sealed copy cannot be opened for writing");
    assert!(joiner.wait().unwrap().success());

    let missing = f.rt.run(&["exec", "ex", "/bin/not-there"]);
    assert!(!missing.ok && missing.stderr.contains("not-there"), "{}", missing.stderr);
    f.rt.ok(&["delete", "--force", "ex"]);
}

/// Changes the owner of everything under `root` to `id` (uid and gid), as an image unpacked
/// for a user namespace would be.
fn chown_tree(root: &Path, id: u32) {
    std::os::unix::fs::lchown(root, Some(id), Some(id)).unwrap();
    for entry in std::fs::read_dir(root).unwrap() {
        let p = entry.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            chown_tree(&p, id);
        } else {
            std::os::unix::fs::lchown(&p, Some(id), Some(id)).unwrap();
        }
    }
}

/// `config` with a new user namespace mapping ids 0..65536 to 100000.. on the host.
fn in_user_namespace(mut config: Value) -> Value {
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    config["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    config["linux"]["uidMappings"] = map.clone();
    config["linux"]["gidMappings"] = map;
    config
}

/// In a new user namespace the workload is root inside and uid 100000 outside, and the
/// hardening of a pod-like config (namespaces, mounts, masks, capabilities, seccomp, cgroup
/// limits) holds as without one; exec joins it the same way.
#[test]
fn a_user_namespace_makes_container_root_an_unprivileged_host_user() {
    let f = Fixture::new();
    chown_tree(&f.dir.path().join("rootfs"), 100000);
    let (exit, lines) =
        f.run_to_exit("userns", &in_user_namespace(hardened(&["/bin/flotilla-probe", "inspect"])));
    assert_eq!(exit["code"], 0, "exit {exit}; output {lines:?}");
    let got = facts(&lines);
    for (k, v) in [
        ("pid", "1"),
        ("hostname", "probe-host"),
        ("uid_map", "0 100000 65536"),
        ("gid_map", "0 100000 65536"),
        ("Uid", "0\t0\t0\t0"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
        ("CapEff", "00000000a80425fb"),
        ("fds", "0,1,2"),
        ("read:/proc/keys", "ok:0"),
        ("write:/bin/busybox", "err:30"),
        ("pids.max", "64"),
    ] {
        assert_eq!(got.get(k).map(String::as_str), Some(v), "{k}; all facts: {got:#?}");
    }
    f.rt.ok(&["delete", "userns"]);

    // Seen from the host, the same root is an unprivileged user.
    let b = f.bundle("userns-sleep", &in_user_namespace(hardened(&["/bin/sleep", "300"])));
    let out = f.rt.create("userns-sleep", &b, &[]);
    assert!(out.ok, "create: {}", out.stderr);
    f.rt.ok(&["start", "userns-sleep"]);
    let state: Value = serde_json::from_str(&f.rt.ok(&["state", "userns-sleep"])).unwrap();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", state["pid"])).expect("init status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "100000", "100000", "100000", "100000"]
    );
    let out = f.rt.run(&["exec", "userns-sleep", "/bin/sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert!(out.ok, "exec: {}", out.stderr);
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "100000", "65536"], "{}", out.stdout);
    f.rt.ok(&["delete", "--force", "userns-sleep"]);
}

/// A time namespace moves the container's boot and monotonic clocks by the configured
/// offsets; the host's are unchanged.
#[test]
fn a_time_namespace_offsets_the_containers_clocks() {
    let f = Fixture::new();
    let mut c = bundle::runc_default_config(&["/bin/flotilla-probe", "inspect"]);
    c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
    let ten_days = 10 * 86400;
    c["linux"]["timeOffsets"] =
        json!({"boottime": {"secs": ten_days}, "monotonic": {"secs": 86400, "nanosecs": 5}});
    let host_before = host_uptime();
    let (exit, lines) = f.run_to_exit("timens", &c);
    let host_after = host_uptime();
    assert_eq!(exit["code"], 0, "exit {exit}; output {lines:?}");
    let got = facts(&lines);
    let offsets = &got["timens_offsets"];
    assert!(
        offsets.contains("monotonic 86400 5") && offsets.contains("boottime 864000 0"),
        "{got:#?}"
    );
    let inside: u64 = got["uptime"].parse().unwrap();
    assert!(
        (host_before + ten_days..=host_after + ten_days + 1).contains(&inside),
        "uptime inside {inside}, host {host_before}..{host_after}"
    );
    f.rt.ok(&["delete", "timens"]);
}

fn host_uptime() -> u64 {
    let s = std::fs::read_to_string("/proc/uptime").unwrap();
    s.split('.').next().unwrap().parse().unwrap()
}

/// process.oomScoreAdj is the workload's score, read from inside (also in a new user
/// namespace, where the init itself could never lower it). A runtime without
/// CAP_SYS_RESOURCE refuses a score below its own by naming the field, rather than running
/// the workload with another score.
#[test]
fn the_oom_score_is_applied_as_configured_or_refused_by_field() {
    let f = Fixture::new();
    chown_tree(&f.dir.path().join("rootfs"), 100000);
    let read = &["/bin/sh", "-c", "read x </proc/1/oom_score_adj; echo $x"];
    let lower = flotilla_tests::can_lower_oom_scores();
    for (id, adj, userns) in
        [("oom-up", 500, false), ("oom-down", -997, false), ("oom-down-userns", -997, true)]
    {
        let mut c = hardened(read);
        c["process"]["oomScoreAdj"] = json!(adj);
        if userns {
            c = in_user_namespace(c);
        }
        if adj < 0 && !lower {
            let b = f.bundle(id, &c);
            let out = f.rt.create(id, &b, &[]);
            assert!(!out.ok, "{id}: a score it cannot set must fail create");
            assert!(out.stderr.contains("process.oomScoreAdj"), "{id}: {}", out.stderr);
            assert!(out.stderr.contains("CAP_SYS_RESOURCE"), "{id}: {}", out.stderr);
            let state = f.rt.run(&["state", id]);
            assert!(!state.ok, "{id}: a refused create leaves no container");
            continue;
        }
        let (exit, lines) = f.run_to_exit(id, &c);
        assert_eq!(exit["code"], 0, "{id}: exit {exit}; output {lines:?}");
        assert_eq!(lines, [adj.to_string()], "{id}");
        f.rt.ok(&["delete", id]);
    }
}
