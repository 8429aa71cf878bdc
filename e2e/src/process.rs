//! Processes the harness starts.
//!
//! Long-running ones ([`Proc`]) get their own process group (stopped as a
//! group), a log file, the cluster's network namespace, and `PDEATHSIG`, so
//! that nothing outlives a test binary that is killed before its cleanup runs.
//! `PDEATHSIG` fires when the *thread* that forked exits, so they are forked
//! by one [`Spawner`] thread that lives exactly as long as the cluster (the
//! cluster's burners too, whose launcher sets `PDEATHSIG` through `setpriv`).
//!
//! Short ones ([`run`]) are bounded by a deadline.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use crate::{netns::NetNs, time::now_rfc3339};

type Job = Box<dyn FnOnce() + Send>;

/// The one thread that forks the cluster's long-running processes.
pub struct Spawner {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .context("starting the spawner thread")?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the spawner thread (a panic in `f` resumes in the caller).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        let (done, result) = mpsc::channel();
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("spawner stopped"))?;
        tx.send(Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        }))
        .map_err(|_| anyhow!("spawner thread is gone"))?;
        match result.recv() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(anyhow!("spawner thread is gone")),
        }
    }

    /// Spawns `cmd` on the spawner thread.
    fn spawn(&self, mut cmd: Command) -> Result<Child> {
        Ok(self.run(move || cmd.spawn())??)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A long-running process of the cluster; stopped on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` inside `netns`, stdout and stderr appended to `log`.
    pub fn start(
        spawner: &Spawner,
        netns: &NetNs,
        name: &str,
        mut cmd: Command,
        log: &Path,
    ) -> Result<Self> {
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(
            file,
            "=== {} e2e: starting {}",
            now_rfc3339(),
            display(&cmd)
        )?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0);
        netns.enter_in_child(&mut cmd);
        die_with_parent(&mut cmd);
        let child = spawner
            .spawn(cmd)
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `None` while it runs; its exit status once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// An error (with the log's tail) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 30)
            ),
        }
    }

    /// Sends `signal` to the process group, unless the leader was reaped.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exit_status().is_none() {
            // SAFETY: killpg has no memory-safety preconditions; the group is
            // the one this child leads (process_group(0)) and it is not reaped.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// SIGTERM to the group, up to `grace` for it to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.exit_status().is_some() {
            return self.exited;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                return self.exited;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        self.exited = self.child.wait().ok();
        self.exited
    }

    /// SIGKILL to the group, at once.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
        self.exited
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let status = self.stop(Duration::from_secs(5));
        if let Ok(mut f) = File::options().append(true).open(&self.log) {
            let _ = writeln!(f, "=== {} e2e: stopped ({status:?})", now_rfc3339());
        }
    }
}

/// SIGKILL the child when the thread that forked it exits (see the module doc).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: prctl, getppid and _exit are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Runs a short command to completion: its stdin is `input`, and it is killed
/// (and an error returned) if it has not exited by `timeout`.
pub fn run(mut cmd: Command, input: Option<Vec<u8>>, timeout: Duration) -> Result<Output> {
    let what = display(&cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {what}"))?;
    let pid = child.id() as libc::pid_t;
    let writer = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(bytes)) => Some(std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })),
        _ => None,
    };
    let (done, waited) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let result = match waited.recv_timeout(timeout) {
        Ok(r) => r.with_context(|| format!("waiting for {what}")),
        Err(_) => {
            // The waiter has not reported, so the child is (all but certainly)
            // not reaped yet and `pid` is still ours.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waited.recv();
            Err(anyhow!("{what}: no exit after {timeout:?}; killed"))
        }
    };
    let _ = waiter.join();
    if let Some(w) = writer {
        let _ = w.join();
    }
    result
}

/// The last `lines` lines of a log file (reads at most its last 256 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no {})", path.display());
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 << 10)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `program arg…` for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
