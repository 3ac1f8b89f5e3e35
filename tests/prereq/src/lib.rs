//! Prerequisites of privileged tests (root, a kernel feature, a package). A test whose
//! prerequisite is missing must never report a silent `ok`:
//!
//! - with `CI` set, it fails, naming what is missing;
//! - otherwise it returns early, and the skip is recorded: printed to stderr, and appended to
//!   the file named by `FLOTILLA_SKIP_LOG` (which `cargo xtask test` sets, then lists every
//!   skip with its reason at the end and counts it as skipped, not passed).
//!
//! ```no_run
//! #[test]
//! fn a_lab_of_network_namespaces_works() {
//!     if !flotilla_prereq::root("the lab makes network namespaces") {
//!         return;
//!     }
//!     // …
//! }
//! ```

#![forbid(unsafe_code)]

use std::io::Write;

/// Whether the process runs as root; see [`met`].
pub fn root(why: &str) -> bool {
    met(nix::unistd::geteuid().is_root(), &format!("needs root: {why}"))
}

/// Returns `held`. A missing prerequisite panics under CI and is recorded as a skip
/// elsewhere; the test returns early when this returns false.
pub fn met(held: bool, missing: &str) -> bool {
    if held {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if in_ci() {
        panic!("{test}: prerequisite missing under CI: {missing}");
    }
    eprintln!("skipped: {test}: {missing}");
    if let Some(path) = std::env::var_os("FLOTILLA_SKIP_LOG") {
        // One O_APPEND write per line: concurrent tests never interleave within a line.
        let line = format!("{test}: {missing}\n");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
            eprintln!("cannot record the skip in {}: {e}", std::path::Path::new(&path).display());
        }
    }
    false
}

/// `CI` set to anything but empty, `0` or `false`, as CI services set it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_held_prerequisite_is_met() {
        assert!(super::met(true, "nothing"));
    }
}
