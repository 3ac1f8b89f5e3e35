//! Helpers for end-to-end tests and benchmarks: build and start real `flotillad` (and peer)
//! processes on loopback, and stop them — on drop too, so a failing test leaves nothing running.

use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `flotillad` binary of this build profile, built once per test process, with
/// `flotilla-runtime` beside it (the agent runs containers with it).
pub fn flotillad() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("flotilla-daemon", &["flotillad", "flotilla-runtime"])).clone()
}

/// The `flotilla` CLI of this build profile, built once per test process.
/// `flotilla --kubeconfig KUBECONFIG ARGS` (ignoring $KUBECONFIG): (success, stdout, stderr).
pub fn cli_with(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(flotilla_cli())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("running flotilla");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), s(&out.stdout), s(&out.stderr))
}

/// The kubectl the tests drive: `FLOTILLA_KUBECTL`, else the first `kubectl` on PATH.
pub fn kubectl() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("FLOTILLA_KUBECTL") {
        return Some(PathBuf::from(k));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.is_file())
}

pub fn flotilla_cli() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("flotilla-cli", &["flotilla"])).clone()
}

/// Builds `bins` of `package` (in a debug profile: every binary of the workspace); returns
/// the path of the first.
/// `FLOTILLA_TEST_PREBUILT=1`: the binaries are built already and cargo is not at hand
/// (the tests run in `cargo xtask vm`, whose guest has no toolchain); use them as they are.
fn prebuilt() -> bool {
    std::env::var_os("FLOTILLA_TEST_PREBUILT").is_some_and(|v| v == "1")
}

