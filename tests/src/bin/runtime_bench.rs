//! `runtime-bench`: `create && start && delete -f` of the same busybox `/bin/true` bundle
//! with `flotilla-runtime` (what the agent runs), `flotillad runtime` (the same code in the
//! all-in-one binary), runc and crun (where it runs), rounds interleaved, each step
//! a separate process as a shell or containerd would run it. Prints mean, median and p95
//! per round, the ratios, and each runtime's peak RSS. Run through `cargo xtask bench runtime`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use flotilla_tests::bundle;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Container runtime benchmark: flotillad runtime vs runc vs crun")]
struct Args {
    /// The flotillad binary (release build); `flotilla-runtime` is looked for beside it.
    #[arg(long)]
    flotillad: PathBuf,
    /// Measured rounds per runtime.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Unmeasured rounds first, per runtime.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
}

struct Runtime {
    name: &'static str,
    /// The command and its global flags (the state root).
    argv: Vec<String>,
    times: Vec<Duration>,
    /// create, start and delete of each round.
    phases: Vec<[Duration; 3]>,
    /// Peak RSS of any step of the measured rounds.
    peak_rss_kib: i64,
    /// Peak RSS of any step including the warm-up, whose first create may do one-time work
    /// (flotilla-runtime loads and pins the cgroup v2 device program there).
    peak_rss_all_kib: i64,
    measuring: bool,
}

impl Runtime {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Runs one step, returning an error with its stderr on failure; tracks peak RSS.
    fn step(&mut self, args: &[&str]) -> Result<()> {
        let child = self.cmd(args).spawn().with_context(|| format!("spawning {}", self.argv[0]))?;
        let pid = child.id() as i32;
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // wait4 instead of Child::wait to get the child's own rusage (peak RSS); the
        // Child is not waited on afterwards, so the pid is reaped once.
        // SAFETY: status and ru are valid out-pointers; pid is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r != pid {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        self.peak_rss_all_kib = self.peak_rss_all_kib.max(ru.ru_maxrss);
        if self.measuring {
            self.peak_rss_kib = self.peak_rss_kib.max(ru.ru_maxrss);
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let mut err = String::new();
            if let Some(mut e) = child.stderr {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("{} {}: {}", self.name, args.join(" "), err.trim());
        }
        Ok(())
    }

    /// One round: the whole, and each of create, start and delete.
    fn round(&mut self, id: &str, bundle: &Path) -> Result<(Duration, [Duration; 3])> {
        let b = bundle.to_str().expect("utf-8 path");
        let mut phases = [Duration::ZERO; 3];
        let t = Instant::now();
        for (k, args) in [&["create", "--bundle", b, id][..], &["start", id], &["delete", "-f", id]]
            .into_iter()
            .enumerate()
        {
            let p = Instant::now();
            self.step(args)?;
            phases[k] = p.elapsed();
        }
        Ok((t.elapsed(), phases))
    }
}

fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    (mean, pct(0.5), pct(0.95))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("runtime-bench").tempdir_in("/var/tmp")?;
    let bundle_dir = dir.path().join("bundle");
    bundle::busybox_rootfs(&bundle_dir.join("rootfs"), &[])?;
    bundle::write_config(&bundle_dir, &bundle::runc_default_config(&["/bin/true"]))?;
    let root = |n: &str| dir.path().join(format!("state-{n}")).to_string_lossy().into_owned();

    let lean = args.flotillad.with_file_name("flotilla-runtime");
    anyhow::ensure!(
        lean.is_file(),
        "{} is missing (cargo build --release -p flotilla-daemon)",
        lean.display()
    );
    let mut runtimes = vec![
        Runtime {
            name: "flotilla-runtime",
            argv: vec![lean.to_string_lossy().into_owned(), "--root".into(), root("flotilla")],
            times: vec![],
            phases: vec![],
            peak_rss_kib: 0,
            peak_rss_all_kib: 0,
            measuring: false,
        },
        Runtime {
            name: "flotillad runtime",
            argv: vec![
                args.flotillad.to_string_lossy().into_owned(),
                "runtime".into(),
                "--root".into(),
                root("flotillad"),
            ],
            times: vec![],
            phases: vec![],
            peak_rss_kib: 0,
            peak_rss_all_kib: 0,
            measuring: false,
        },
    ];
    for (name, bin) in [("runc", "runc"), ("crun", "crun")] {
        let mut rt = Runtime {
            name,
            argv: vec![bin.into(), "--root".into(), root(name)],
            times: vec![],
            phases: vec![],
            peak_rss_kib: 0,
            peak_rss_all_kib: 0,
            measuring: false,
        };
        // A peer that cannot run here is reported and left out, never faked.
        match rt.round("probe", &bundle_dir) {
            Ok(_) => runtimes.push(rt),
            Err(e) => {
                let _ = rt.cmd(&["delete", "-f", "probe"]).status();
                println!("{name}: cannot run on this host, left out: {e:#}");
            }
        }
    }

    println!(
        "bundle: busybox /bin/true, runc's default config (pid, net, ipc, uts, mount namespaces); {} rounds after {} warm-up, interleaved",
        args.rounds, args.warmup
    );
    for i in 0..args.warmup + args.rounds {
        // Rotate who goes first so no runtime always follows the same one.
        let n = runtimes.len();
        for k in 0..n {
            let rt = &mut runtimes[(i + k) % n];
            let id = format!("bench-{i}");
            rt.measuring = i >= args.warmup;
            let (t, phases) = rt.round(&id, &bundle_dir)?;
            if i >= args.warmup {
                rt.times.push(t);
                rt.phases.push(phases);
            }
        }
    }

    println!();
    println!(
        "| runtime | mean ms | median ms | p95 ms | peak RSS KiB | with warm-up KiB | mean vs flotilla-runtime |"
    );
    println!("|---|---|---|---|---|---|---|");
    let (our_mean, _, _) = stats(&runtimes[0].times);
    for rt in &runtimes {
        let (mean, median, p95) = stats(&rt.times);
        println!(
            "| {} | {mean:.2} | {median:.2} | {p95:.2} | {} | {} | {:.2}x |",
            rt.name,
            rt.peak_rss_kib,
            rt.peak_rss_all_kib,
            mean / our_mean
        );
    }
    // Where each runtime's time goes.
    println!();
    println!("| runtime | create mean ms | start mean ms | delete -f mean ms |");
    println!("|---|---|---|---|");
    for rt in &runtimes {
        let mean = |k: usize| {
            rt.phases.iter().map(|p| p[k].as_secs_f64() * 1e3).sum::<f64>() / rt.phases.len() as f64
        };
        println!("| {} | {:.2} | {:.2} | {:.2} |", rt.name, mean(0), mean(1), mean(2));
    }
    println!();
    for rt in &runtimes[1..] {
        let (m, md, _) = stats(&rt.times);
        let (om, omd, _) = stats(&runtimes[0].times);
        println!(
            "flotilla-runtime is {:.2}x faster than {} (mean), {:.2}x (median); peak RSS {:.2}x smaller",
            m / om,
            rt.name,
            md / omd,
            rt.peak_rss_kib as f64 / runtimes[0].peak_rss_kib as f64
        );
    }
    Ok(())
}
