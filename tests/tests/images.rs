//! Images end to end (root): an image built here is pushed with skopeo to Debian's
//! docker-registry on loopback, pulled back by `flotillad image`, verified, unpacked,
//! mounted as an overlay and run; tampered blobs, foreign platforms and tarball imports.

use flotilla_tests::{bundle, flotillad, oci, probe, Registry, RuntimeCli, TokenServer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `flotillad image --root <root>`; unmounts what it mounted when dropped.
struct Images {
    root: PathBuf,
    mounted: std::cell::RefCell<Vec<PathBuf>>,
}

impl Images {
    fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf(), mounted: Default::default() }
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(flotillad())
            .arg("image")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()
            .expect("run flotillad image");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "flotillad image {}: {err}", args.join(" "));
        out
    }

    fn mount(&self, reference: &str, dir: &Path) -> PathBuf {
        self.mounted.borrow_mut().push(dir.to_path_buf());
        PathBuf::from(self.ok(&["mount", reference, dir.to_str().unwrap()]).trim())
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for d in self.mounted.borrow().iter() {
            let _ = self.run(&["unmount", d.to_str().unwrap()]);
        }
    }
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(args).output().expect("run skopeo (apt install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The probe image built in `dir`, pushed with skopeo to a registry started there
/// (demanding `auth` if given): what was built, the registry, the image's reference.
fn pushed_probe(dir: &Path, auth: Option<(&str, &str)>) -> (oci::Layout, Registry, String) {
    let reg = Registry::start_with_auth(dir, auth).unwrap();
    let (built, remote) = push_probe(dir, &reg, "probe", auth);
    (built, reg, remote)
}

/// The probe image built in `dir` (once), pushed with skopeo to `reg` as `repo:latest`.
fn push_probe(
    dir: &Path,
    reg: &Registry,
    repo: &str,
    creds: Option<(&str, &str)>,
) -> (oci::Layout, String) {
    let layout = dir.join("layout");
    let built = oci::write_probe_layout(&layout, &probe(), "latest", "amd64", true).unwrap();
    let remote = format!("{}/{repo}:latest", reg.addr);
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c.as_str()]);
    }
    let (src, dst) = (format!("oci:{}:latest", layout.display()), format!("docker://{remote}"));
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(&args);
    (built, remote)
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("img-test").tempdir_in("/var/tmp").unwrap()
}

/// Push with skopeo, pull with flotillad, digests equal, the overlay hides whited-out
/// files, and a container runs on it with the overlay as its root.
#[test]
fn an_image_from_a_real_registry_pulls_verified_and_runs_on_an_overlay() {
    let dir = tmp();
    let (built, reg, remote) = pushed_probe(dir.path(), None);

    // The runtime is declared after the images: its container goes before the overlay.
    let images = Images::new(&dir.path().join("store"));
    let out = images.ok(&["pull", "--insecure-registry", &reg.addr, &remote]);
    assert!(out.contains(&remote), "{out}");
    let listed = images.ok(&["list"]);
    assert!(listed.contains(&remote), "{listed}");
    for l in &built.layers {
        let blob = images.root.join("content/blobs/sha256").join(l.trim_start_matches("sha256:"));
        assert_eq!(
            oci::sha256(&std::fs::read(&blob).unwrap()),
            *l,
            "layer stored under its digest"
        );
    }

    let merged = images.mount(&remote, &dir.path().join("c1"));
    assert!(merged.join("bin/flotilla-probe").is_file());
    assert!(merged.join("etc/hostname").is_file());
    assert!(!merged.join("etc/removed").exists(), "the whiteout of layer 2 hides layer 1's file");

    let rt = RuntimeCli::new(&dir.path().join("state"));
    let b = dir.path().join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let mut config = bundle::runc_default_config(&["/bin/flotilla-probe", "inspect"]);
    config["root"] = json!({"path": merged, "readonly": false});
    bundle::write_config(&b, &config).unwrap();
    let log = dir.path().join("c1.log");
    let created = rt.create("img", &b, &["--log-path", log.to_str().unwrap()]);
    assert!(created.ok, "{}", created.stderr);
    rt.ok(&["start", "img"]);
    let exit: serde_json::Value =
        serde_json::from_str(&rt.ok(&["wait", "img", "--timeout", "30"])).unwrap();
    assert_eq!(exit["code"], 0, "{exit}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(" stdout F rootfs=overlay"),
        "the container's root is the overlay: {text}"
    );
    rt.ok(&["delete", "img"]);
    drop(rt);

    images.ok(&["rm", &remote]);
    let gc = images.ok(&["gc"]);
    assert!(gc.contains("removed 4 blobs"), "manifest, config, two layers: {gc}");
}

