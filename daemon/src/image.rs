//! `flotillad image`: the node's image store from the command line — pull, import,
//! list, remove, garbage-collect, and mount an image as a container rootfs.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use flotilla_isolation::image::pull::{Auth, PullOptions};
use flotilla_isolation::image::store::ImageStore;
use flotilla_isolation::image::{rootfs, UnpackOptions};

#[derive(Args)]
pub struct ImageArgs {
    /// The image store directory.
    #[arg(long, global = true, default_value = "/var/lib/flotilla/images-store")]
    root: PathBuf,
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Pull from a registry (HTTPS unless --insecure-registry names it).
    Pull {
        reference: String,
        /// host:port of a registry to speak plain HTTP to; repeatable.
        #[arg(long)]
        insecure_registry: Vec<String>,
        #[arg(long, env = "FLOTILLA_REGISTRY_USER")]
        username: Option<String>,
        #[arg(long, env = "FLOTILLA_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, env = "FLOTILLA_REGISTRY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Also unpack the layers.
        #[arg(long)]
        unpack: bool,
    },
    /// Import OCI layout or docker-archive tarballs.
    Import { tarballs: Vec<PathBuf> },
    /// List references.
    List,
    /// Remove a reference (blobs go at the next gc).
    Rm { reference: String },
    /// Remove blobs and snapshots no reference uses.
    Gc,
    /// Unpack an image and mount it as an overlay rootfs at <dir>/merged.
    Mount { reference: String, dir: PathBuf },
    /// Unmount a rootfs made by `mount` and remove its writable layer.
    Unmount { dir: PathBuf },
}

pub fn run(args: ImageArgs) -> Result<()> {
    let store = ImageStore::open(&args.root)?;
    match args.cmd {
        ImageCmd::Pull { reference, insecure_registry, username, password, token, unpack } => {
            let auth = match (username, password, token) {
                (Some(u), Some(p), _) => Auth::Basic { username: u, password: p },
                (_, _, Some(t)) => Auth::Bearer(t),
                (None, None, None) => Auth::Anonymous,
                _ => bail!("--username and --password go together"),
            };
            let opts = PullOptions { auth, insecure_registries: insecure_registry };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let image = rt.block_on(store.pull(&reference, &opts, &mut |p| {
                eprint!(
                    "\rpulling {reference}: {}/{} layers, {}/{} bytes",
                    p.layers_done, p.layers_total, p.bytes_done, p.bytes_total
                );
            }))?;
            eprintln!();
            if unpack {
                store.unpack(&image, UnpackOptions::default(), &mut |_| {})?;
            }
            println!("{} {}", image.reference, image.manifest);
        }
        ImageCmd::Import { tarballs } => {
            for t in tarballs {
                for r in store.import_tar(&t)? {
                    println!("{r}");
                }
            }
        }
        ImageCmd::List => {
            for (r, d) in store.list()? {
                println!("{r} {d}");
            }
        }
        ImageCmd::Rm { reference } => {
            if !store.untag(&reference)? {
                bail!("image {reference} is not in the store");
            }
        }
        ImageCmd::Gc => {
            let s = store.gc(&HashSet::new())?;
            println!("removed {} blobs, {} snapshots", s.blobs_removed, s.snapshots_removed);
        }
        ImageCmd::Mount { reference, dir } => {
            let image = store.resolve(&reference)?;
            let layers = store.unpack(&image, UnpackOptions::default(), &mut |_| {})?;
            println!("{}", rootfs::mount_overlay(&layers, &dir)?.display());
        }
        ImageCmd::Unmount { dir } => rootfs::remove(&dir)?,
    }
    Ok(())
}
