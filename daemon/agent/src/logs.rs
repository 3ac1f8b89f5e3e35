//! The agent's node API (the kubelet's port, 10250): container logs read from the CRI log
//! files the runtime writes, streamed to the API server, which alone calls it.
//!
//! ```text
//!  flotilla logs ──► API server PodLogs ──► agent ContainerLogs ──► <logs>/<ns>_<pod>_<uid>/<c>/<run>.log
//! ```

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use flotilla_api::proto::{self, node_server::Node};
use flotilla_isolation::Status as RunStatus;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::pods::Ctx;

/// One CRI log line: `<RFC 3339 time> <stream> <P|F> <content>`.
pub fn parse_line(line: &str) -> Option<(&str, &str, bool, &str)> {
    let mut it = line.splitn(4, ' ');
    let (ts, stream, tag) = (it.next()?, it.next()?, it.next()?);
    Some((ts, stream, tag == "F", it.next().unwrap_or("")))
}

/// What the user sees of CRI lines: partial lines joined, each full line ended by a newline,
/// optionally prefixed with its time.
pub fn render(lines: &[&str], timestamps: bool) -> String {
    let mut out = String::new();
    let mut at_start = true;
    for l in lines {
        let Some((ts, _, full, content)) = parse_line(l) else { continue };
        if timestamps && at_start {
            out.push_str(ts);
            out.push(' ');
        }
        out.push_str(content);
        if full {
            out.push('\n');
        }
        at_start = full;
    }
    out
}

/// The lines of one stream ("stdout", "stderr"), or all of them for "".
pub fn of_stream<'a>(lines: Vec<&'a str>, stream: &str) -> Vec<&'a str> {
    if stream.is_empty() {
        return lines;
    }
    lines.into_iter().filter(|l| parse_line(l).is_some_and(|(_, s, ..)| s == stream)).collect()
}

/// The last `n` full log lines (a partial run counts with the line it ends in).
pub fn tail<'a>(lines: &[&'a str], n: i64) -> Vec<&'a str> {
    if n < 0 {
        return lines.to_vec();
    }
    let mut full = 0;
    let mut start = lines.len();
    for (i, l) in lines.iter().enumerate().rev() {
        if parse_line(l).is_some_and(|(_, _, f, _)| f) {
            if full == n {
                break;
            }
            full += 1;
        }
        start = i;
    }
    lines[start..].to_vec()
}

/// The lines written at or after `since` (kubelet filters each CRI line by its own time).
pub fn since(lines: Vec<&str>, since: Option<jiff::Timestamp>) -> Vec<&str> {
    let Some(since) = since else { return lines };
    lines
        .into_iter()
        .filter(|l| {
            parse_line(l)
                .and_then(|(ts, ..)| ts.parse::<jiff::Timestamp>().ok())
                .is_none_or(|t| t >= since)
        })
        .collect()
}

/// What is left of a `limitBytes` budget: `chunk` cut to fit (at a character boundary).
pub fn within_limit(mut chunk: String, left: &mut Option<u64>) -> String {
    if let Some(left) = left {
        if chunk.len() as u64 > *left {
            let mut end = *left as usize;
            while !chunk.is_char_boundary(end) {
                end -= 1;
            }
            chunk.truncate(end);
        }
        *left -= chunk.len() as u64;
    }
    chunk
}

/// The time `sinceSeconds` or `sinceTime` name, on this node's clock as the kubelet's.
fn since_of(r: &proto::PodLogsRequest) -> Result<Option<jiff::Timestamp>, Status> {
    if let Some(s) = r.since_seconds {
        let back = jiff::SignedDuration::from_secs(s.max(0));
        return Ok(jiff::Timestamp::now().checked_sub(back).ok());
    }
    if r.since_time.is_empty() {
        return Ok(None);
    }
    r.since_time.parse().map(Some).map_err(|e| {
        status_err(tonic::Code::InvalidArgument, format!("sinceTime {:?}: {e}", r.since_time))
    })
}

fn status_err(code: tonic::Code, msg: String) -> Status {
    Status::new(code, msg)
}

/// The pod's log directory (the newest, should the name have been reused) and its uid.
fn pod_dir(logs: &Path, ns: &str, name: &str) -> Result<(PathBuf, String), Status> {
    let prefix = format!("{ns}_{name}_");
    std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| {
            let uid = e.file_name().to_string_lossy()[prefix.len()..].to_string();
            (e.path(), uid)
        })
        .ok_or_else(|| {
            status_err(tonic::Code::NotFound, format!("pod {ns}/{name} has no logs on this node"))
        })
}

/// The log file to read and the container run it belongs to.
fn log_file(logs: &Path, r: &proto::PodLogsRequest) -> Result<(PathBuf, String), Status> {
    let (dir, uid) = pod_dir(logs, &r.namespace, &r.name)?;
    let container = if r.container.is_empty() {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        match names.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(status_err(
                    tonic::Code::InvalidArgument,
                    format!(
                        "a container name must be specified for pod {}, choose one of: [{}]",
                        r.name,
                        names.join(" ")
                    ),
                ))
            }
        }
    } else {
        r.container.clone()
    };
    let mut runs: Vec<u32> = std::fs::read_dir(dir.join(&container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".log")?.parse().ok())
        .collect();
    runs.sort_unstable();
    let run = if r.previous { runs.iter().rev().nth(1) } else { runs.last() };
    let Some(run) = run else {
        let what = if r.previous { "previous terminated container" } else { "container" };
        return Err(status_err(
            tonic::Code::NotFound,
            format!("{what} \"{container}\" in pod \"{}\" not found", r.name),
        ));
    };
    Ok((dir.join(&container).join(format!("{run}.log")), format!("{uid}-{container}-{run}")))
}