fn build_bin(package: &str, bins: &[&str]) -> PathBuf {
    {
        // target/<profile>/deps/<test-binary> or target/<profile>/<bench-binary>
        // → target/<profile>/flotillad
        let exe = std::env::current_exe().expect("current_exe");
        let mut profile_dir = exe.parent().expect("target dir").to_path_buf();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        if prebuilt() {
            return profile_dir.join(bins[0]);
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        if release {
            cmd.args(["build", "--quiet", "--release", "-p", package]);
            for bin in bins {
                cmd.args(["--bin", bin]);
            }
        } else {
            // With the tests' own feature set (resolver 2 unifies dev-dependencies' features
            // only when tests are built): a `-p` build resolves features differently and
            // rebuilt most of the tree, minutes per test binary. After `cargo xtask test`'s
            // build phase this is a no-op.
            cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building {bins:?} failed");
        profile_dir.join(bins[0])
    }
}

/// The `p` quantile (0..=1) of sorted samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Whether this process may lower OOM scores (CAP_SYS_RESOURCE, bit 24 of CapEff): some
/// sandboxes withhold it even from root, and then no runtime can give a score below its own.
pub fn can_lower_oom_scores() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap_or("0").trim();
    u64::from_str_radix(eff, 16).unwrap_or(0) & (1 << 24) != 0
}

/// A loopback port that was free a moment ago, never handed out twice by this process.
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`): a port from that range
/// can be taken by any outgoing connection (the tests' own clients) between this call and
/// the server's bind, which made servers fail to start with "address in use".
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_100));
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Start at a point that differs per process, so consecutive test binaries do not
    // hand out the ports a lingering process of the previous one may still hold.
    let span = u32::from(high - low);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut n = (std::process::id().wrapping_mul(7919) ^ nanos) % span;
    for _ in 0..span {
        let port = low + (n % span) as u16;
        n = n.wrapping_add(1);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    // Everything below the ephemeral range is taken: let the kernel pick.
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: &str, timeout: Duration) -> Result<()> {
    wait_listening_while(addr, timeout, || true)
}

/// Like [`wait_listening`], but gives up as soon as `alive` says the server has exited.
pub fn wait_listening_while(
    addr: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if !alive() {
            bail!("the server exited before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("nothing listening on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Proc { child: Some(child), name: name.into() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `flotillad server` member.
pub struct Member {
    pub name: String,
    /// The API server (gRPC).
    pub api: String,
    pub client: String,
    pub peer: String,
    pub data_dir: PathBuf,
    pub extra: Vec<String>,
    pub initial_cluster: Option<String>,
    /// RUST_LOG for the process (default: FLOTILLA_TEST_LOG, else warn).
    pub log_level: Option<String>,
    pub proc: Option<Proc>,
}

impl Member {
    pub fn new(name: &str, data_dir: &Path) -> Member {
        Member {
            name: name.into(),
            api: format!("127.0.0.1:{}", free_port()),
            client: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.join(name),
            extra: Vec::new(),
            initial_cluster: None,
            log_level: None,
            proc: None,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let mut cmd = Command::new(flotillad());
        cmd.arg("server")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.api])
            .args(["--store-listen", &self.client, "--peer-listen", &self.peer])
            .args(&self.extra)
            .env(
                "RUST_LOG",
                self.log_level.clone().unwrap_or_else(|| {
                    std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "warn".into())
                }),
            );
        if let Some(ic) = &self.initial_cluster {
            cmd.args(["--initial-cluster", ic]);
        }
        std::fs::create_dir_all(&self.data_dir)?;
        let log = self.data_dir.with_extension("log");
        let mut proc = Proc::spawn(&self.name, cmd, &log)?;
        let ready = wait_listening_while(&self.client, Duration::from_secs(30), || proc.running());
        self.proc = Some(proc);
        ready.with_context(|| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{} did not start; its log ends:\n{}", self.name, tail.join("\n"))
        })
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// This member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// The last `n` lines of this member's log (for a failing test's message).
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The store's client URL (TLS; see [`Member::etcd`]).
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.client)
    }

    /// Credentials for the store's client port: the cluster CA and the
    /// `kube-apiserver-etcd-client` certificate the member wrote.
    pub fn etcd_tls(&self) -> EtcdTls {
        EtcdTls::in_dir(&self.data_dir.join("pki"), "apiserver-etcd-client")
    }

    /// An etcd client to this member.
    pub async fn etcd(&self) -> Result<etcd_client::Client> {
        etcd_connect(&[self.endpoint()], &self.etcd_tls()).await
    }

    /// The API server's URL; waits until it serves (it starts once the store has a leader).
    pub fn api_url(&self) -> Result<String> {
        wait_listening(&self.api, Duration::from_secs(20))
            .with_context(|| format!("{}: the API server did not start; see its log", self.name))?;
        Ok(format!("https://{}", self.api))
    }

    /// The admin kubeconfig the server wrote (`flotilla-admin`, group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.conf")
    }

    /// A client with the admin kubeconfig's credentials, once the API server serves.
    pub async fn client(&self) -> Result<flotilla_client::Client> {
        self.api_url()?;
        let conn = flotilla_client::Kubeconfig::read(&self.kubeconfig())?.connection(None)?;
        Ok(flotilla_client::Client::connect_to(&conn).await?)
    }

    /// A client that connects on first use and reconnects (for informers).
    pub fn client_lazy(&self) -> Result<flotilla_client::Client> {
        self.api_url()?;
        let conn = flotilla_client::Kubeconfig::read(&self.kubeconfig())?.connection(None)?;
        let tls = flotilla_client::Tls::from_connection(&conn)?;
        Ok(flotilla_client::Client::connect_lazy_tls(&conn.server, tls)?)
    }

    /// Puts `from`'s CA (`ca.crt`, `ca.key`) in this member's PKI dir, as an operator does for
    /// the members of a statically configured cluster.
    pub fn seed_ca(&self, from: &Path) -> Result<()> {
        let pki = self.data_dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        for f in ["ca.crt", "ca.key"] {
            std::fs::copy(from.join(f), pki.join(f))?;
        }
        Ok(())
    }

    /// The cluster CA's certificate, PEM.
    pub fn ca_pem(&self) -> Result<String> {
        let p = self.data_dir.join("pki/ca.crt");
        std::fs::read_to_string(&p).with_context(|| p.display().to_string())
    }

    /// The admin kubeconfig's client certificate.
    pub fn admin_identity(&self) -> Result<Arc<flotilla_pki::tls::KeyHolder>> {
        let conn = flotilla_client::Kubeconfig::read(&self.kubeconfig())?.connection(None)?;
        let cert = conn.client_cert.context("admin.conf has no client certificate")?;
        Ok(flotilla_pki::tls::KeyHolder::new(&cert)?)
    }

    /// The certificate the API server presents to node agents (`kube-apiserver-kubelet-client`).
    pub fn kubelet_client_identity(&self) -> Result<Arc<flotilla_pki::tls::KeyHolder>> {
        let pki = self.data_dir.join("pki");
        https::identity(
            &pki.join("apiserver-kubelet-client.crt"),
            &pki.join("apiserver-kubelet-client.key"),
        )
    }

    /// A kubeconfig for `user` in `groups`, signed by this member's CA
    /// (`flotillad kubeconfig user`), written to `out`.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str], out: &Path) -> Result<PathBuf> {
        let url = self.api_url()?;
        let mut cmd = Command::new(flotillad());
        cmd.args(["kubeconfig", "user", "--server", &url, "--client-name", user])
            .arg("--pki-dir")
            .arg(self.data_dir.join("pki"))
            .arg("--out")
            .arg(out);
        for g in groups {
            cmd.args(["--org", g]);
        }
        let o = cmd.output()?;
        anyhow::ensure!(
            o.status.success(),
            "flotillad kubeconfig user: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(out.to_path_buf())
    }

    /// A node's kubeconfig (`system:node:<node>`, group `system:nodes`) in `dir`.
    pub fn node_kubeconfig(&self, node: &str, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        self.user_kubeconfig(
            &format!("system:node:{node}"),
            &["system:nodes"],
            &dir.join(format!("{node}.conf")),
        )
    }
}

/// A CA certificate and a client certificate, PEM files, for an etcd client.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdTls {
    /// `dir/ca.crt` and `dir/<name>.crt`, `.key`.
    pub fn in_dir(dir: &Path, name: &str) -> EtcdTls {
        EtcdTls {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// A tonic client configuration: the CA and the client certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let ca =
            std::fs::read_to_string(&self.ca).with_context(|| self.ca.display().to_string())?;
        let id = https::identity(&self.cert, &self.key)?;
        Ok(flotilla_pki::tls::client_config(Some(&ca), Some(id))?)
    }

    /// etcdctl's flags for these files.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.cert.display()),
            format!("--key={}", self.key.display()),
        ]
    }
}

/// An etcd client over TLS to the first of `endpoints` (`https://…`). The channel is ours
/// (flotilla-pki's rustls connector), handed to etcd-client as a raw channel: enabling
/// etcd-client's TLS features would turn on tonic's, which then refuses every `https://`
/// channel built with a custom connector.
pub async fn etcd_connect<S: AsRef<str>>(
    endpoints: &[S],
    tls: &EtcdTls,
) -> Result<etcd_client::Client> {
    let url = endpoints.first().context("no endpoint")?.as_ref().to_string();
    let connector = flotilla_pki::tls::Connector::new(tls.client_config()?, None);
    let ch = tonic::transport::Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_with_connector(connector)
        .await?;
    Ok(etcd_client::Client::from_channel(etcd_client::Channel::Tonic(ch), None).await?)
}

/// `n` members forming one cluster (n = 1: a plain single member). Members of a cluster share
/// one CA, placed in their data dirs before their first start.
pub fn cluster(n: usize, dir: &Path, extra: &[&str]) -> Result<Vec<Member>> {
    let mut members: Vec<Member> = (0..n).map(|i| Member::new(&format!("n{i}"), dir)).collect();
    if n > 1 {
        let shared = dir.join("cluster-ca");
        flotilla_pki::Ca::load_or_create(&shared)?;
        for m in &members {
            m.seed_ca(&shared)?;
        }
    }
    let ic = members.iter().map(|m| format!("{}={}", m.name, m.peer)).collect::<Vec<_>>().join(",");
    for m in &mut members {
        if n > 1 {
            m.initial_cluster = Some(ic.clone());
        }
        m.extra = extra.iter().map(|s| s.to_string()).collect();
    }
    for m in &mut members {
        m.start()?;
    }
    Ok(members)
}

/// OCI bundles for runtime tests and benchmarks: busybox from Debian's `busybox-static`.
pub mod h2;
pub mod https;
pub mod netlab;
pub mod node;

pub mod bundle {
    use anyhow::{Context, Result};
    use std::path::{Path, PathBuf};

    pub use flotilla_test_images::BUSYBOX;

    /// The config `runc spec` writes (runc 1.1), with `args` as the process.
    pub fn runc_default_config(args: &[&str]) -> serde_json::Value {
        let caps = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "runc",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
            ],
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }

    /// A rootfs holding busybox (and its applets as links) plus `extra` files copied in
    /// at the given paths.
    pub fn busybox_rootfs(rootfs: &Path, extra: &[(&Path, &str)]) -> Result<()> {
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(BUSYBOX, bin.join("busybox"))
            .with_context(|| format!("copying {BUSYBOX} (apt install busybox-static)"))?;
        for applet in flotilla_test_images::APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        for dir in ["proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        for (src, dst) in extra {
            let to = rootfs.join(dst.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("has parent"))?;
            std::fs::copy(src, &to)
                .with_context(|| format!("copying {} into the rootfs", src.display()))?;
        }
        Ok(())
    }

    /// Writes `config` as `<dir>/config.json` and returns `dir`.
    pub fn write_config(dir: &Path, config: &serde_json::Value) -> Result<PathBuf> {
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config)?)?;
        Ok(dir.to_path_buf())
    }
}

