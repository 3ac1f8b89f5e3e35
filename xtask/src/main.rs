//! `cargo xtask …`: everything plain cargo cannot do — install prerequisites, run the whole test
//! suite, start a cluster, run benchmarks.
//!
//! ```text
//! setup ──▶ (apt packages, the eBPF crate's pinned nightly, bpf-linker)
//! test  ──▶ setup ─▶ fmt --check ─▶ clippy -D warnings ─▶ cargo test --workspace
//! images──▶ build flotilla-probe ─▶ probe.tar, busybox.tar (OCI layouts) in target/images
//! up    ──▶ setup ─▶ build flotillad ─▶ images into <data-dir>/images ─▶ exec `flotillad up`
//! bench ──▶ setup ─▶ release build ─▶ peer (etcd) + ours, same run, ratio table
//! ```

#![forbid(unsafe_code)]

mod bench;
mod setup;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Flotilla's build, test and benchmark entry point")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (apt packages, nightly rust-src, bpf-linker); idempotent.
    Setup,
    /// Run setup, formatting and lint checks, and every test in the workspace.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy` (quicker local iterations).
        #[arg(long)]
        no_lint: bool,
        /// Skip the runtime tests on cgroup v2 in `cargo xtask vm` (also skipped when a test
        /// filter is given).
        #[arg(long)]
        no_vm: bool,
        /// Skip the fuzz targets (run for --fuzz-seconds each otherwise).
        #[arg(long)]
        no_fuzz: bool,
        #[arg(long, default_value_t = 30)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets (manifest decoding and admission, selector parsing) for a
    /// while each, with the pinned nightly; a crash fails and leaves its input in
    /// `api/fuzz/artifacts/`.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Build the test images (`localhost/probe`, `localhost/busybox`, tagged with the
    /// workspace version) as importable OCI layout tarballs.
    Images {
        #[arg(long, default_value = "target/images")]
        out: std::path::PathBuf,
    },
    /// Start a whole single-node cluster in the foreground (`flotillad up`), with the test
    /// images preloaded.
    Up {
        /// Where the cluster keeps its state.
        #[arg(long, default_value = "/var/lib/flotilla")]
        data_dir: String,
        /// Extra arguments passed to `flotillad up`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a command as root in a guest with pure cgroup v2 (Debian's kernel, this
    /// host's root over 9p, the workspace read-write).
    Vm {
        #[arg(long, default_value_t = 4096)]
        memory: u32,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Use KVM (nested KVM hangs on the development machines; the default emulates).
        #[arg(long)]
        kvm: bool,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Benchmarks, each against its peer in the same run (`store`: our store vs etcd).
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
}

/// Puts `flotilla` beside cargo's own binaries (`$CARGO_HOME/bin`, on a rustup user's PATH)
/// and, when there is no `~/.kube/config`, links it to the admin kubeconfig that `flotillad up`
/// writes, so the README's next command works. An existing kubeconfig is never touched.
fn install_cli_and_kubeconfig(data_dir: &std::path::Path) -> Result<()> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")))
        .ok_or_else(|| anyhow::anyhow!("neither CARGO_HOME nor HOME is set"))?;
    let bin = cargo_home.join("bin");
    std::fs::create_dir_all(&bin)?;
    let built = util::workspace_root().join("target/release/flotilla");
    // Copy to a temporary name and rename: a running `flotilla` keeps its old inode.
    let tmp = bin.join(".flotilla.new");
    std::fs::copy(&built, &tmp)?;
    std::fs::rename(&tmp, bin.join("flotilla"))?;
    eprintln!("installed {}", bin.join("flotilla").display());
    let Some(home) = home else { return Ok(()) };
    let kube = home.join(".kube");
    let config = kube.join("config");
    let admin = std::path::absolute(data_dir.join("admin.conf"))?;
    if std::fs::symlink_metadata(&config).is_ok() {
        if std::fs::read_link(&config).ok().as_deref() != Some(admin.as_path()) {
            eprintln!(
                "{} exists and is left alone; use `--kubeconfig {}` or KUBECONFIG",
                config.display(),
                admin.display()
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(&kube)?;
    std::os::unix::fs::symlink(&admin, &config)?;
    eprintln!("linked {} -> {}", config.display(), admin.display());
    Ok(())
}

/// The eBPF crate lives outside the workspace (it builds for bpfel-unknown-none with a pinned
/// nightly),
/// so the workspace's fmt and clippy do not see it.
fn lint_ebpf() -> Result<()> {
    let root = util::workspace_root();
    let dir = root.join("ebpf/flotilla-ebpf");
    let toolchain = util::ebpf_toolchain()?;
    let mut fmt = std::process::Command::new("rustup");
    fmt.args(["run", &toolchain, "cargo", "fmt", "--check"])
        .current_dir(&dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    util::run(fmt)?;
    let mut clippy = std::process::Command::new("rustup");
    clippy
        .args(["run", &toolchain, "cargo", "clippy", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .current_dir(&dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "--cfg=bpf_target_arch=\"x86_64\"")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    util::run(clippy)
}

/// The fuzz crate is outside the workspace too (nightly, libFuzzer): its formatting is
/// checked here; its build is the fuzz phase's first step.
fn lint_fuzz() -> Result<()> {
    let root = util::workspace_root();
    let mut fmt = std::process::Command::new("rustfmt");
    fmt.args(["--check", "--edition", "2021"]).current_dir(&root);
    for t in FUZZ_TARGETS {
        fmt.arg(format!("api/fuzz/fuzz_targets/{t}.rs"));
    }
    util::run(fmt)
}

const FUZZ_TARGETS: &[&str] = &["manifest", "selector", "request"];

/// Runs each fuzz target for `seconds` (all of them when `targets` is empty).
/// `sanitizer`: cargo-fuzz's `-s` (address, or none where the build time counts most).
fn fuzz(seconds: u64, targets: &[String], sanitizer: &str) -> Result<()> {
    setup::cargo_fuzz()?;
    let root = util::workspace_root();
    let toolchain = util::ebpf_toolchain()?;
    let all: Vec<String> = FUZZ_TARGETS.iter().map(|t| t.to_string()).collect();
    for t in if targets.is_empty() { &all } else { targets } {
        anyhow::ensure!(FUZZ_TARGETS.contains(&t.as_str()), "no fuzz target {t:?}");
        // The corpus grows across runs; it lives in target/, not in the repository.
        let corpus = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let mut cmd = std::process::Command::new("rustup");
        cmd.args(["run", &toolchain, "cargo", "fuzz", "run", "-O", "-s", sanitizer, t])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}")])
            .current_dir(root.join("api/fuzz"))
            .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("CARGO");
        util::run(cmd).map_err(|e| anyhow::anyhow!("fuzz target {t}: {e:#}"))?;
    }
    Ok(())
}

/// Builds the test images into `out`; returns the tarballs with their image names.
fn images(out: &std::path::Path) -> Result<Vec<(std::path::PathBuf, String)>> {
    let root = util::workspace_root();
    let out = root.join(out);
    let probe = flotilla_test_images::build_probe(&root.join("target/images"))?;
    let built = flotilla_test_images::build_all(&out, &probe, env!("CARGO_PKG_VERSION"))?;
    for (tarball, name) in &built.tarballs {
        println!("{name}: {}", tarball.display());
    }
    Ok(built.tarballs)
}

/// The container runtime's end-to-end tests again on a pure cgroup v2 host, in a guest of
/// `cargo xtask vm`: these machines are hybrid, and v2 is what most fleets run. The guest has
/// no toolchain, so everything is built here first.
fn runtime_tests_on_cgroup_v2() -> Result<()> {
    let root = util::workspace_root();
    // As the tests build them (flotilla_tests::flotillad): a no-op after the build phase.
    util::cargo(&["build", "--workspace", "--bins", "--tests"])?;
    flotilla_test_images::build_probe(&root.join("target/images"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        // --workspace, as the test run: with -p alone cargo resolves features differently
        // and rebuilds the whole graph.
        .args(["test", "--workspace", "--test", "runtime", "--no-run"])
        .arg("--message-format=json")
        .current_dir(&root)
        .output()?;
    anyhow::ensure!(out.status.success(), "building the runtime tests failed");
    let key = "\"executable\":\"";
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"name\":\"runtime\""))
        .find_map(|l| {
            let rest = &l[l.find(key)? + key.len()..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("cargo named no runtime test executable"))?;
    eprintln!("xtask: the runtime tests on cgroup v2, in a VM");
    let cmd = ["env", "FLOTILLA_TEST_PREBUILT=1", &exe, "--test-threads=1"];
    vm::run(4096, 2, false, &cmd.map(String::from))
        .map_err(|e| anyhow::anyhow!("runtime tests on cgroup v2: {e:#}"))
}

fn main() -> std::process::ExitCode {
    // The error with its causes and no backtrace: the tail of a CI log is for the failure.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Fuzz { seconds, targets } => {
            setup::setup()?;
            fuzz(seconds, &targets, "address")
        }
        Cmd::Test { no_lint, no_vm, no_fuzz, fuzz_seconds, args } => {
            // Each phase's time, printed at the end: CI's budget is watched by phase.
            let mut phases: Vec<(&str, std::time::Duration)> = Vec::new();
            let mut timed = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| {
                let start = std::time::Instant::now();
                let r = f();
                phases.push((name, start.elapsed()));
                eprintln!("xtask: {name} took {:.0?}", start.elapsed());
                r
            };
            timed("setup", &mut || setup::setup())?;
            if !no_lint {
                timed("lint", &mut || {
                    util::cargo(&["fmt", "--all", "--", "--check"])?;
                    lint_fuzz()?;
                    lint_ebpf()
                })?;
                // Clippy runs inside the test build (every target `cargo clippy --workspace
                // --all-targets` checks is built there): one compile of the tree, not two.
                util::clippy_in_builds()?;
            }
            timed(if no_lint { "build tests" } else { "build tests + clippy" }, &mut || {
                util::cargo(&["test", "--workspace", "--no-run"])?;
                // The binaries the tests start (flotillad, flotilla-runtime, flotilla), with
                // the tests' feature set, so that no test builds them itself.
                util::cargo(&["build", "--workspace", "--bins", "--tests"])
            })?;
            // The build leaves gigabytes of dirty pages; written back while the tests run,
            // they make every Raft fsync wait behind them (minutes per suite). Flush first.
            timed("sync", &mut || util::run(std::process::Command::new("sync")))?;
            let mut test = vec!["test", "--workspace", "--no-fail-fast"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            let host = timed("host tests", &mut || util::cargo_test(&test));
            // Both run, whichever fails: a v2 failure is worth seeing next to a host one.
            let v2 = if no_vm || !args.is_empty() {
                eprintln!("xtask: runtime tests on cgroup v2 (cargo xtask vm) skipped");
                Ok(())
            } else {
                timed("cgroup v2 VM tests", &mut || runtime_tests_on_cgroup_v2())
            };
            let fuzzed = if no_fuzz || !args.is_empty() {
                eprintln!("xtask: fuzz targets skipped");
                Ok(())
            } else {
                // Without AddressSanitizer: the targets are safe Rust, where a bug is a panic
                // that libFuzzer catches anyway, and the instrumented build costs minutes.
                // `cargo xtask fuzz` keeps it.
                timed("fuzz", &mut || fuzz(fuzz_seconds, &[], "none"))
            };
            eprintln!("xtask: phases:");
            for (name, d) in &phases {
                eprintln!("  {name:<20} {:>6.0?}", d);
            }
            host.and(v2).and(fuzzed)
        }
        Cmd::Images { out } => {
            // busybox-static comes from apt.
            setup::setup()?;
            images(&out)?;
            Ok(())
        }
        Cmd::Up { data_dir, args } => {
            setup::setup()?;
            util::cargo(&["build", "--release", "-p", "flotilla-daemon", "-p", "flotilla-cli"])?;
            install_cli_and_kubeconfig(std::path::Path::new(&data_dir))?;
            // `flotillad up` imports every tarball in <data-dir>/images at start.
            let preload = std::path::Path::new(&data_dir).join("images");
            for (tarball, _) in images(&util::workspace_root().join("target/images"))? {
                let to = preload.join(tarball.file_name().expect("a file"));
                std::fs::create_dir_all(&preload)?;
                std::fs::copy(&tarball, &to)?;
            }
            let bin = util::workspace_root().join("target/release/flotillad");
            let mut cmd = std::process::Command::new(bin);
            cmd.args(["up", "--data-dir", &data_dir]).args(&args);
            util::exec(cmd)
        }
        Cmd::Bench { what } => {
            setup::setup()?;
            bench::run(what)
        }
        Cmd::Vm { memory, cpus, kvm, command } => {
            setup::setup()?;
            vm::run(memory, cpus, kvm, &command)
        }
    }
}
