//! Process helpers shared by the xtask commands.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
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