/// The `flotilla-probe` test binary, built static (glibc, crt-static) so it runs in a
/// busybox rootfs; built once per test process into `target/images`.
pub fn probe() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let target = exe
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "target"))
            .expect("target dir")
            .to_path_buf();
        if prebuilt() {
            return target.join("images/release/flotilla-probe");
        }
        oci::build_probe(&target.join("images")).expect("building flotilla-probe")
    })
    .clone()
}

/// `flotillad runtime --root <root>`: runs commands and deletes (with --force) every
/// container it created when dropped, so a failing test leaves no process or cgroup.
pub struct RuntimeCli {
    pub root: PathBuf,
    created: std::cell::RefCell<Vec<String>>,
}

/// What a runtime command printed and how it ended.
pub struct CmdOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl RuntimeCli {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf(), created: Default::default() }
    }

    /// Runs a command. Output goes through files, not pipes: a created container
    /// inherits the runtime's stdio (runc's pass-through) and would hold a pipe open.
    pub fn run(&self, args: &[&str]) -> CmdOut {
        let dir = tempfile::tempdir().expect("tempdir");
        let (o, e) = (dir.path().join("out"), dir.path().join("err"));
        let status = Command::new(flotillad())
            .arg("runtime")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&o).expect("stdout file"))
            .stderr(std::fs::File::create(&e).expect("stderr file"))
            .status()
            .expect("run flotillad runtime");
        CmdOut {
            ok: status.success(),
            stdout: std::fs::read_to_string(&o).unwrap_or_default(),
            stderr: std::fs::read_to_string(&e).unwrap_or_default(),
        }
    }

    /// Runs and panics with stderr unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.ok, "flotillad runtime {}: {}", args.join(" "), o.stderr);
        o.stdout
    }

    /// `create` (remembered for cleanup).
    pub fn create(&self, id: &str, bundle: &Path, extra: &[&str]) -> CmdOut {
        self.created.borrow_mut().push(id.to_string());
        let mut args = vec!["create", "--bundle", bundle.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        args.push(id);
        self.run(&args)
    }

    /// The `status` field of `state`.
    pub fn status(&self, id: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["state", id])).expect("state JSON");
        v["status"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for RuntimeCli {
    fn drop(&mut self) {
        for id in self.created.borrow().iter() {
            let _ = self.run(&["delete", "--force", id]);
        }
    }
}

/// OCI images built here for tests (what `cargo xtask images` packs).
pub use flotilla_test_images as oci;

/// Debian's `docker-registry` on a loopback port, with its storage in a temp dir.
pub struct Registry {
    pub addr: String,
    pub storage: PathBuf,
    _proc: Proc,
}

impl Registry {
    pub fn start(dir: &Path) -> Result<Registry> {
        Self::start_with_auth(dir, None)
    }

    /// With `Some((user, password))`, the registry demands HTTP basic auth (htpasswd).
    pub fn start_with_auth(dir: &Path, auth: Option<(&str, &str)>) -> Result<Registry> {
        let auth_yaml = match auth {
            None => String::new(),
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("htpasswd (apt install apache2-utils)")?;
                let file = dir.join("htpasswd");
                std::fs::write(&file, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        Self::start_inner(dir, &auth_yaml)
    }

    /// A registry that accepts only bearer tokens signed by `tokens` (distribution's token
    /// auth: a 401 challenge names the token server as realm).
    pub fn start_with_token(dir: &Path, tokens: &TokenServer) -> Result<Registry> {
        let auth_yaml = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.addr,
            TokenServer::SERVICE,
            TokenServer::ISSUER,
            tokens.cert.display()
        );
        Self::start_inner(dir, &auth_yaml)
    }

    fn start_inner(dir: &Path, auth_yaml: &str) -> Result<Registry> {
        let addr = format!("127.0.0.1:{}", free_port());
        let storage = dir.join("registry-data");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("registry.yml");
        let yaml = format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth_yaml}", storage.display());
        std::fs::write(&config, yaml)?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let log = dir.join("registry.log");
        let mut proc = Proc::spawn("docker-registry", cmd, &log)
            .context("start docker-registry (apt install docker-registry)")?;
        wait_listening_while(&addr, Duration::from_secs(20), || proc.running()).with_context(
            || format!("docker-registry: {}", std::fs::read_to_string(&log).unwrap_or_default()),
        )?;
        Ok(Registry { addr, storage, _proc: proc })
    }

    /// Where the registry keeps blob `digest` ("sha256:…").
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

/// A registry token server (the Docker token authentication flow) for [`Registry::start_with_token`]:
/// `GET /token?service=…&scope=repository:NAME:ACTIONS` with optional basic credentials
/// returns a JWT signed with a fresh RSA key whose self-signed certificate the registry
/// trusts. Users with the right password get what they ask for; anonymous callers get
/// `pull` on the `public` repositories only (as Docker Hub does); a wrong password is a 401.
pub struct TokenServer {
    pub addr: String,
    pub cert: PathBuf,
    signer: Arc<Signer>,
    /// Every token request answered with a token.
    pub requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A token request the server answered: who asked (None: anonymous) and for which scopes.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub user: Option<String>,
    pub scopes: Vec<String>,
}

struct Signer {
    key: PathBuf,
    /// The certificate's DER, base64 (the JWT header's `x5c`).
    x5c: String,
}

impl Signer {
    fn mint(&self, subject: &str, access: &[(String, Vec<String>)]) -> Result<String> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]});
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": TokenServer::ISSUER, "sub": subject, "aud": TokenServer::SERVICE,
            "exp": now.as_secs() + 300, "nbf": now.as_secs() - 60, "iat": now.as_secs() - 60,
            "jti": format!("{}", now.as_nanos()), "access": access,
        });
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header)?),
            B64.encode(serde_json::to_vec(&claims)?)
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("openssl dgst")?;
        use std::io::Write;
        child.stdin.take().expect("piped").write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("openssl dgst -sign failed");
        }
        Ok(format!("{input}.{}", B64.encode(out.stdout)))
    }
}

