//! `flotilla exec [-i] [-t] POD [-c C] -- CMD`: kubectl exec over the API server's PodExec
//! stream. With `-t` the local terminal is raw for the session (the pty is remote) and
//! window-size changes follow it.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context as _, Result};
use flotilla_api::proto::{self, exec_input::Msg as In, exec_output::Msg as Out};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{server_error, Ctx};

/// Restores the terminal's mode when dropped, however the session ends.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

fn size() -> Option<proto::TerminalSize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    Some(proto::TerminalSize { rows: ws.ws_row.into(), cols: ws.ws_col.into() })
}

fn msg(m: In) -> proto::ExecInput {
    proto::ExecInput { msg: Some(m) }
}

/// Runs the command; returns its exit code.
pub async fn run(
    ctx: &Ctx,
    pod: &str,
    container: Option<String>,
    stdin: bool,
    tty: bool,
    command: Vec<String>,
) -> Result<i32> {
    let pod = pod.strip_prefix("pod/").or(pod.strip_prefix("pods/")).unwrap_or(pod);
    // kubectl's rule: a tty only makes sense with a terminal on stdin.
    let tty = tty && stdin && std::io::stdin().is_terminal();
    let (tx, rx) = mpsc::channel::<proto::ExecInput>(16);
    tx.send(msg(In::Start(proto::ExecStart {
        namespace: ctx.namespace.clone(),
        name: pod.to_string(),
        container: container.unwrap_or_default(),
        command,
        stdin,
        tty,
        uid: String::new(),
        size: if tty { size() } else { None },
    })))
    .await?;
    let mut output = ctx
        .client
        .pod_exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(server_error)?;
    let raw = if tty { RawMode::enter() } else { None };
    if stdin {
        let tx = tx.clone();
        // A plain thread: a blocking read of the terminal cannot be cancelled, and the
        // process exits when the command ends anyway.
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(msg(In::CloseStdin(true)));
                        return;
                    }
                    Ok(n) => {
                        if tx.blocking_send(msg(In::Stdin(buf[..n].to_vec().into()))).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(s) = size() {
                    if tx.send(msg(In::Resize(s))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // Without stdin the request side ends now; the server reads that as stdin closed.
    drop(tx);
    let mut code = None;
    while let Some(m) = output.next().await {
        match m.map_err(server_error)?.msg {
            Some(Out::Stdout(b)) => {
                let mut o = std::io::stdout().lock();
                o.write_all(&b)?;
                o.flush()?;
            }
            Some(Out::Stderr(b)) => {
                let mut e = std::io::stderr().lock();
                e.write_all(&b)?;
                e.flush()?;
            }
            Some(Out::ExitCode(c)) => code = Some(c),
            None => {}
        }
    }
    drop(raw);
    code.context("the exec stream ended without an exit code")
}
