//! Spreading a run over child processes of this binary (`--procs`): one
//! process may hold only RLIMIT_NOFILE sockets, so 15,000 client sockets
//! and more are split. Each child runs `shardmcp load --slice K/N` with the
//! same settings, works out its own share, and speaks JSON lines on stdout
//! ([`ChildLine`]); the parent says `go` on the child's stdin once every
//! child is set up, shows progress and merges the final statistics.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use serde::{Deserialize, Serialize};

use super::stats::{Stats, Tick};
use super::worker::Event;
use super::{start_threads, LoadError, LoadSpec, EVENTS_CAPACITY};

/// Longest line a child may write (a final report with its histograms).
const CHILD_LINE_BYTES_MAX: u64 = 64 << 20;
/// How long children get to clean up (DELETE sessions) after their final
/// report before they are killed.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(30);

/// What a child writes on stdout, one JSON object a line.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChildLine {
    /// Every session of the child is set up; it waits for `go`.
    Ready,
    Tick(Tick),
    Final(Box<Stats>),
    Failed(String),
}

pub struct Children {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Children {
    pub fn spawn(
        spec: &LoadSpec,
        procs: u64,
        events: Sender<Event>,
    ) -> Result<Children, LoadError> {
        let exe =
            std::env::current_exe().map_err(|source| LoadError::Child { index: 0, source })?;
        let mut children = Children {
            children: Vec::new(),
            stdins: Vec::new(),
            readers: Vec::new(),
        };
        for index in 0..procs {
            let mut command = Command::new(&exe);
            command
                .args(child_args(spec, index, procs))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = command
                .spawn()
                .map_err(|source| LoadError::Child { index, source })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                let _ = child.kill();
                return Err(LoadError::Child {
                    index,
                    source: std::io::Error::other("no pipes"),
                });
            };
            let events = events.clone();
            let source = index as usize;
            let reader = std::thread::Builder::new()
                .name(format!("load-child-{index}"))
                .spawn(move || read_child(source, stdout, events))
                .map_err(LoadError::Spawn)?;
            children.children.push(child);
            children.stdins.push(stdin);
            children.readers.push(reader);
        }
        Ok(children)
    }

    /// Tells every child to start.
    pub fn go(&mut self) -> Result<(), LoadError> {
        for (index, stdin) in self.stdins.iter_mut().enumerate() {
            stdin
                .write_all(b"go\n")
                .and_then(|()| stdin.flush())
                .map_err(|source| LoadError::Child {
                    index: index as u64,
                    source,
                })?;
        }
        Ok(())
    }

    /// Waits for the children to exit (killing them at once when `kill`,
    /// or after a grace period otherwise).
    pub fn finish(mut self, kill: bool) {
        let deadline = Instant::now()
            + if kill {
                Duration::ZERO
            } else {
                CHILD_EXIT_GRACE
            };
        self.stdins.clear();
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command line of child `index`: the same settings and its slice.
pub fn child_args(spec: &LoadSpec, index: u64, procs: u64) -> Vec<String> {
    let seconds = |d: Duration| format!("{}", d.as_secs_f64());
    let mut args = vec![
        "load".to_string(),
        "--target".into(),
        spec.target.clone(),
        "--transport".into(),
        spec.transport.name().into(),
        "--sessions".into(),
        spec.sessions.to_string(),
        "--connections".into(),
        spec.connections.to_string(),
        "--threads".into(),
        spec.threads.to_string(),
        "--procs".into(),
        procs.to_string(),
        "--warmup".into(),
        seconds(spec.warmup),
        "--duration".into(),
        seconds(spec.duration),
        "--timeout".into(),
        seconds(spec.timeout),
        "--mix".into(),
        spec.mix_text.clone(),
        "--slice".into(),
        format!("{index}/{procs}"),
        "--quiet".into(),
    ];
    if let Some(rate) = spec.rate_per_second {
        args.push("--rate".into());
        args.push(rate.to_string());
    }
    if spec.idle {
        args.push("--idle".into());
    }
    if spec.keep_sessions {
        args.push("--keep-sessions".into());
    }
    if spec.spread_sessions {
        args.push("--spread-sessions".into());
    }
    if !spec.spin.is_zero() {
        args.push("--spin".into());
        args.push(seconds(spec.spin));
    }
    if !spec.source_ips.is_empty() {
        let ips: Vec<String> = spec.source_ips.iter().map(|ip| ip.to_string()).collect();
        args.push("--source-ips".into());
        args.push(ips.join(","));
    }
    args
}

fn read_child(source: usize, stdout: std::process::ChildStdout, events: Sender<Event>) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let mut finished = false;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(CHILD_LINE_BYTES_MAX)
            .read_line(&mut line);
        let event = match read {
            Ok(0) if finished => return,
            Ok(0) | Err(_) => Event::Failed {
                source,
                message: "child process exited without its report".into(),
            },
            Ok(_) => match serde_json::from_str::<ChildLine>(&line) {
                Ok(ChildLine::Ready) => Event::Ready { source },
                Ok(ChildLine::Tick(tick)) => Event::Tick { source, tick },
                Ok(ChildLine::Final(stats)) => {
                    finished = true;
                    Event::Final { source, stats }
                }
                Ok(ChildLine::Failed(message)) => Event::Failed { source, message },
                Err(error) => Event::Failed {
                    source,
                    message: format!("unreadable line from child process: {error}"),
                },
            },
        };
        let stop = matches!(event, Event::Failed { .. });
        if events.send(event).is_err() || stop {
            return;
        }
    }
}

