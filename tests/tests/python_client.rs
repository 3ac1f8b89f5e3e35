//! Kubernetes' Python client, a client we did not write, against Flotilla's HTTP API: the
//! scenario in `tests/python/client.py` (discovery, typed create, list pages and selectors,
//! watch from a resourceVersion with bookmarks, strategic and JSON patches, the scale
//! subresource, errors with codes, reasons and causes, delete with propagation), run with
//! Debian's python3-kubernetes, which `cargo xtask setup` installs.

use flotilla_tests::Member;
use std::path::PathBuf;
use std::process::Command;

/// Debian's interpreter: python3-kubernetes installs for it, whatever `python3` on PATH is.
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn the_python_client_runs_its_scenario() {
    let has_client = Command::new(PYTHON)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !flotilla_prereq::met(has_client, "python3-kubernetes (cargo xtask setup installs it)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("python", dir.path());
    member.start().unwrap();
    member.api_url().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .current_dir(dir.path())
        .env("KUBECONFIG", member.kubeconfig())
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("python client scenario passed"),
        "{} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log (tail)\n{}",
        script.display(),
        member.log_tail(30)
    );
}
