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
    // Each binary's `failures:` section (what the failed tests printed), kept so the error
    // repeats it at the very end: CI shows only a log's tail, which the fuzz phase fills.
    let mut failures: Vec<String> = Vec::new();
    let mut in_failures = false;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if line == "failures:" && !in_failures {
            in_failures = true;
            failures.push(String::new());
        } else if in_failures && !line.starts_with("test result: ") {
            let block = failures.last_mut().expect("pushed at `failures:`");
            block.push_str(&line);
            block.push('\n');
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            in_failures = false;
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
        bail!("cargo test failed with {status}{}", failure_digest(&failures));
    }
    Ok(())
}

/// The failed tests' output, each test's part cut to its last lines (where the panic is).
fn failure_digest(failures: &[String]) -> String {
    const KEEP: usize = 30;
    let mut digest = String::new();
    for block in failures {
        let mut sections: Vec<Vec<&str>> = Vec::new();
        for line in block.lines() {
            if line.starts_with("---- ") || sections.is_empty() {
                sections.push(Vec::new());
            }
            sections.last_mut().expect("pushed above").push(line);
        }
        for lines in sections {
            let cut = lines.len().saturating_sub(KEEP);
            digest.push('\n');
            if cut > 0 {
                digest.push_str(&format!("{}\n[{cut} lines cut, see the log]\n", lines[0]));
            }
            digest.push_str(lines[cut..].join("\n").trim_end());
            digest.push('\n');
        }
    }
    digest
}

/// Makes every later cargo command of this process (and of the tests it starts) compile the
/// workspace's crates through clippy-driver with `-D warnings`, as `cargo clippy` does for a
/// check. The test build then lints what it compiles: CI compiled the whole dependency tree
/// twice before, once for clippy's check and once for the tests (~15 minutes of the run).
/// The wrapper is part of cargo's fingerprints, so every later build must keep it (it is in
/// the environment of all of them); the nested eBPF and fuzz builds remove it.
pub fn clippy_in_builds() -> Result<()> {
    let out = Command::new("rustup")
        .args(["which", "clippy-driver"])
        .current_dir(workspace_root())
        .output()
        .context("rustup which clippy-driver")?;
    if !out.status.success() {
        bail!("no clippy-driver: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let driver = String::from_utf8(out.stdout)?.trim().to_string();
    std::env::set_var("RUSTC_WORKSPACE_WRAPPER", driver);
    std::env::set_var("CLIPPY_ARGS", "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__");
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_digest_keeps_each_failed_tests_last_lines() {
        let mut out = String::from("\n---- a::long stdout ----\n");
        for n in 0..50 {
            out.push_str(&format!("line {n}\n"));
        }
        out.push_str(
            "\n---- b stdout ----\npanicked at b.rs:1:1\n\nfailures:\n    a::long\n    b\n",
        );
        let d = super::failure_digest(&[out]);
        assert!(
            d.contains("---- a::long stdout ----\n[22 lines cut, see the log]\nline 21\n"),
            "{d}"
        );
        assert!(!d.contains("line 20\n"), "{d}");
        assert!(
            d.contains(
                "---- b stdout ----\npanicked at b.rs:1:1\n\nfailures:\n    a::long\n    b\n"
            ),
            "{d}"
        );
    }
}