fn write_line(out: &mut impl Write, line: &ChildLine) -> Result<(), LoadError> {
    let text = serde_json::to_string(line)
        .map_err(|e| LoadError::Invalid(format!("cannot encode a report line: {e}")))?;
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| LoadError::Write {
            path: "stdout".into(),
            source,
        })
}

/// A child's side: run slice K of N and speak [`ChildLine`]s on stdout.
pub fn run_child(spec: &LoadSpec) -> Result<(), LoadError> {
    let Some((index, procs)) = spec.slice else {
        return Err(LoadError::Invalid("--slice is missing".into()));
    };
    super::host::raise_fd_limit()?;
    let share = spec.proc_share(index, procs);
    let plans = spec.worker_plans(&share);
    let (events_tx, events) = bounded(EVENTS_CAPACITY);
    let (gos, handles) = start_threads(plans, &events_tx)?;
    drop(events_tx);
    let mut out = std::io::stdout().lock();
    let result = forward(&mut out, &events, &gos, spec.mix.operations.len());
    if let Err(error) = &result {
        let _ = write_line(&mut out, &ChildLine::Failed(error.to_string()));
    }
    drop(gos);
    for handle in handles {
        let _ = handle.join();
    }
    result
}

fn forward(
    out: &mut impl Write,
    events: &crossbeam_channel::Receiver<Event>,
    gos: &[Sender<()>],
    operations: usize,
) -> Result<(), LoadError> {
    let (mut ready, mut finals) = (0, 0);
    let mut total = Stats::new(operations);
    while finals < gos.len() {
        let Ok(event) = events.recv() else {
            return Err(LoadError::Unfinished {
                missing: gos.len() - finals,
            });
        };
        match event {
            Event::Ready { .. } => {
                ready += 1;
                if ready == gos.len() {
                    write_line(out, &ChildLine::Ready)?;
                    let mut line = String::new();
                    let read = std::io::stdin().lock().take(64).read_line(&mut line);
                    if read.is_err() || line.trim() != "go" {
                        return Err(LoadError::Invalid("the parent process went away".into()));
                    }
                    for go in gos {
                        let _ = go.send(());
                    }
                }
            }
            Event::Tick { tick, .. } => write_line(out, &ChildLine::Tick(tick))?,
            Event::Final { stats, .. } => {
                total.merge(&stats)?;
                finals += 1;
            }
            Event::Failed { source, message } => {
                return Err(LoadError::Worker {
                    worker: source,
                    message,
                })
            }
        }
    }
    write_line(out, &ChildLine::Final(Box::new(total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::LoadSettings;

    #[test]
    fn child_arguments_carry_every_setting_and_the_slice() {
        let spec = LoadSpec::new(LoadSettings {
            target: Some("http://127.0.0.1:8080/mcp".into()),
            transport: "http".into(),
            sessions: 15_000,
            connections: Some(15_000),
            threads: Some(4),
            procs: Some(2),
            rate_per_second: Some(5_000.0),
            warmup: Duration::from_millis(1_500),
            duration: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            mix: r#"tools/call:echo:{"text":"a,b"}=3,ping"#.into(),
            idle: true,
            keep_sessions: true,
            ..LoadSettings::default()
        })
        .unwrap();
        let args = child_args(&spec, 1, 2);
        let joined = args.join(" ");
        for expected in [
            "--sessions 15000",
            "--connections 15000",
            "--procs 2",
            "--slice 1/2",
            "--warmup 1.5",
            "--duration 60",
            "--rate 5000",
            "--idle",
            "--keep-sessions",
            "--quiet",
        ] {
            assert!(joined.contains(expected), "{expected} in {joined}");
        }
        // The mix travels as one argument, untouched.
        assert!(args.contains(&r#"tools/call:echo:{"text":"a,b"}=3,ping"#.to_string()));
    }

    #[test]
    fn child_lines_round_trip() {
        let mut stats = Stats::new(1);
        stats.record_ok(0, 1_000);
        let line = serde_json::to_string(&ChildLine::Final(Box::new(stats.clone()))).unwrap();
        match serde_json::from_str::<ChildLine>(&line).unwrap() {
            ChildLine::Final(back) => assert_eq!(*back, stats),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            serde_json::from_str::<ChildLine>(r#""Ready""#).unwrap(),
            ChildLine::Ready
        ));
    }
}
