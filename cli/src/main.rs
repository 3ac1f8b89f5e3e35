//! `flotilla`: the user's command line. Resource commands arrive with the API server.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Command line for a Flotilla cluster")]
struct Cli {
    /// API server address (also FLOTILLA_SERVER).
    #[arg(long, env = "FLOTILLA_SERVER", default_value = "http://127.0.0.1:6443", global = true)]
    server: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "the Flotilla API server is not available yet; {} serves only the store so far",
        cli.server
    )
}
