//! What the agent knows of each container of a pod: its current and previous run, why it
//! waits, and its back-off. The worker updates it; the status is computed from it.

use super::probe;
use flotilla_isolation::state::Exit;
use std::time::{Duration, Instant};

/// One run of a container.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub id: String,
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub started_at: String,
    pub exit: Option<Exit>,
}

impl Attempt {
    pub fn running(&self) -> bool {
        self.exit.is_none()
    }
}

/// What the worker tracks per container name.
#[derive(Clone, Debug, Default)]
pub struct Ctr {
    pub current: Option<Attempt>,
    /// The previous run, for lastState.
    pub last: Option<Attempt>,
    /// Why it is not running (ContainerCreating, CrashLoopBackOff, ErrImagePull, …).
    pub waiting: Option<(String, String)>,
    pub(super) next_try: Option<Instant>,
    pub(super) backoff: Duration,
    /// What the current run's probes found (None: it has no probes).
    pub probe: Option<probe::Results>,
}

impl Ctr {
    pub fn restarts(&self) -> u32 {
        self.current.as_ref().map(|a| a.attempt).unwrap_or(0)
    }

    pub(super) fn exited(&self) -> Option<Exit> {
        self.current.as_ref().and_then(|a| a.exit)
    }
}
