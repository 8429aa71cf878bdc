//! The private network namespace every process of a test cluster runs in.
//!
//! It holds `lo` and a veth pair whose both ends stay inside it; [`DEVICE`]
//! carries the cluster's addresses (kube-apiserver and etcd on
//! [`crate::API_IP`], one address per aggregator replica, one per simulated
//! node). A `dummy` device would do as well, but kernels without the `dummy`
//! driver exist (this project's machines among them) and every container host
//! has veth. The namespace has no route anywhere else, so the network rule
//! (loopback or our own namespace only) holds by construction.
//!
//! Children join only the *network* namespace (`setns` between fork and exec)
//! rather than going through `ip netns exec`: that command also unshares the
//! mount namespace and remounts `/sys`, which detaches `/sys/fs/cgroup`, and
//! the agent would then see no cgroups at all.
#![allow(unsafe_code)]

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

/// Every namespace the harness makes is `np-e2e-<pid>-<n>`.
pub const PREFIX: &str = "np-e2e-";
/// The device that carries the cluster's addresses (one end of a veth pair).
pub const DEVICE: &str = "np0";
/// The other end, also inside the namespace.
const PEER: &str = "np0-peer";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Open for the namespace's lifetime: children `setns` to it.
    file: File,
}

impl NetNs {
    /// Creates `np-e2e-<pid>-<n>` with `lo` and [`DEVICE`] up, after
    /// deleting namespaces left by harness processes that no longer exist.
    pub fn create() -> Result<Self> {
        remove_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let file = match File::open(Path::new("/run/netns").join(&name)) {
            Ok(f) => f,
            Err(e) => {
                let _ = ip(&["netns", "del", &name]);
                return Err(e).with_context(|| format!("opening /run/netns/{name}"));
            }
        };
        let ns = Self { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "add", DEVICE, "type", "veth", "peer", "name", PEER])?;
        ns.ip(&["link", "set", DEVICE, "up"])?;
        ns.ip(&["link", "set", PEER, "up"])?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `addr/prefix` to [`DEVICE`].
    pub fn add_address(&self, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        self.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", DEVICE])
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Makes the child that `cmd` spawns join this namespace before it execs.
    /// The namespace must outlive the spawn (it does: the cluster owns both).
    pub fn enter_in_child(&self, cmd: &mut Command) {
        setns_in_child(cmd, &self.file, libc::CLONE_NEWNET);
    }

    /// Runs `f` on a thread that has joined this namespace (a thread's network
    /// namespace is its own: the rest of the process stays where it is).
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        run_on_thread_in(&self.file, libc::CLONE_NEWNET, f)
    }

    /// Runs `f` on a new thread that joins this namespace, in the background
    /// (the namespace must outlive the thread: join it before the cluster
    /// drops).
    pub fn spawn<R: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<R>>> {
        let ns = self
            .file
            .try_clone()
            .context("duplicating the namespace fd")?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run_on_thread_in(&ns, libc::CLONE_NEWNET, f))
            .context("starting a thread in the namespace")
    }

    /// A tokio runtime whose every thread (workers and blocking pool) joins
    /// this namespace as it starts: its sockets are the namespace's. Work
    /// goes through [`NsRuntime::run`] (a plain `block_on` would poll its
    /// future on the calling thread, outside).
    pub fn runtime(&self, workers: usize) -> Result<NsRuntime> {
        let ns = self
            .file
            .try_clone()
            .context("duplicating the namespace fd")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_start(move || {
                // SAFETY: setns acts on the calling thread only, with a
                // valid namespace fd (owned by this closure).
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    // A thread outside would reach the host's network.
                    eprintln!(
                        "setns into the test namespace: {}",
                        std::io::Error::last_os_error()
                    );
                    std::process::abort();
                }
            })
            .build()
            .context("building a runtime")?;
        Ok(NsRuntime(runtime))
    }

    /// Whether a TCP connection to `addr` inside the namespace succeeds.
    pub fn tcp_open(&self, addr: SocketAddr) -> bool {
        self.run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
            .unwrap_or(false)
    }

    /// A plain-HTTP `GET` inside the namespace: (status, body).
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        self.run_in(move || -> Result<(u16, String)> {
            let timeout = Some(Duration::from_secs(2));
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(timeout)?;
            s.set_write_timeout(timeout)?;
            s.write_all(request.as_bytes())?;
            let mut response = String::new();
            s.take(1 << 20).read_to_string(&mut response)?;
            let status = response
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("not an HTTP response from {addr}"))?;
            let body = response
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string();
            Ok((status, body))
        })?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("e2e: deleting network namespace {}: {e:#}", self.name);
        }
    }
}

/// Makes the child that `cmd` spawns join the namespace `ns` (of type `kind`,
/// `CLONE_NEWNET` or `CLONE_NEWNS`) before it execs. `ns` must stay open
/// until the spawn returns.
pub(crate) fn setns_in_child(cmd: &mut Command, ns: &File, kind: libc::c_int) {
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; it only reads `fd`, which stays open
    // in the parent (and so in the forked child) until after exec. A forked
    // child is single-threaded, as joining a mount namespace requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, kind) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` on a new thread that has joined the namespace `ns` (of type
/// `kind`); the rest of the process stays where it is. A mount namespace
/// needs the thread's own filesystem context, so the thread unshares that
/// first.
pub(crate) fn run_on_thread_in<R: Send>(
    ns: &File,
    kind: libc::c_int,
    f: impl FnOnce() -> R + Send,
) -> Result<R> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: unshare and setns act on the calling thread only, with
            // a valid namespace fd.
            unsafe {
                if kind == libc::CLONE_NEWNS && libc::unshare(libc::CLONE_FS) != 0 {
                    return Err(anyhow!(
                        "unshare(CLONE_FS): {}",
                        std::io::Error::last_os_error()
                    ));
                }
                if libc::setns(fd, kind) != 0 {
                    return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
                }
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread inside a test namespace panicked"))?
    })
}

/// See [`NetNs::runtime`].
pub struct NsRuntime(tokio::runtime::Runtime);

impl NsRuntime {
    /// Runs `work` to completion on one of the runtime's threads.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        self.0
            .block_on(self.0.spawn(work))
            .map_err(|e| anyhow!("a task inside the test namespace failed: {e}"))
    }
}

/// Runs `ip <args>`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes `np-e2e-<pid>-<n>` namespaces whose harness process is gone (killed
/// before its cleanup ran), killing what still runs inside them first.
fn remove_stale() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for victim in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(victim, libc::SIGKILL) };
            }
        }
        match ip(&["netns", "del", &name]) {
            Ok(()) => eprintln!("e2e: removed stale network namespace {name}"),
            Err(e) => eprintln!("e2e: removing stale network namespace {name}: {e:#}"),
        }
    }
}
