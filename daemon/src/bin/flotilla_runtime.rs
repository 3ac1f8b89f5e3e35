//! `flotilla-runtime`: the OCI runtime of `flotillad runtime` (same code, same command line)
//! as a binary of its own. The agent runs its containers with it when it sits beside
//! `flotillad`: each create, start, exec or probe is an exec of the runtime, and this one
//! starts in a fraction of the time.

use clap::Parser;

use flotilla_daemon::runtime;

#[derive(Parser)]
#[command(
    name = "flotilla-runtime",
    version,
    about = "Flotilla's OCI runtime (runc's command line)"
)]
struct Cli {
    #[command(flatten)]
    args: runtime::RuntimeArgs,
}

fn main() {
    // Only when asked: building a subscriber is startup time on every exec.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_RUNTIME_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    // No async runtime: create forks and must stay single-threaded.
    if let Err(e) = runtime::run(Cli::parse().args) {
        // runc prints the error chain on one line and exits 1; so do we.
        eprintln!("flotilla-runtime: {e:#}");
        std::process::exit(1);
    }
}