/// A blob changed in the registry's storage is refused, named by its digest, and the
/// reference is not created.
#[test]
fn a_tampered_blob_is_refused_and_nothing_is_tagged() {
    let dir = tmp();
    let (built, reg, remote) = pushed_probe(dir.path(), None);
    let victim = &built.layers[1];
    let path = reg.blob_path(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let images = Images::new(&dir.path().join("store"));
    let (ok, _, err) = images.run(&["pull", "--insecure-registry", &reg.addr, &remote]);
    assert!(!ok, "a tampered layer was accepted");
    assert!(err.contains(victim.as_str()), "the error names the blob: {err}");
    assert_eq!(images.ok(&["list"]).trim(), "", "nothing tagged");
    assert!(!images
        .root
        .join("content/blobs/sha256")
        .join(victim.trim_start_matches("sha256:"))
        .exists());
}

/// OCI layout and docker-archive tarballs import (as a node's images/ directory does at
/// start-up); an image for another architecture is refused by name.
#[test]
fn tarballs_import_and_foreign_platforms_are_refused() {
    let dir = tmp();
    let layout = dir.path().join("layout");
    oci::write_probe_layout(&layout, &probe(), "v1", "amd64", false).unwrap();
    let tarball = dir.path().join("probe-oci.tar");
    oci::tar_layout(&layout, &tarball).unwrap();
    let archive = dir.path().join("probe-docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}:localhost/probe:v2", archive.display()),
    ]);

    let images = Images::new(&dir.path().join("store"));
    let out = images.ok(&["import", tarball.to_str().unwrap(), archive.to_str().unwrap()]);
    assert!(out.contains("localhost/probe:v1") && out.contains("localhost/probe:v2"), "{out}");
    let merged = images.mount("localhost/probe:v2", &dir.path().join("c2"));
    assert!(merged.join("bin/flotilla-probe").is_file() && !merged.join("etc/removed").exists());

    let arm = dir.path().join("arm");
    oci::write_probe_layout(&arm, &probe(), "arm", "arm64", true).unwrap();
    let arm_tar = dir.path().join("arm.tar");
    oci::tar_layout(&arm, &arm_tar).unwrap();
    let (ok, _, err) = images.run(&["import", arm_tar.to_str().unwrap()]);
    assert!(!ok && err.contains("linux/arm64"), "{err}");
}

/// A registry that demands basic auth: pulls without credentials are refused, with them
/// they succeed.
#[test]
fn basic_auth_registries_need_and_accept_credentials() {
    let dir = tmp();
    let (_, reg, remote) = pushed_probe(dir.path(), Some(("alice", "s3cret")));
    let images = Images::new(&dir.path().join("store"));
    let (ok, _, err) = images.run(&["pull", "--insecure-registry", &reg.addr, &remote]);
    assert!(!ok, "an anonymous pull from an auth registry succeeded");
    assert!(err.contains("manifest of") && err.contains(&remote), "{err}");
    let (ok, _, err) = images.run(&[
        "pull",
        "--insecure-registry",
        &reg.addr,
        "--username",
        "alice",
        "--password",
        "wrong",
        &remote,
    ]);
    assert!(!ok, "a wrong password was accepted: {err}");
    images.ok(&[
        "pull",
        "--insecure-registry",
        &reg.addr,
        "--username",
        "alice",
        "--password",
        "s3cret",
        &remote,
    ]);
}

