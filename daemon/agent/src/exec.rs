//! `flotilla exec` on the node: a command in a running container, run by `flotillad runtime
//! exec` (which must be a single-threaded process to setns) and relayed to the API server.
//!
//! ```text
//!  API server ══ ExecInput ══► stdin ─► runtime exec ID -- CMD ─► stdout, stderr ══ ExecOutput ══►
//!     with a tty:  runtime exec --tty --console-socket S hands the pty master to us, so we
//!                  relay it ourselves and can resize it
//! ```

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use flotilla_api::proto::{self, exec_input::Msg as In, exec_output::Msg as Out};
use flotilla_isolation::{console, Status as RunStatus};
use futures::{Stream, StreamExt};
use tokio::{io::AsyncReadExt, sync::mpsc};
use tonic::Status;

use super::pods::Ctx;

pub type ExecStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<proto::ExecOutput, Status>> + Send>>;

type Tx = mpsc::Sender<Result<proto::ExecOutput, Status>>;

/// The running container of `name` in pod `uid`: its latest run (`<uid>-<name>-<attempt>`).
fn running_container(ctx: &Ctx, uid: &str, name: &str) -> Result<String, Status> {
    let prefix = format!("{uid}-{name}-");
    let list = ctx.runtime.list().map_err(|e| Status::internal(e.to_string()))?;
    list.into_iter()
        .filter(|(_, s)| *s == RunStatus::Running)
        .filter_map(|(st, _)| {
            let attempt: u32 = st.id.strip_prefix(&prefix)?.parse().ok()?;
            Some((attempt, st.id))
        })
        .max()
        .map(|(_, id)| id)
        .ok_or_else(|| {
            Status::failed_precondition(format!("container {name:?} is not running on this node"))
        })
}

fn out(m: Out) -> Result<proto::ExecOutput, Status> {
    Ok(proto::ExecOutput { msg: Some(m) })
}

fn set_size(fd: std::os::fd::BorrowedFd<'_>, s: &proto::TerminalSize) {
    if s.rows > 0 && s.cols > 0 {
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        let _ = console::set_winsize(fd, clamp(s.rows), clamp(s.cols));
    }
}

/// Starts the command described by the stream's first message and returns its output stream.
pub async fn start<S>(ctx: Arc<Ctx>, mut input: S) -> Result<ExecStream, Status>
where
    S: Stream<Item = Result<proto::ExecInput, Status>> + Send + Unpin + 'static,
{
    let start = match input.next().await {
        Some(Ok(proto::ExecInput { msg: Some(In::Start(s)) })) => s,
        Some(Err(e)) => return Err(e),
        _ => return Err(Status::invalid_argument("exec: the first message must be `start`")),
    };
    if start.command.is_empty() {
        return Err(Status::invalid_argument("exec: a command is required"));
    }
    let id = {
        let (ctx, uid, c) = (ctx.clone(), start.uid.clone(), start.container.clone());
        tokio::task::spawn_blocking(move || running_container(&ctx, &uid, &c))
            .await
            .map_err(|e| Status::internal(e.to_string()))??
    };
    let mut cmd = tokio::process::Command::from(ctx.exe.command());
    cmd.arg("--root").arg(ctx.runtime.root()).arg("exec");
    let socket = start.tty.then(|| {
        std::env::temp_dir().join(format!("flotilla-exec-{}.sock", uuid::Uuid::new_v4().simple()))
    });
    let listener =
        match &socket {
            Some(p) => {
                cmd.arg("--tty").arg("--console-socket").arg(p);
                Some(tokio::net::UnixListener::bind(p).map_err(|e| {
                    Status::internal(format!("console socket {}: {e}", p.display()))
                })?)
            }
            None => None,
        };
    cmd.arg(&id).arg("--").args(&start.command);
    cmd.stdin(if start.stdin && !start.tty { Stdio::piped() } else { Stdio::null() })
        .stdout(if start.tty { Stdio::null() } else { Stdio::piped() })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child =
        cmd.spawn().map_err(|e| Status::internal(format!("running the runtime: {e}")))?;
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        let _cleanup = socket.map(Removal);
        let end = match listener {
            None => relay_pipes(&mut child, input, &tx).await,
            Some(l) => relay_pty(&mut child, l, start.size, input, &tx).await,
        };
        let _ = tx.send(end.and_then(|code| out(Out::ExitCode(code)))).await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// Removes the console socket's path when the exec ends.
struct Removal(std::path::PathBuf);

impl Drop for Removal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The runtime's exit code: the command's, or non-zero with the reason on its stderr when
/// the command could not be started.
async fn finish(child: &mut tokio::process::Child) -> Result<i32, Status> {
    let st = child.wait().await.map_err(|e| Status::internal(e.to_string()))?;
    Ok(st.code().unwrap_or(255))
}

/// Forwards stdin messages to `w` until stdin closes (or the client goes). A pipe is closed
/// then; a pty cannot be, so `eof` gives what to type instead (see [`pty_eof`]).
async fn pump_stdin<S, W>(
    mut input: S,
    mut w: Option<W>,
    resize: impl Fn(&proto::TerminalSize),
    eof: impl Fn(bool) -> Vec<u8>,
) where
    S: Stream<Item = Result<proto::ExecInput, Status>> + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut at_line_start = true;
    while let Some(Ok(m)) = input.next().await {
        match m.msg {
            Some(In::Stdin(b)) => {
                if let Some(wr) = w.as_mut() {
                    if wr.write_all(&b).await.is_err() || wr.flush().await.is_err() {
                        w = None;
                    }
                }
                if let Some(last) = b.last() {
                    at_line_start = *last == b'\n';
                }
            }
            Some(In::CloseStdin(_)) => {
                if let Some(mut wr) = w.take() {
                    let _ = wr.write_all(&eof(at_line_start)).await;
                    let _ = wr.flush().await;
                }
            }
            Some(In::Resize(s)) => resize(&s),
            _ => {}
        }
    }
}

