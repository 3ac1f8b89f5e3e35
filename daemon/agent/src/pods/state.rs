//! What the agent knows of each container of a pod: its state (waiting with a reason,
//! running, exited and maybe waiting to run again), its previous run, and its back-off.
//! The plan reads it; the executor changes it only through the transitions below, which
//! are pure so that they are tested with the plan.

use super::probe;
use flotilla_isolation::state::Exit;
use std::time::{Duration, Instant};

/// One run of a container.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub id: String,
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub started_at: String,
}

/// Why a container is not running: the kubelet's waiting reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    ContainerCreating,
    CrashLoopBackOff,
    ErrImagePull,
    ImagePullBackOff,
    ErrImageNeverPull,
    InvalidImageName,
    CreateContainerConfigError,
    CreateContainerError,
    RunContainerError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ContainerCreating => "ContainerCreating",
            Reason::CrashLoopBackOff => "CrashLoopBackOff",
            Reason::ErrImagePull => "ErrImagePull",
            Reason::ImagePullBackOff => "ImagePullBackOff",
            Reason::ErrImageNeverPull => "ErrImageNeverPull",
            Reason::InvalidImageName => "InvalidImageName",
            Reason::CreateContainerConfigError => "CreateContainerConfigError",
            Reason::CreateContainerError => "CreateContainerError",
            Reason::RunContainerError => "RunContainerError",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a container waits, and until when (None: it may start at the next sync).
#[derive(Clone, Debug, PartialEq)]
pub struct Wait {
    pub reason: Reason,
    pub message: String,
    pub until: Option<Instant>,
}

impl Wait {
    pub fn due(&self, now: Instant) -> bool {
        self.until.is_none_or(|t| now >= t)
    }
}

/// A container's state.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// No run yet on this node.
    Waiting(Wait),
    Running(Attempt),
    /// The run ended; `next` says why the next one has not started yet (a crash back-off,
    /// or a restart whose pull or create failed).
    Exited {
        run: Attempt,
        exit: Exit,
        next: Option<Wait>,
    },
}

impl Default for State {
    fn default() -> State {
        State::Waiting(Wait {
            reason: Reason::ContainerCreating,
            message: String::new(),
            until: None,
        })
    }
}

/// What the worker tracks per container name.
#[derive(Clone, Debug, Default)]
pub struct Ctr {
    pub state: State,
    /// The previous run, for lastState.
    pub last: Option<(Attempt, Exit)>,
    /// The next crash back-off (zero: the next restart is immediate).
    pub backoff: Duration,
    /// The last pull or create back-off, kept apart from the crash back-off as the
    /// kubelet keeps its image back-off (zero once a start works).
    pub start_backoff: Duration,
    /// What the current run's probes found (None: it has no probes).
    pub probe: Option<probe::Results>,
}

impl Ctr {
    /// The current run, running or exited.
    pub fn run(&self) -> Option<&Attempt> {
        match &self.state {
            State::Waiting(_) => None,
            State::Running(a) | State::Exited { run: a, .. } => Some(a),
        }
    }

    pub fn running(&self) -> Option<&Attempt> {
        match &self.state {
            State::Running(a) => Some(a),
            _ => None,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        match &self.state {
            State::Exited { exit, .. } => Some(*exit),
            _ => None,
        }
    }

    /// Why it does not run, when it does not (and is to run again).
    pub fn waiting(&self) -> Option<&Wait> {
        match &self.state {
            State::Waiting(w) | State::Exited { next: Some(w), .. } => Some(w),
            _ => None,
        }
    }

    pub fn restarts(&self) -> u32 {
        self.run().map(|a| a.attempt).unwrap_or(0)
    }

    pub fn next_attempt(&self) -> u32 {
        self.run().map(|a| a.attempt + 1).unwrap_or(0)
    }

    /// A run adopted from the runtime, in attempt order; `exit` None while it runs.
    pub fn adopt(&mut self, run: Attempt, exit: Option<Exit>) {
        if let State::Exited { run, exit, .. } = std::mem::take(&mut self.state) {
            self.last = Some((run, exit));
        }
        self.state = match exit {
            Some(exit) => State::Exited { run, exit, next: None },
            None => State::Running(run),
        };
    }

    /// A start is under way.
    pub fn creating(&mut self) {
        self.wait(Wait { reason: Reason::ContainerCreating, message: String::new(), until: None });
    }

    /// The run that started; returns the run before the previous one, to be removed.
    pub fn started(&mut self, run: Attempt) -> Option<Attempt> {
        self.start_backoff = Duration::ZERO;
        let mut gone = None;
        if let State::Exited { run, exit, .. } =
            std::mem::replace(&mut self.state, State::Running(run))
        {
            gone = self.last.replace((run, exit)).map(|(a, _)| a);
        }
        self.probe = None;
        gone
    }

    /// A start that failed: retried after a back-off (1 s for a config error, which a new
    /// ConfigMap or Secret fixes), as the kubelet retries pulls and creates.
    pub fn start_failed(
        &mut self,
        reason: Reason,
        message: String,
        now: Instant,
        (initial, max): (Duration, Duration),
    ) {
        self.start_backoff =
            if self.start_backoff.is_zero() { initial } else { (self.start_backoff * 2).min(max) };
        let wait = if reason == Reason::CreateContainerConfigError {
            Duration::from_secs(1)
        } else {
            self.start_backoff
        };
        self.wait(Wait { reason, message, until: Some(now + wait) });
    }

    /// Why the next run has not started (a running container has nothing to wait for).
    fn wait(&mut self, w: Wait) {
        match &mut self.state {
            State::Waiting(old) => *old = w,
            State::Exited { next, .. } => *next = Some(w),
            State::Running(_) => {}
        }
    }

    /// The run ended.
    pub fn exited(&mut self, exit: Exit) {
        if let State::Running(run) = std::mem::take(&mut self.state) {
            self.state = State::Exited { run, exit, next: None };
        }
        self.probe = None;
    }

    /// Enters the crash back-off: CrashLoopBackOff until `until`; `backoff` is the next.
    pub fn back_off(&mut self, name: &str, until: Instant, now: Instant, backoff: Duration) {
        if let State::Exited { next, .. } = &mut self.state {
            let message = format!(
                "back-off {:?} restarting failed container={name}",
                until.saturating_duration_since(now)
            );
            *next = Some(Wait { reason: Reason::CrashLoopBackOff, message, until: Some(until) });
            self.backoff = backoff;
        }
    }

    /// A failed pull waiting for its retry shows as ImagePullBackOff (the kubelet shows
    /// ErrImagePull once, right after the failure).
    pub fn pull_back_off(&mut self) {
        let w = match &mut self.state {
            State::Waiting(w) | State::Exited { next: Some(w), .. } => w,
            _ => return,
        };
        if w.reason == Reason::ErrImagePull {
            w.reason = Reason::ImagePullBackOff;
            w.message = format!("Back-off pulling image: {}", w.message);
        }
    }
}
