//! Container output in the CRI log format, with size-based rotation.
//!
//! Each line is `<RFC 3339 nano time> <stdout|stderr> <F|P> <content>`: `F` ends a line,
//! `P` is a part of a line longer than [`MAX_LINE`] (what kubelet and `kubectl logs`
//! read). When the file passes `max_bytes` it becomes `<path>.1`, the older ones shift up
//! and the oldest beyond `max_files` is removed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Lines longer than this are split into `P` records (kubelet's limit).
pub const MAX_LINE: usize = 16 * 1024;

/// Where and how much to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_files: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// An open CRI log file.
pub struct LogWriter {
    cfg: LogConfig,
    file: File,
    size: u64,
}

impl LogWriter {
    pub fn open(cfg: LogConfig) -> std::io::Result<Self> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(Self { cfg, file, size })
    }

    /// Writes one record; `full` marks the end of a line.
    pub fn record(&mut self, stream: Stream, full: bool, content: &[u8]) -> std::io::Result<()> {
        let mut rec = Vec::with_capacity(content.len() + 48);
        rec.extend_from_slice(crate::state::rfc3339(SystemTime::now()).as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_str().as_bytes());
        rec.extend_from_slice(if full { b" F " } else { b" P " });
        rec.extend_from_slice(content);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let p = &self.cfg.path;
        if self.cfg.max_files == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(p, self.cfg.max_files));
        for i in (1..self.cfg.max_files).rev() {
            let _ = std::fs::rename(numbered(p, i), numbered(p, i + 1));
        }
        std::fs::rename(p, numbered(p, 1))?;
        self.file = OpenOptions::new().create(true).append(true).open(p)?;
        self.size = 0;
        Ok(())
    }
}

fn numbered(p: &Path, i: u32) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Splits a stream's bytes into records, holding an unfinished line until it ends or
/// grows past [`MAX_LINE`].
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit(full, content)` for each record they complete.
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            if self.pending.is_empty() {
                emit_chunked(&data[..nl], true, &mut emit);
            } else {
                self.pending.extend_from_slice(&data[..nl]);
                let line = std::mem::take(&mut self.pending);
                emit_chunked(&line, true, &mut emit);
            }
            data = &data[nl + 1..];
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            emit(false, &self.pending);
            self.pending = rest;
        }
    }

    /// At EOF: whatever is left is a last, unterminated line.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            emit(true, &line);
        }
    }
}

fn emit_chunked(line: &[u8], full: bool, emit: &mut impl FnMut(bool, &[u8])) {
    let mut chunks = line.chunks(MAX_LINE).peekable();
    if chunks.peek().is_none() {
        emit(full, b"");
    }
    while let Some(c) = chunks.next() {
        emit(full && chunks.peek().is_none(), c);
    }
}

/// Copies the init's stdout and stderr into the log until both close, or until the init
/// has exited and nothing is left to read (a daemon outside the pid namespace may keep a
/// pipe open).
pub fn relay(mut writer: LogWriter, out: OwnedFd, err: OwnedFd, pid: i32) {
    let pidfd = crate::sys::pidfd_open(pid).ok();
    let mut open = [Some(out), Some(err)];
    let mut split = [LineSplitter::default(), LineSplitter::default()];
    let streams = [Stream::Stdout, Stream::Stderr];
    let mut exited = false;
    let mut buf = vec![0u8; 64 * 1024];
    while open.iter().any(Option::is_some) {
        let mut fds: Vec<PollFd> =
            open.iter().flatten().map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN)).collect();
        if let (Some(p), false) = (&pidfd, exited) {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if exited { PollTimeout::ZERO } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
            Ok(0) if exited => break,
            Ok(_) => {}
        }
        let ready: Vec<bool> =
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut idx = 0;
        for i in 0..2 {
            let Some(fd) = &open[i] else { continue };
            let is_ready = ready[idx];
            idx += 1;
            if !is_ready {
                continue;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    split[i].finish(|full, c| {
                        let _ = writer.record(streams[i], full, c);
                    });
                    open[i] = None;
                }
                Ok(n) => split[i].feed(&buf[..n], |full, c| {
                    let _ = writer.record(streams[i], full, c);
                }),
            }
        }
        if idx < ready.len() && ready[idx] {
            exited = true;
        }
    }
    for i in 0..2 {
        split[i].finish(|full, c| {
            let _ = writer.record(streams[i], full, c);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |f, b| out.push((f, b.to_vec())));
        }
        s.finish(|f, b| out.push((f, b.to_vec())));
        out
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let out = collect(&[b"hel", b"lo\nwor", b"ld\n\nlast"]);
        let want: Vec<(bool, Vec<u8>)> = vec![
            (true, b"hello".to_vec()),
            (true, b"world".to_vec()),
            (true, b"".to_vec()),
            (true, b"last".to_vec()),
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn long_lines_become_partial_records() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut data = long.clone();
        data.push(b'\n');
        let out = collect(&[&data]);
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].0, out[1].0, out[2].0), (false, false, true));
        assert_eq!(out.iter().map(|o| o.1.len()).sum::<usize>(), long.len());
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_max_files() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.log");
        let mut w = LogWriter::open(LogConfig { path: path.clone(), max_bytes: 200, max_files: 2 })
            .unwrap();
        for i in 0..40 {
            w.record(Stream::Stdout, true, format!("line {i}").as_bytes()).unwrap();
        }
        assert!(numbered(&path, 1).exists() && numbered(&path, 2).exists());
        assert!(!numbered(&path, 3).exists());
        let cur = std::fs::read_to_string(&path).unwrap();
        assert!(cur.len() <= 200);
        let last = cur.lines().last().unwrap();
        let parts: Vec<&str> = last.splitn(4, ' ').collect();
        assert_eq!(&parts[1..], ["stdout", "F", "line 39"]);
        assert!(parts[0].ends_with('Z') && parts[0].contains('T'));
    }
}
