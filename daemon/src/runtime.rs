//! `flotillad runtime`: an OCI runtime with runc's command line, over flotilla-isolation.
//! Runs without a tokio runtime: `create` forks, and needs a single-threaded process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use flotilla_isolation::logs::LogConfig;
use flotilla_isolation::{container, CreateOptions, Runtime};

#[derive(Args)]
pub struct RuntimeArgs {
    /// State directory of the containers.
    #[arg(long, global = true, default_value = container::DEFAULT_ROOT)]
    root: PathBuf,
    /// Accepted for runc compatibility (containerd passes it); logs go to stderr.
    #[arg(long, global = true, hide = true)]
    log: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long = "log-format", global = true, hide = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    cmd: RuntimeCmd,
}

#[derive(Subcommand)]
enum RuntimeCmd {
    /// Create a container from a bundle; its process waits for `start`.
    Create(CreateArgs),
    /// Create and start a container, returning once its process runs (`runc run -d`).
    Run(CreateArgs),
    /// Run the created container's process.
    Start { id: String },
    /// Print the container's state as OCI state JSON.
    State { id: String },
    /// Send a signal to the container's init (default SIGTERM).
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container; --force kills a running one first.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Wait for the container to stop and print its exit as JSON.
    Wait {
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Run another process in a running container; exits with its exit code.
    Exec {
        /// Allocate a pty inside the container for the process.
        #[arg(short, long)]
        tty: bool,
        /// Working directory (default: the container's).
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// KEY=VALUE added to the container's environment; repeatable.
        #[arg(short, long)]
        env: Vec<String>,
        /// Return once the process runs instead of waiting for it.
        #[arg(short, long)]
        detach: bool,
        /// With --tty: send the pty master over this unix socket instead of relaying it.
        #[arg(long, requires = "tty")]
        console_socket: Option<PathBuf>,
        /// File to write the process's pid to.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        id: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List containers.
    List,
    /// Print the container's cgroup usage as JSON.
    Stats { id: String },
}

#[derive(Args)]
struct CreateArgs {
    /// Bundle directory holding config.json.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// File to write the container's init pid to.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Write stdout/stderr to this file in the CRI log format instead of passing
    /// the runtime's own stdio through.
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// Rotate the log past this many bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    log_max_bytes: u64,
    /// Rotated log files to keep.
    #[arg(long, default_value_t = 5)]
    log_max_files: u32,
    id: String,
}

impl CreateArgs {
    fn create(self, rt: &Runtime) -> Result<String> {
        let log = self.log_path.map(|path| LogConfig {
            path,
            max_bytes: self.log_max_bytes,
            max_files: self.log_max_files,
        });
        rt.create(&self.id, &CreateOptions { bundle: self.bundle, pid_file: self.pid_file, log })?;
        Ok(self.id)
    }
}

pub fn run(args: RuntimeArgs) -> Result<()> {
    let rt = Runtime::new(&args.root);
    match args.cmd {
        RuntimeCmd::Create(c) => {
            c.create(&rt)?;
        }
        RuntimeCmd::Run(c) => {
            let id = c.create(&rt)?;
            if let Err(e) = rt.start(&id) {
                // Nothing half-made stays behind: the created container goes again.
                let _ = rt.delete(&id, true);
                return Err(e.into());
            }
        }
        RuntimeCmd::Start { id } => rt.start(&id)?,
        RuntimeCmd::State { id } => {
            let (st, status) = rt.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&st.oci_json(status))?);
        }
        RuntimeCmd::Kill { id, signal } => rt.kill(&id, container::parse_signal(&signal)?)?,
        RuntimeCmd::Delete { force, id } => rt.delete(&id, force)?,
        RuntimeCmd::Wait { id, timeout } => {
            let exit = rt
                .wait(&id, Duration::from_secs(timeout))?
                .with_context(|| format!("container {id:?} still running after {timeout}s"))?;
            println!("{}", serde_json::to_string(&exit)?);
        }
        RuntimeCmd::Exec { tty, cwd, env, detach, console_socket, pid_file, id, command } => {
            flotilla_isolation::reexec_from_sealed_copy()
                .context("re-executing from a sealed copy")?;
            let opts =
                container::ExecOptions { args: command, env, cwd, tty, detach, console_socket };
            match rt.exec(&id, &opts)? {
                container::ExecResult::Detached(pid) => {
                    if let Some(p) = pid_file {
                        std::fs::write(&p, pid.to_string())
                            .with_context(|| format!("writing {}", p.display()))?;
                    }
                }
                container::ExecResult::Exited(code) => std::process::exit(code),
            }
        }
        RuntimeCmd::List => {
            println!("{:<24} {:>8} {:<8} BUNDLE", "ID", "PID", "STATUS");
            for (st, status) in rt.list()? {
                println!(
                    "{:<24} {:>8} {:<8} {}",
                    st.id,
                    st.pid,
                    status.as_str(),
                    st.bundle.display()
                );
            }
        }
        RuntimeCmd::Stats { id } => println!("{}", serde_json::to_string(&rt.stats(&id)?)?),
    }
    Ok(())
}