/// A registry behind a token server (distribution's token auth, as Docker Hub and most
/// private registries run): the pull is challenged, credentials are exchanged for a signed
/// bearer token scoped to the repository, and the registry checks the token. Anonymous
/// callers get tokens for public repositories only; a token handed in directly is used as is.
#[test]
fn token_auth_registries_exchange_credentials_for_scoped_bearer_tokens() {
    let dir = tmp();
    let tokens = TokenServer::start(dir.path(), &[("alice", "s3cret")], &["public"]).unwrap();
    let reg = Registry::start_with_token(dir.path(), &tokens).unwrap();
    let (built, private) = push_probe(dir.path(), &reg, "probe", Some(("alice", "s3cret")));
    let (_, public) = push_probe(dir.path(), &reg, "public/probe", Some(("alice", "s3cret")));
    let asked = |user: Option<&str>| {
        tokens.requests.lock().unwrap().iter().filter(|r| r.user.as_deref() == user).count()
    };
    let pull = |store: &str, extra: &[&str], reference: &str| {
        let images = Images::new(&dir.path().join(store));
        let mut args = vec!["pull", "--insecure-registry", &reg.addr];
        args.extend(extra);
        args.push(reference);
        let (ok, _, err) = images.run(&args);
        (ok, err, images)
    };

    // Anonymous: a token without access to the private repository; the registry refuses it.
    let before = asked(None);
    let (ok, err, _) = pull("anon", &[], &private);
    assert!(!ok, "an anonymous pull of a private repository succeeded");
    assert!(err.contains("manifest of") && err.contains(&private), "{err}");
    assert!(asked(None) > before, "the anonymous pull never asked the token server");
    // ... but the same caller pulls a public repository.
    let (ok, err, _) = pull("anon", &[], &public);
    assert!(ok, "anonymous pull of a public repository: {err}");

    // A wrong password is refused by the token server.
    let (ok, err, _) = pull("wrong", &["--username", "alice", "--password", "nope"], &private);
    assert!(!ok, "a wrong password was accepted: {err}");
    assert!(err.contains("credentials for") && err.contains("refused"), "{err}");

    // Right credentials: a token scoped to pulling this repository, and the digests match.
    let (ok, err, images) =
        pull("alice", &["--username", "alice", "--password", "s3cret"], &private);
    assert!(ok, "pull with credentials: {err}");
    let scopes: Vec<String> = tokens
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.user.as_deref() == Some("alice"))
        .flat_map(|r| r.scopes.clone())
        .collect();
    assert!(scopes.contains(&"repository:probe:pull".to_string()), "{scopes:?}");
    for l in &built.layers {
        let blob = images.root.join("content/blobs/sha256").join(l.trim_start_matches("sha256:"));
        assert_eq!(oci::sha256(&std::fs::read(&blob).unwrap()), *l);
    }

    // A token handed in (--token) goes straight to the registry: no exchange.
    let exchanges = tokens.requests.lock().unwrap().len();
    let good = tokens.mint("ci", "probe", &["pull"]).unwrap();
    let (ok, err, _) = pull("minted", &["--token", &good], &private);
    assert!(ok, "pull with a minted token: {err}");
    assert_eq!(tokens.requests.lock().unwrap().len(), exchanges, "--token asked for a token");
    // One scoped to another repository is refused by the registry.
    let other = tokens.mint("ci", "other", &["pull"]).unwrap();
    let (ok, err, _) = pull("other", &["--token", &other], &private);
    assert!(!ok, "a token for another repository was accepted: {err}");
    // So is one signed by a key the registry does not trust.
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue = TokenServer::start(&rogue_dir, &[], &[]).unwrap();
    let forged = rogue.mint("ci", "probe", &["pull"]).unwrap();
    let (ok, err, _) = pull("forged", &["--token", &forged], &private);
    assert!(!ok, "a token signed by an untrusted key was accepted: {err}");
}