async fn relay_pipes<S>(child: &mut tokio::process::Child, input: S, tx: &Tx) -> Result<i32, Status>
where
    S: Stream<Item = Result<proto::ExecInput, Status>> + Send + Unpin + 'static,
{
    let stdin = child.stdin.take();
    let feed = tokio::spawn(pump_stdin(input, stdin, |_| {}, |_| Vec::new()));
    let copy = |mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>, err: bool| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                let b = bytes::Bytes::copy_from_slice(&buf[..n]);
                let m = if err { Out::Stderr(b) } else { Out::Stdout(b) };
                if tx.send(out(m)).await.is_err() {
                    return;
                }
            }
        })
    };
    let o = copy(Box::new(child.stdout.take().expect("piped")), false);
    let e = copy(Box::new(child.stderr.take().expect("piped")), true);
    // The command's background children may keep its output open: once the runtime has
    // exited, wait briefly for the rest, then end.
    let status = tokio::select! {
        s = child.wait() => s,
        _ = tx.closed() => { feed.abort(); return Err(Status::cancelled("client gone")) }
    };
    feed.abort();
    let grace = Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, o).await;
    let _ = tokio::time::timeout(grace, e).await;
    let _ = status.map_err(|e| Status::internal(e.to_string()))?;
    finish(child).await
}

async fn relay_pty<S>(
    child: &mut tokio::process::Child,
    listener: tokio::net::UnixListener,
    size: Option<proto::TerminalSize>,
    input: S,
    tx: &Tx,
) -> Result<i32, Status>
where
    S: Stream<Item = Result<proto::ExecInput, Status>> + Send + Unpin + 'static,
{
    let mut stderr = child.stderr.take().expect("piped");
    let conn = tokio::select! {
        c = listener.accept() => c.map_err(|e| Status::internal(e.to_string()))?.0,
        _ = child.wait() => {
            // It ended before handing over a pty: its stderr says why.
            forward_stderr(&mut stderr, tx).await;
            return finish(child).await;
        }
    };
    let conn = conn.into_std().map_err(|e| Status::internal(e.to_string()))?;
    conn.set_nonblocking(false).map_err(|e| Status::internal(e.to_string()))?;
    let master = tokio::task::spawn_blocking(move || console::receive_fd(&conn))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("receiving the pty: {e}")))?;
    if let Some(s) = &size {
        set_size(master.as_fd(), s);
    }
    let master = Arc::new(console::async_fd(master).map_err(|e| Status::internal(e.to_string()))?);
    let resize = {
        let m = master.clone();
        move |s: &proto::TerminalSize| set_size(m.get_ref().as_fd(), s)
    };
    let eof = {
        let m = master.clone();
        move |at_line_start: bool| pty_eof(m.get_ref().as_fd(), at_line_start)
    };
    let feed = tokio::spawn(pump_stdin(input, Some(Pty(master.clone())), resize, eof));
    // The master reads EIO once the last process on the pty is gone. When this returns, the
    // last master fd closes (the feed is aborted below), which hangs up the pty's session.
    let copy = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let Ok(mut guard) = master.readable().await else { return };
            match guard.try_io(|m| Ok(nix::unistd::read(m.as_raw_fd(), &mut buf)?)) {
                Err(_would_block) => continue,
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => {
                    if tx.send(out(Out::Stdout(buf[..n].to_vec().into()))).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let ended = tokio::select! {
        _ = copy => true,
        _ = tx.closed() => false,
    };
    feed.abort();
    let _ = feed.await;
    drop(master);
    if !ended {
        return Err(Status::cancelled("client gone"));
    }
    forward_stderr(&mut stderr, tx).await;
    finish(child).await
}

/// With a tty the command writes to the pty; the runtime's own stderr only has its errors.
async fn forward_stderr(stderr: &mut tokio::process::ChildStderr, tx: &Tx) {
    let mut err = Vec::new();
    let _ = stderr.read_to_end(&mut err).await;
    if !err.is_empty() {
        let _ = tx.send(out(Out::Stderr(err.into()))).await;
    }
}

/// What a closed stdin types on a pty: the terminal's EOF character (^D) while it reads
/// lines, twice after a partial line (the first only ends the line), as a user at a terminal
/// would; nothing in raw mode, where the program reads keys, not lines.
fn pty_eof(master: std::os::fd::BorrowedFd<'_>, at_line_start: bool) -> Vec<u8> {
    use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices};
    let Ok(t) = tcgetattr(master) else { return Vec::new() };
    if !t.local_flags.contains(LocalFlags::ICANON) {
        return Vec::new();
    }
    let c = t.control_chars[SpecialCharacterIndices::VEOF as usize];
    if at_line_start {
        vec![c]
    } else {
        vec![c, c]
    }
}

/// The pty master as an async writer for [`pump_stdin`].
struct Pty(Arc<tokio::io::unix::AsyncFd<OwnedFd>>);

impl tokio::io::AsyncWrite for Pty {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        loop {
            let mut guard = match self.0.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|m| Ok(nix::unistd::write(m.get_ref(), buf)?)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
