//! A container's state on disk, under `<root>/<id>/`:
//!
//! ```text
//!  state.json   written by `create` once the init waits on exec.fifo
//!  exec.fifo    exists between create and start; the init blocks writing it
//!  exit.json    written by the monitor when the init has been reaped
//! ```
//!
//! Everything a restarted supervisor needs to re-adopt the container is here: the init's
//! and the monitor's pids with their start times (so a reused pid is never mistaken for
//! ours), the cgroup, the bundle.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const STATE_FILE: &str = "state.json";
pub const EXIT_FILE: &str = "exit.json";
pub const FIFO_FILE: &str = "exec.fifo";

/// What `create` recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub pid: i32,
    /// The init's start time (field 22 of /proc/PID/stat), against pid reuse.
    pub pid_start: u64,
    pub monitor_pid: i32,
    pub monitor_start: u64,
    pub cgroup: String,
    pub created: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Namespaces the container has of its own or joined, as `/proc/<pid>/ns` names.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The OOM-kill count of the cgroup when the container was created.
    #[serde(default)]
    pub oom_kills_at_create: u64,
}

/// How the init ended, as the monitor saw it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128+signal when killed by a signal (as shells report it).
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Unix time in nanoseconds.
    pub finished_at_ns: u128,
}

/// The OCI lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader sees the
/// old content or the new, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

impl State {
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec(self).expect("state serializes");
        write_atomic(&path, &bytes).map_err(|e| Error::io("writing", path, e))
    }

    pub fn load(dir: &Path, id: &str) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { id: id.to_string() })
            }
            Err(e) => return Err(Error::io("reading", path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptState {
            id: id.to_string(),
            path,
            reason: e.to_string(),
        })
    }

    /// The exit record, once the monitor has written it.
    pub fn exit(dir: &Path) -> Option<Exit> {
        std::fs::read(dir.join(EXIT_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Is the recorded init still the same live process?
    pub fn init_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.pid_start) && !is_zombie(self.pid)
    }

    pub fn monitor_alive(&self) -> bool {
        process_start_time(self.monitor_pid) == Some(self.monitor_start)
    }

    pub fn status(&self, dir: &Path) -> Status {
        if dir.join(EXIT_FILE).exists() || !self.init_alive() {
            Status::Stopped
        } else if dir.join(FIFO_FILE).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    /// The state as `runc state` prints it (OCI state plus rootfs and created).
    pub fn oci_json(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
        })
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')').map(|i| s[i + 2..].starts_with('Z') || s[i + 2..].starts_with('X'))
        })
        .unwrap_or(true)
}

/// RFC 3339 UTC with nanoseconds, as runc writes `created`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn our_own_start_time_is_readable_and_stable() {
        let me = std::process::id() as i32;
        let a = process_start_time(me).unwrap();
        assert_eq!(process_start_time(me), Some(a));
        assert!(!is_zombie(me));
    }
}
