//! Helpers for end-to-end tests and benchmarks: build and start real `flotillad` (and peer)
//! processes on loopback, and stop them — on drop too, so a failing test leaves nothing running.

use anyhow::{bail, Context, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `flotillad` binary of this build profile, built once per test process.
pub fn flotillad() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-binary> → target/<profile>/flotillad
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "flotilla-daemon", "--bin", "flotillad"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building flotillad failed");
        profile_dir.join("flotillad")
    })
    .clone()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
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
        self.proc = Some(Proc::spawn(&self.name, cmd, &log)?);
        wait_listening(&self.client, Duration::from_secs(20))
            .with_context(|| format!("{} did not start; see {}", self.name, log.display()))
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

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }
}

/// `n` members forming one cluster (n = 1: a plain single member).
pub fn cluster(n: usize, dir: &Path, extra: &[&str]) -> Result<Vec<Member>> {
    let mut members: Vec<Member> = (0..n).map(|i| Member::new(&format!("n{i}"), dir)).collect();
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
