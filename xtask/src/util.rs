//! Process helpers shared by the xtask commands.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// The pinned nightly the eBPF crate builds with (its rust-toolchain.toml).
pub fn ebpf_toolchain() -> Result<String> {
    let file = workspace_root().join("ebpf/flotilla-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?.trim();
            Some(v.strip_prefix('"')?.strip_suffix('"')?.to_string())
        })
        .with_context(|| format!("{}: no channel", file.display()))
}

/// Runs a command to completion, failing with its command line if it fails.
pub fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let status = cmd.status().with_context(|| format!("failed to start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// `cargo <args>` in the workspace root, with the toolchain cargo that runs xtask.
pub fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    run(cmd)
}

/// `cargo test …`, echoing its output and closing with one summary line over every test binary
/// (`N passed, N failed`), so a reader of the log need not add up dozens of `test result:` lines.
pub fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Tests whose prerequisite is missing record themselves here (flotilla-prereq): they
    // count as skipped, not passed, and are listed with the reason at the end.
    let skip_log = workspace_root().join("target/skipped-tests.txt");
    let _ = std::fs::remove_file(&skip_log);
    cmd.args(args)
        .current_dir(workspace_root())
        .env("FLOTILLA_SKIP_LOG", &skip_log)
        .stdout(std::process::Stdio::piped());
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd.spawn().context("failed to start cargo test")?;
    let out = child.stdout.take().expect("piped stdout");
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(what))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    let skips: Vec<String> =
        std::fs::read_to_string(&skip_log).unwrap_or_default().lines().map(String::from).collect();
    if !skips.is_empty() {
        println!("\nskipped for a missing prerequisite (they fail when CI is set):");
        for s in &skips {
            println!("  {s}");
        }
    }
    let (passed, ignored) =
        (passed.saturating_sub(skips.len() as u64), ignored + skips.len() as u64);
    println!("\n{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// Whether a program is on PATH and answers `--version`.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Replaces this process with `cmd` so signals (Ctrl-C) go straight to it.
pub fn exec(mut cmd: Command) -> Result<()> {
    use std::os::unix::process::CommandExt;
    eprintln!("xtask: exec {cmd:?}");
    let err = cmd.exec();
    Err(err).context("exec failed")
}
