//! Compatibility with the real `etcdctl` (Debian's etcd-client, v3 API): put/get/del, txn,
//! watch, leases, compaction, endpoint status and member list against a `flotillad server`.

use flotilla_tests::{Member, Proc};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first integer field `field` in etcdctl's JSON output.
fn json_int(json: &str, field: &str) -> i64 {
    let pat = format!("\"{field}\":");
    let rest = json.split(&pat).nth(1).unwrap_or_else(|| panic!("no {field} in {json}"));
    rest.split([',', '}']).next().unwrap().parse().unwrap()
}

/// What a background etcdctl has written to `log` once `done` holds (or after 10 s).
fn wait_for_output(log: &std::path::Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = std::fs::read_to_string(log).unwrap();
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Ctl {
    endpoint: String,
    tls: Vec<String>,
}

impl Ctl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(&self.tls)
            .args(args);
        c
    }

    /// Runs etcdctl and returns stdout, panicking with stderr on failure.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, "")
    }

    fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl is installed by `cargo xtask setup` (Debian package etcd-client)");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(!out.status.success(), "etcdctl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn etcdctl_should_work_unchanged_against_flotilla_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("n0", dir.path());
    m.start().unwrap();
    let ctl = Ctl { endpoint: m.endpoint(), tls: m.etcd_tls().etcdctl_args() };

    // Watch in the background with prev-kv, from the next revision: however late etcdctl
    // connects, it sees everything from here on.
    let start = ctl.ok(&["put", "/start", "x", "-w", "json"]);
    let start: i64 = json_int(&start, "revision");
    let watch_log = dir.path().join("watch.out");
    let watch_cmd =
        ctl.cmd(&["watch", "--prefix", "/w/", "--prev-kv", &format!("--rev={}", start + 1)]);
    let mut watch = Proc::spawn("etcdctl-watch", watch_cmd, &watch_log).unwrap();

    // put / get / del
    assert_eq!(ctl.ok(&["put", "/k/a", "1"]).trim(), "OK");
    assert_eq!(ctl.ok(&["put", "/k/b", "2"]).trim(), "OK");
    assert_eq!(ctl.ok(&["get", "/k/a"]), "/k/a\n1\n");
    assert_eq!(
        ctl.ok(&["get", "/k/", "--prefix", "--keys-only"]).split_whitespace().collect::<Vec<_>>(),
        ["/k/a", "/k/b"]
    );
    let json = ctl.ok(&["get", "/k/a", "-w", "json"]);
    assert!(json.contains("\"version\":1"), "{json}");
    assert!(json.contains("\"count\":1"), "{json}");
    ctl.ok(&["put", "/k/a", "1b"]);
    // Read at the first revision of /k/a.
    let rev1: i64 = json_int(&json, "mod_revision");
    assert_eq!(ctl.ok(&["get", "/k/a", &format!("--rev={rev1}")]), "/k/a\n1\n");
    assert_eq!(ctl.ok(&["del", "/k/b"]).trim(), "1");
    assert_eq!(ctl.ok(&["get", "/k/b"]), "");

    // txn: compare, then success / failure branches.
    let out = ctl.ok_stdin(&["txn"], "value(\"/k/a\") = \"1b\"\n\nput /k/t yes\n\nput /k/t no\n\n");
    assert!(out.starts_with("SUCCESS"), "{out}");
    assert_eq!(ctl.ok(&["get", "/k/t", "--print-value-only"]).trim(), "yes");
    let out =
        ctl.ok_stdin(&["txn"], "version(\"/k/a\") = \"7\"\n\nput /k/t yes2\n\nput /k/t no\n\n");
    assert!(out.starts_with("FAILURE"), "{out}");
    assert_eq!(ctl.ok(&["get", "/k/t", "--print-value-only"]).trim(), "no");

    // watch: the background watcher saw puts and deletes with previous values.
    ctl.ok(&["put", "/w/x", "one"]);
    ctl.ok(&["put", "/w/x", "two"]);
    ctl.ok(&["del", "/w/x"]);
    let seen = wait_for_output(&watch_log, |s| s.contains("DELETE"));
    watch.kill();
    // Event type, then (with --prev-kv) the previous key/value, then the new key/value.
    let lines: Vec<&str> = seen.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        [
            "PUT", "/w/x", "one", "PUT", "/w/x", "one", "/w/x", "two", "DELETE", "/w/x", "two",
            "/w/x"
        ],
        "{seen}"
    );
    // watch from a past revision replays history.
    let replay_log = dir.path().join("replay.out");
    let mut replayer = Proc::spawn(
        "etcdctl-replay",
        ctl.cmd(&["watch", "/k/a", &format!("--rev={rev1}")]),
        &replay_log,
    )
    .unwrap();
    let replay = wait_for_output(&replay_log, |s| s.matches("PUT").count() >= 2);
    replayer.kill();
    assert!(replay.starts_with("PUT\n/k/a\n1\nPUT\n/k/a\n1b\n"), "{replay}");

    // leases: grant, attach, keep-alive, time-to-live, list, revoke.
    let grant = ctl.ok(&["lease", "grant", "60"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    assert!(grant.contains("granted with TTL(60s)"), "{grant}");
    ctl.ok(&["put", "/k/leased", "v", &format!("--lease={id}")]);
    let ka = ctl.ok(&["lease", "keep-alive", "--once", &id]);
    assert!(ka.contains("keepalived with TTL(60)"), "{ka}");
    let ttl = ctl.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("attached keys([/k/leased])"), "{ttl}");
    assert!(ctl.ok(&["lease", "list"]).contains(&id));
    ctl.ok(&["lease", "revoke", &id]);
    assert_eq!(ctl.ok(&["get", "/k/leased"]), "");
    assert!(ctl
        .fails(&["put", "/k/x", "v", "--lease=1234abcd"])
        .contains("requested lease not found"));

    // compaction: older revisions become unreadable with etcd's error.
    let rev = ctl.ok(&["get", "/k/a", "-w", "json"]);
    let cur: i64 = json_int(&rev, "revision");
    assert!(ctl
        .ok(&["compaction", &cur.to_string()])
        .contains(&format!("compacted revision {cur}")));
    assert!(ctl
        .fails(&["get", "/k/a", &format!("--rev={rev1}")])
        .contains("required revision has been compacted"));

    // maintenance and cluster.
    let status = ctl.ok(&["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"leader\""), "{status}");
    // `endpoint health` reports on stderr: a linearizable read of key "health".
    let health = ctl.cmd(&["endpoint", "health"]).output().unwrap();
    let health = String::from_utf8_lossy(&health.stderr);
    assert!(health.contains("is healthy"), "{health}");
    let members = ctl.ok(&["member", "list"]);
    assert!(members.contains(&format!("https://{}", m.client)), "{members}");
    m.kill();
}