pub struct NodeApi {
    pub ctx: Arc<Ctx>,
    pub stats: super::metrics::Latest,
}

type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeApi {
    type ContainerLogsStream = LogStream;
    type ContainerExecStream = super::exec::ExecStream;
    type PortForwardStream = super::portforward::PortForwardStream;

    async fn stats(
        &self,
        _req: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsSummary>, Status> {
        let s = self.stats.read().expect("stats lock").clone();
        Ok(Response::new((*s).clone()))
    }

    async fn container_exec(
        &self,
        req: Request<tonic::Streaming<proto::ExecInput>>,
    ) -> Result<Response<Self::ContainerExecStream>, Status> {
        super::exec::start(self.ctx.clone(), req.into_inner()).await.map(Response::new)
    }

    async fn port_forward(
        &self,
        req: Request<tonic::Streaming<proto::PortForwardInput>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        super::portforward::start(self.ctx.clone(), req.into_inner()).await.map(Response::new)
    }

    async fn container_logs(
        &self,
        req: Request<proto::PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        if !matches!(r.stream.as_str(), "" | "stdout" | "stderr") {
            let msg = format!("stream {:?}: not stdout or stderr", r.stream);
            return Err(status_err(tonic::Code::InvalidArgument, msg));
        }
        let (path, id) = log_file(&self.ctx.logs_dir, &r)?;
        let mut file = std::fs::File::open(&path)
            .map_err(|e| status_err(tonic::Code::NotFound, format!("{}: {e}", path.display())))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| Status::internal(e.to_string()))?;
        // Only whole lines now; a line still being written waits for the follow loop.
        let whole = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let lines = of_stream(text[..whole].lines().collect(), &r.stream);
        // As the kubelet: the tail first, then the time filter, then the byte limit.
        let start = since_of(&r)?;
        let mut left = r.limit_bytes.map(|b| b.max(0) as u64);
        let first = within_limit(
            render(&since(tail(&lines, r.tail_lines), start), r.timestamps),
            &mut left,
        );
        let (tx, rx) = mpsc::channel(16);
        let rt = self.ctx.runtime.clone();
        let (follow, timestamps, stream) = (r.follow, r.timestamps, r.stream);
        let mut offset = whole as u64;
        tokio::spawn(async move {
            if !first.is_empty()
                && tx.send(Ok(proto::LogChunk { data: first.into() })).await.is_err()
            {
                return;
            }
            if !follow || left == Some(0) {
                return;
            }
            let mut pending = String::new();
            loop {
                let stopped =
                    !matches!(rt.state(&id), Ok((_, RunStatus::Running | RunStatus::Created)));
                let mut more = String::new();
                if file.seek(SeekFrom::Start(offset)).is_ok() {
                    if let Ok(n) = file.read_to_string(&mut more) {
                        offset += n as u64;
                    }
                }
                pending.push_str(&more);
                if let Some(i) = pending.rfind('\n') {
                    let rest = pending.split_off(i + 1);
                    let lines = since(of_stream(pending.lines().collect(), &stream), start);
                    let chunk = within_limit(render(&lines, timestamps), &mut left);
                    pending = rest;
                    if !chunk.is_empty()
                        && tx.send(Ok(proto::LogChunk { data: chunk.into() })).await.is_err()
                    {
                        return;
                    }
                    if left == Some(0) {
                        return;
                    }
                }
                // The run ended and everything it wrote has been sent.
                if stopped && more.is_empty() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[&str] = &[
        "2026-01-01T00:00:00.000000001Z stdout F one",
        "2026-01-01T00:00:01.000000001Z stderr P tw",
        "2026-01-01T00:00:01.500000001Z stderr F o",
        "2026-01-01T00:00:02.000000001Z stdout F three",
    ];

    #[test]
    fn renders_cri_lines() {
        assert_eq!(render(LOG, false), "one\ntwo\nthree\n");
        assert_eq!(render(&of_stream(LOG.to_vec(), "stderr"), false), "two\n");
        assert_eq!(render(&of_stream(LOG.to_vec(), "stdout"), false), "one\nthree\n");
        assert_eq!(render(&LOG[..1], true), "2026-01-01T00:00:00.000000001Z one\n");
    }

    #[test]
    fn filters_by_time_then_limits_bytes() {
        let t = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        assert_eq!(render(&since(LOG.to_vec(), t("2026-01-01T00:00:01.5Z")), false), "o\nthree\n");
        assert_eq!(render(&since(LOG.to_vec(), None), false), "one\ntwo\nthree\n");
        let mut left = Some(5);
        assert_eq!(within_limit("one\ntwo\n".into(), &mut left), "one\nt");
        assert_eq!((within_limit("more".into(), &mut left), left), (String::new(), Some(0)));
        let mut none = None;
        assert_eq!(within_limit("all".into(), &mut none), "all");
    }

    #[test]
    fn tails_whole_lines() {
        assert_eq!(render(&tail(LOG, 1), false), "three\n");
        assert_eq!(render(&tail(LOG, 2), false), "two\nthree\n");
        assert_eq!(render(&tail(LOG, 0), false), "");
        assert_eq!(render(&tail(LOG, -1), false), "one\ntwo\nthree\n");
        assert_eq!(render(&tail(LOG, 9), false), "one\ntwo\nthree\n");
    }
}
