//! kubectl, a client we did not write, against Flotilla's Kubernetes HTTP API: the scenario
//! in `tests/kubectl/scenario.sh` (discovery, apply, get in every output, patch of all three
//! types, scale, label, edit, watch, describe, errors, auth, the generators' protobuf bodies,
//! a user certificate through a CSR and its approval, rollout status, undo, restart and
//! history, drain through evictions, delete) with the kubectl on
//! PATH (or `FLOTILLA_KUBECTL`). (Debian's kubectl 1.20, which `cargo xtask setup` unpacks
//! into `target/kubectl-1.20`, reads OpenAPI v2 only as gnostic protobuf: not served yet.)

use flotilla_tests::{kubectl, Member};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn kubectl_on_path_runs_the_scenario() {
    let Some(kubectl) = kubectl() else {
        flotilla_prereq::met(false, "kubectl (cargo xtask setup installs kubernetes-client)");
        return;
    };
    scenario(&kubectl);
}

fn scenario(kubectl: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("kubectl", dir.path());
    member.start().unwrap();
    member.api_url().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kubectl/scenario.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&work)
        .env("KUBECTL", kubectl)
        .env("KUBECONFIG", member.kubeconfig())
        // kubectl keeps its discovery cache under HOME: a fresh one per run.
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log (tail)\n{}",
        script.display(),
        member.log_tail(30)
    );
    assert!(stdout.contains("kubectl scenario passed"), "{stdout}");
}