impl TokenServer {
    pub const SERVICE: &'static str = "flotilla-registry";
    pub const ISSUER: &'static str = "flotilla-test-tokens";

    pub fn start(dir: &Path, users: &[(&str, &str)], public: &[&str]) -> Result<TokenServer> {
        let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=flotilla-test-tokens", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("openssl req (apt install openssl)")?;
        if !out.status.success() {
            bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
        }
        // A PEM body is the DER in standard base64: exactly what x5c holds.
        let pem = std::fs::read_to_string(&cert)?;
        let x5c: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let signer = Arc::new(Signer { key, x5c });
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let users: Vec<(String, String)> =
            users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect();
        let public: Vec<String> = public.iter().map(|p| p.to_string()).collect();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (signer, requests, stop) = (signer.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        let _ = serve_token(c, &signer, &users, &public, &requests);
                    }
                }
            })
        };
        Ok(TokenServer { addr, cert, signer, requests, stop, thread: Some(thread) })
    }

    /// A token for `subject` with `actions` on `repository`, as a client would be handed
    /// out of band (a CI job's registry token).
    pub fn mint(&self, subject: &str, repository: &str, actions: &[&str]) -> Result<String> {
        let actions = actions.iter().map(|a| a.to_string()).collect();
        self.signer.mint(subject, &[(repository.to_string(), actions)])
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP/1.1 request on `c`, answered and closed.
fn serve_token(
    mut c: std::net::TcpStream,
    signer: &Signer,
    users: &[(String, String)],
    public: &[String],
    requests: &Mutex<Vec<TokenRequest>>,
) -> Result<()> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use std::io::{BufRead, BufReader, Write};
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut basic = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((name, value)) = h.trim_end().split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                basic = value.trim().strip_prefix("Basic ").map(str::to_string);
            }
        }
    }
    let respond = |c: &mut std::net::TcpStream, status: &str, body: &str| -> Result<()> {
        write!(
            c,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut scopes = Vec::new();
    let mut service = String::new();
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("scope", v)) => scopes.push(percent_decode(v)),
            Some(("service", v)) => service = percent_decode(v),
            _ => {}
        }
    }
    if path != "/token" || service != TokenServer::SERVICE {
        return respond(&mut c, "404 Not Found", r#"{"errors":[{"code":"NOT_FOUND"}]}"#);
    }
    let user = match basic {
        None => None,
        Some(b) => {
            let decoded = String::from_utf8(STANDARD.decode(b)?)?;
            let (u, p) = decoded.split_once(':').unwrap_or((&decoded, ""));
            if !users.iter().any(|(uu, pp)| uu == u && pp == p) {
                return respond(
                    &mut c,
                    "401 Unauthorized",
                    r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                );
            }
            Some(u.to_string())
        }
    };
    let mut access = Vec::new();
    for scope in &scopes {
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted: Vec<String> = actions
            .split(',')
            .filter(|a| {
                user.is_some()
                    || (*a == "pull" && public.iter().any(|p| name.starts_with(&format!("{p}/"))))
            })
            .map(str::to_string)
            .collect();
        access.push((name.to_string(), granted));
    }
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(TokenRequest { user: user.clone(), scopes });
    let token = signer.mint(user.as_deref().unwrap_or(""), &access)?;
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
    respond(&mut c, "200 OK", &body.to_string())
}
