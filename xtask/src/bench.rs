//! Benchmarks whose results go into BENCHMARKS.md. Each reports a ratio
//! against a baseline measured side by side in the same run.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use agent::ebpf::{CpuAccounting, Options, iter::CgroupTotals};
use agent_common::PENDING_SLOTS;
use anyhow::{Context, Result, bail, ensure};
use testkit::stats::median;

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = std::io::pipe().context("pipe")?;
    Ok((r.into(), w.into()))
}

fn write_byte(fd: &OwnedFd) -> bool {
    // SAFETY: writing one byte from a valid buffer to an open fd.
    unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) == 1 }
}

fn read_byte(fd: &OwnedFd) -> bool {
    let mut b = [0u8];
    // SAFETY: reading one byte into a valid buffer from an open fd.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1 }
}

/// Two threads pinned to one CPU bounce a byte through two pipes `ops` times:
/// every op is two context switches. Returns ns per op. With `split`, the
/// other end is a child process in another cgroup, so every switch charges a
/// different cgroup than the one before.
fn ping_pong(cpu: usize, ops: u64, split: Option<&SplitCgroups>) -> Result<f64> {
    let (a_read, b_write) = pipe()?;
    let (b_read, a_write) = pipe()?;
    let peer = move || {
        for _ in 0..ops {
            if !read_byte(&a_read) || !write_byte(&a_write) {
                return false;
            }
        }
        true
    };
    let peer = match split {
        None => Peer::Thread(std::thread::spawn(move || -> Result<()> {
            pin(cpu)?;
            if !peer() {
                bail!("peer pipe closed");
            }
            Ok(())
        })),
        Some(split) => {
            // SAFETY: the child only makes system calls (no allocation, no
            // locks) and leaves with _exit.
            let child = unsafe { libc::fork() };
            if child == 0 {
                let ok = pin(cpu).is_ok() && peer();
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            if child < 0 {
                bail!("fork: {}", std::io::Error::last_os_error());
            }
            // Blocked on its first read until we are both placed.
            split.place(child as u32, std::process::id())?;
            Peer::Process(child)
        }
    };
    pin(cpu)?;
    let start = Instant::now();
    for _ in 0..ops {
        if !write_byte(&b_write) || !read_byte(&b_read) {
            bail!("pipe closed");
        }
    }
    let took = start.elapsed();
    peer.join()?;
    if let Some(split) = split {
        split.go_home()?;
    }
    Ok(took.as_nanos() as f64 / ops as f64)
}

/// The other end of a ping-pong.
enum Peer {
    Thread(std::thread::JoinHandle<Result<()>>),
    /// A forked child (in its own cgroup).
    Process(libc::pid_t),
}

impl Peer {
    fn join(self) -> Result<()> {
        match self {
            Peer::Thread(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("peer panicked"))?,
            Peer::Process(child) => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                    bail!("peer process failed: status {status}");
                }
                Ok(())
            }
        }
    }
}

/// Two sibling cgroup v2 directories for the two ends of a ping-pong, removed
/// on drop (after this process is back in its own cgroup).
struct SplitCgroups {
    ends: [std::path::PathBuf; 2],
    home: std::path::PathBuf,
}

impl SplitCgroups {
    fn new() -> Result<Self> {
        let v2 = agent::cgroup::Hierarchy::detect(std::path::Path::new("/sys/fs/cgroup"))?
            .v2
            .context("no cgroup v2 hierarchy")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("not in a cgroup v2 cgroup")?;
        let home = v2.join(rel.trim_start_matches('/'));
        let ends =
            ["a", "b"].map(|end| v2.join(format!("nodepulse-bench-{}-{end}", std::process::id())));
        for dir in &ends {
            std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self { ends, home })
    }

    fn place(&self, peer: u32, me: u32) -> Result<()> {
        for (dir, pid) in self.ends.iter().zip([me, peer]) {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving {pid} into {}", dir.display()))?;
        }
        Ok(())
    }

    fn go_home(&self) -> Result<()> {
        std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .with_context(|| format!("moving back into {}", self.home.display()))
    }
}

impl Drop for SplitCgroups {
    fn drop(&mut self) {
        for dir in &self.ends {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing {}: {e}", dir.display());
            }
        }
    }
}

/// What a round measures with.
#[derive(Clone, Copy, Debug)]
enum Attached {
    Nothing,
    /// An empty program at the same hook: what any `sched_switch` program
    /// costs on this kernel before its first instruction.
    Empty,
    Ours,
    /// The cgroup iterator, loaded and read every second from another
    /// thread as the agent reads it (nothing at the hook).
    Iterator,
}

fn ping_pong_with(
    attached: Attached,
    ours: &Options,
    cpu: usize,
    ops: u64,
    split: Option<&SplitCgroups>,
) -> Result<f64> {
    match attached {
        Attached::Nothing => ping_pong(cpu, ops, split),
        Attached::Empty => {
            let _empty = agent::ebpf::attach_empty_switch_program().context("loading eBPF")?;
            ping_pong(cpu, ops, split)
        }
        Attached::Ours => {
            let _ours = CpuAccounting::load(ours).context("loading eBPF")?;
            ping_pong(cpu, ops, split)
        }
        Attached::Iterator => {
            let mut iter = CgroupTotals::load(&ours.btf_path, ours.max_cgroups)
                .context("loading the cgroup iterator")?;
            let v2 = agent::cgroup::Hierarchy::detect(std::path::Path::new("/sys/fs/cgroup"))?
                .v2
                .context("no cgroup v2 hierarchy")?;
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                let reader = scope.spawn(|| -> Result<u64> {
                    let mut reads = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        // Every cgroup of the host: the most a read walks.
                        iter.read(&v2).context("reading the cgroup iterator")?;
                        reads += 1;
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                    Ok(reads)
                });
                let measured = ping_pong(cpu, ops, split);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                reader.thread().unpark();
                let reads = reader
                    .join()
                    .map_err(|_| anyhow::anyhow!("iterator reader panicked"))??;
                ensure!(reads > 0, "the iterator was never read");
                measured
            })
        }
    }
}

/// Cost per context switch of the sched_switch program: pinned ping-pong
/// with nothing, an empty program and ours attached, in rotating order each
/// round; medians, and medians of each round's own differences (which cancel
/// the machine's slower and faster spells). With `cross_cgroup` the two ends
/// are processes in two cgroups: every switch charges another cgroup than
/// the one before; with `pending_slots` 1 as well, each such charge moves
/// the CPU's one pending slot into the hash (the eviction path).
#[allow(clippy::print_stdout)]
pub fn switch_cost(rounds: usize, ops: u64, cross_cgroup: bool, pending_slots: u32) -> Result<()> {
    use Attached::{Empty, Iterator, Nothing, Ours};
    let cpu = 0;
    let opts = Options {
        pending_slots,
        ..Options::default()
    };
    let split = cross_cgroup.then(SplitCgroups::new).transpose()?;
    let split = split.as_ref();
    // Warm up caches and frequency.
    ping_pong(cpu, ops / 4, split)?;
    let orders = [
        [Nothing, Empty, Ours, Iterator],
        [Iterator, Nothing, Empty, Ours],
        [Ours, Iterator, Nothing, Empty],
        [Empty, Ours, Iterator, Nothing],
    ];
    let mut ns = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        let mut this = [0.0; 4];
        for attached in orders[round % orders.len()] {
            this[attached as usize] = ping_pong_with(attached, &opts, cpu, ops, split)?;
        }
        eprintln!(
            "round {}: {:.1} ns/op without, {:.1} with an empty program, {:.1} with ours, \
             {:.1} with the cgroup iterator",
            round + 1,
            this[0],
            this[1],
            this[2],
            this[3]
        );
        for (all, one) in ns.iter_mut().zip(this) {
            all.push(one);
        }
    }
    let [without, empty, ours, iterator] = ns;
    let differences = |with: &[f64], base: &[f64]| -> Vec<f64> {
        with.iter().zip(base).map(|(w, b)| (w - b) / 2.0).collect()
    };
    let per_switch = |with: &[f64], base: &[f64]| median(differences(with, base));
    // The noise of a per-switch difference: the median absolute deviation
    // of the rounds' own differences.
    let noise = |with: &[f64], base: &[f64]| {
        let d = differences(with, base);
        let m = median(d.clone());
        median(d.iter().map(|x| (x - m).abs()))
    };
    let (m0, me, mo, mi) = (
        median(without.clone()),
        median(empty.clone()),
        median(ours.clone()),
        median(iterator.clone()),
    );
    let runs = program_run_time(&opts, cpu, ops, split)?;
    let ends = if cross_cgroup {
        "two processes in two cgroups"
    } else {
        "two threads, one cgroup"
    };
    let slots = opts
        .pending_slots
        .clamp(1, PENDING_SLOTS)
        .next_power_of_two();
    println!(
        "| ping-pong, CPU {cpu}, {ends}, {slots} pending slots, {ops} ops x {rounds} rounds | nothing | empty program | switch program | cgroup iterator |"
    );
    println!("|---|---|---|---|---|");
    println!("| median ns per op (2 switches) | {m0:.1} | {me:.1} | {mo:.1} | {mi:.1} |");
    println!(
        "| ratio to nothing | 1.000 | {:.3} | {:.3} | {:.3} |",
        me / m0,
        mo / m0,
        mi / m0
    );
    println!(
        "| added per context switch (median of rounds ± their median absolute deviation) | | {:.1} ± {:.1} ns | {:.1} ± {:.1} ns | {:.1} ± {:.1} ns |",
        per_switch(&empty, &without),
        noise(&empty, &without),
        per_switch(&ours, &without),
        noise(&ours, &without),
        per_switch(&iterator, &without),
        noise(&iterator, &without)
    );
    println!(
        "| switch program over the empty program, per switch | | | {:.1} ns | |",
        per_switch(&ours, &empty)
    );
    println!();
    println!(
        "| switch program (kernel run-time statistics, one more ping-pong round) | runs | ns per run |"
    );
    println!("|---|---|---|");
    for (name, runs, ns) in runs {
        println!("| {name} | {runs} | {ns:.1} |");
    }
    Ok(())
}

/// The switch programs' own run time per run, as the kernel measures it with
/// run-time statistics on, over one ping-pong round, ours attached first and
/// the empty program second. The statistics add two clock reads to every run
/// (the empty program's figure: that and nothing else) and leave out the
/// tracepoint's dispatch. Any other agent's switch program loaded at the time
/// (say, an older build running beside this one) is measured over the same
/// switches and listed too.
fn program_run_time(
    ours: &Options,
    cpu: usize,
    ops: u64,
    split: Option<&SplitCgroups>,
) -> Result<Vec<(String, u64, f64)>> {
    let programs = CpuAccounting::load(ours).context("loading eBPF")?;
    let empty = agent::ebpf::attach_empty_switch_program().context("loading eBPF")?;
    let stats = agent::ebpf::run_time_stats().context("enabling run-time statistics")?;
    let before = agent::ebpf::switch_program_runs();
    ping_pong(cpu, ops, split)?;
    let after = agent::ebpf::switch_program_runs();
    drop(stats);
    drop(empty);
    drop(programs);
    Ok(after
        .into_iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.id == a.id)?;
            let runs = a.runs.checked_sub(b.runs).filter(|&r| r > 0)?;
            let ns = (a.run_time.saturating_sub(b.run_time)).as_nanos() as f64 / runs as f64;
            Some((format!("{} (id {})", a.name, a.id), runs, ns))
        })
        .collect())
}

/// CPU time and peak RSS of a child process, from wait4, and its figures
/// after start-up.
struct Usage {
    cpu: Duration,
    max_rss_kib: u64,
    /// `None`: it had exited by the warm-up's end (a smoke run).
    steady: Option<Steady>,
}

/// A child's figures from the warm-up's end to its exit.
#[derive(Clone, Copy)]
struct Steady {
    mcpu: f64,
    /// The largest RSS seen, sampled every [`RSS_SAMPLE_EVERY`].
    rss_kib: u64,
}

/// How often a running child's RSS is sampled.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// `VmRSS` of `pid`, KiB; `None` once it has exited.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// CPU time so far of every thread of `pid` (`/proc/<pid>/task/*/schedstat`,
/// first field: the scheduler's run time in ns, the clock rusage is made of).
fn task_cpu(pid: u32) -> Result<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("listing tasks")? {
        let text = std::fs::read_to_string(task?.path().join("schedstat"))?;
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("schedstat")?;
    }
    Ok(Duration::from_nanos(ns))
}

/// Runs `cmd` to its end, measured; its stderr goes to `log`, whose end is
/// shown if it fails.
fn run_measured(
    cmd: &mut std::process::Command,
    warmup: Duration,
    log: &std::path::Path,
) -> Result<Usage> {
    let stderr =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd.stderr(stderr).spawn().context("spawning the agent")?;
    let started = Instant::now();
    std::thread::sleep(warmup);
    let warm_cpu = task_cpu(child.id()).context("the agent's CPU after warm-up")?;
    let warm_at = Instant::now();
    let pid = child.id() as libc::pid_t;
    // Readable once the child exits: the wait between RSS samples ends
    // then, so the run's wall time is not over by up to a sample period.
    // SAFETY: pidfd_open takes a pid and flags, and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        bail!("pidfd_open: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned here alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut steady_rss_kib = None;
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if rc == pid {
            break;
        }
        if rc != 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        // A zombie has no VmRSS line: the last sample stands.
        if let Some(kib) = rss_kib(child.id()) {
            steady_rss_kib = steady_rss_kib.max(Some(kib));
        }
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd; an error or EINTR just samples again.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, RSS_SAMPLE_EVERY.as_millis() as i32) };
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "the agent failed (wait status {status}); the end of its log ({}):\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    let ended = Instant::now();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    eprintln!(
        "  start-up (first {:.1} s): {:.1} ms CPU",
        (warm_at - started).as_secs_f64(),
        warm_cpu.as_secs_f64() * 1000.0
    );
    let steady = steady_rss_kib.map(|rss_kib| Steady {
        mcpu: cpu.saturating_sub(warm_cpu).as_secs_f64() / (ended - warm_at).as_secs_f64() * 1000.0,
        rss_kib,
    });
    Ok(Usage {
        cpu,
        max_rss_kib: ru.ru_maxrss as u64,
        steady,
    })
}

/// Start-up (loading eBPF, the first walk) is excluded from the steady figure:
/// the agent's CPU is read from procfs this long after it starts.
const WARMUP: Duration = Duration::from_secs(5);

/// Names an agent binary to measure instead of building this tree's.
const AGENT_ENV: &str = "NODEPULSE_BENCH_AGENT";

/// What `xtask bench agent` runs.
pub struct AgentRuns {
    pub pods: u32,
    pub seconds: u64,
    /// Another agent binary, run before this tree's for each source.
    pub baseline: Option<std::path::PathBuf>,
    /// Only these sources (`iterator`, `switch`, `switch-stat`,
    /// `cgroupfs`); empty: all.
    pub sources: Vec<String>,
}

/// The configurations measured: name, `--cpu-source`, `--memory-stat-max-age`
/// and what `--sources` calls it. The third is the same build reading
/// `memory.stat` at every interval (the cost for containers whose memory
/// moves every second).
const CONFIGS: [(&str, &str, &str, &str); 4] = [
    ("cgroup iterator", "iterator", "10s", "iterator"),
    ("switch program", "switch", "10s", "switch"),
    (
        "switch program, memory.stat every interval",
        "switch",
        "0",
        "switch-stat",
    ),
    ("cgroupfs", "cgroupfs", "10s", "cgroupfs"),
];

/// One measured run of the agent.
struct Row {
    /// The configuration measured: one of [`CONFIGS`].
    config: &'static (&'static str, &'static str, &'static str, &'static str),
    /// Run with the `--baseline` binary.
    baseline: bool,
    mcpu: f64,
    rss_kib: u64,
    steady: Option<Steady>,
}

impl Row {
    fn name_of(config: &(&str, &str, &str, &str), baseline: bool) -> String {
        match baseline {
            true => format!("{} (baseline)", config.0),
            false => config.0.to_string(),
        }
    }

    fn name(&self) -> String {
        Row::name_of(self.config, self.baseline)
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A figure to two decimals, or `-` where there is none.
fn or_dash(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// Agent CPU and RSS (its peak, and the largest after start-up) while it
/// tracks `pods` pods at 1 s: each CPU
/// source (the cgroup iterator, the switch program, the same reading
/// `memory.stat` at every interval, cgroupfs), measured in the same run;
/// with a baseline binary, it and this build in turn for each.
#[allow(clippy::print_stdout)]
pub fn agent_cost(root: &std::path::Path, runs: &AgentRuns) -> Result<()> {
    use testkit::{Burn, CgroupTree, Launcher};
    let AgentRuns { pods, seconds, .. } = *runs;
    for s in &runs.sources {
        ensure!(
            CONFIGS.iter().any(|c| c.3 == s),
            "--sources: unknown {s:?} (iterator, switch, switch-stat, cgroupfs)"
        );
    }
    let configs: Vec<_> = CONFIGS
        .iter()
        .filter(|c| runs.sources.is_empty() || runs.sources.iter().any(|s| s == c.3))
        .collect();
    let Some(h) = testkit::privileged("bench agent") else {
        bail!("needs root, BTF and cgroup v2");
    };
    // Another build of the agent (say, the previous one, for a before/after
    // under the same conditions) instead of building this tree's.
    let agent = match std::env::var_os(AGENT_ENV) {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            let status = std::process::Command::new("cargo")
                .current_dir(root)
                .args(["build", "--release", "--package", "agent"])
                .status()
                .context("building the agent")?;
            if !status.success() {
                bail!("building the agent failed");
            }
            root.join("target/release/nodepulse-agent")
        }
    };
    eprintln!("agent: {}", agent.display());
    let mut binaries = Vec::new();
    if let Some(baseline) = &runs.baseline {
        ensure!(
            baseline.is_file(),
            "--baseline: no file {}",
            baseline.display()
        );
        eprintln!("baseline: {}", baseline.display());
        binaries.push((true, baseline.clone()));
    }
    binaries.push((false, agent));
    let mut tree = CgroupTree::new(&h, "bench");
    let base = tree.base.clone();
    let launcher = Launcher {
        program: std::env::current_exe()?,
        args: vec!["burn".into()],
    };
    let scratch = tempfile_dir()?;
    let mut holders = Vec::new();
    for n in 0..pods {
        let (uid, cid) = (testkit::uid(n), testkit::container_id(n));
        let path = testkit::systemd_container(&base, "burstable", &uid, &cid);
        let burn = Burn::Memory {
            mib: 1,
            cache_mib: 0,
            file: scratch.join(format!("f{n}")),
        };
        holders.push(tree.spawn(&path, &burn, &launcher));
    }
    let mut rows: Vec<Row> = Vec::new();
    for &config in &configs {
        let &(_, source, stat_age, _) = config;
        for &(baseline, ref binary) in &binaries {
            let name = Row::name_of(config, baseline);
            let mut cmd = std::process::Command::new(binary);
            cmd.args(["--cpu-source", source, "--node-cgroup", &base])
                .args(["--memory-stat-max-age", stat_age])
                .args(["top", "--interval", "1s", "--count", &seconds.to_string()])
                .stdout(std::process::Stdio::null());
            let u = run_measured(&mut cmd, WARMUP, &scratch.join("agent.log"))
                .with_context(|| name.clone())?;
            let mcpu = u.cpu.as_secs_f64() / seconds as f64 * 1000.0;
            eprintln!(
                "{name}: {mcpu:.2} mCPU, after start-up {} mCPU, peak RSS {:.1} MiB, after start-up {} MiB",
                or_dash(u.steady.map(|s| s.mcpu)),
                mib(u.max_rss_kib),
                or_dash(u.steady.map(|s| mib(s.rss_kib))),
            );
            rows.push(Row {
                config,
                baseline,
                mcpu,
                rss_kib: u.max_rss_kib,
                steady: u.steady,
            });
        }
    }
    let reads = read_cost(&tree.v2_dir(&base))?;
    drop(holders);
    drop(tree);
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "| agent, {pods} pods, 1 s interval, {seconds} s | CPU (mCPU avg, whole run) | CPU (mCPU avg, after the first {0} s) | peak RSS (MiB) | largest RSS after the first {0} s (MiB) |",
        WARMUP.as_secs()
    );
    println!("|---|---|---|---|---|");
    let print = |name: &str, a: &Row, b: &Row| {
        println!(
            "| {name} | {:.2} | {} | {:.2} | {} |",
            a.mcpu / b.mcpu,
            or_dash(a.steady.zip(b.steady).map(|(a, b)| a.mcpu / b.mcpu)),
            a.rss_kib as f64 / b.rss_kib as f64,
            or_dash(
                a.steady
                    .zip(b.steady)
                    .map(|(a, b)| a.rss_kib as f64 / b.rss_kib as f64)
            ),
        );
    };
    for r in &rows {
        println!(
            "| {} | {:.2} | {} | {:.1} | {} |",
            r.name(),
            r.mcpu,
            or_dash(r.steady.map(|s| s.mcpu)),
            mib(r.rss_kib),
            or_dash(r.steady.map(|s| mib(s.rss_kib))),
        );
    }
    if runs.baseline.is_some() {
        for pair in rows.chunks(2) {
            if let [base, this] = pair {
                print(&format!("ratio {} / baseline", this.name()), this, base);
            }
        }
    } else {
        let row = |config: &str| rows.iter().find(|r| r.config.3 == config);
        if let (Some(i), Some(e)) = (row("iterator"), row("switch")) {
            print("ratio iterator / switch program", i, e);
        }
        if let (Some(e), Some(b)) = (row("switch"), row("switch-stat")) {
            print(
                "ratio switch program / the same with memory.stat every interval",
                e,
                b,
            );
        }
    }
    println!();
    println!("{reads}");
    Ok(())
}

/// Reading every cgroup's CPU time below `start` (the bench's pods), µs per
/// cgroup: one iterator walk against opening, reading and closing each
/// cgroup's `cpu.stat`, alternating, 200 times each.
fn read_cost(start: &std::path::Path) -> Result<String> {
    let mut dirs = vec![start.to_path_buf()];
    let mut i = 0;
    while let Some(dir) = dirs.get(i).cloned() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        i += 1;
    }
    let mut iter = CgroupTotals::load(
        std::path::Path::new("/sys/kernel/btf/vmlinux"),
        agent_common::CGROUP_CPU_MAX_ENTRIES,
    )
    .context("loading the cgroup iterator")?;
    let (mut walked, mut files) = (Duration::ZERO, Duration::ZERO);
    const ROUNDS: u32 = 200;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let totals = iter.read(start)?.cgroups;
        walked += t.elapsed();
        ensure!(
            totals.len() == dirs.len(),
            "the iterator read {} cgroups, the tree has {}",
            totals.len(),
            dirs.len()
        );
        let t = Instant::now();
        for dir in &dirs {
            std::hint::black_box(std::fs::read_to_string(dir.join("cpu.stat"))?);
        }
        files += t.elapsed();
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(ROUNDS) / dirs.len() as f64;
    Ok(format!(
        "| reading {} cgroups' CPU, {ROUNDS} reads each, alternating | µs per cgroup per read |\n\
         |---|---|\n\
         | cgroup iterator (a walk, then the mapped results read) | {:.2} |\n\
         | `cpu.stat` files (open, read, close) | {:.2} |\n\
         | ratio iterator / files | {:.3} |",
        dirs.len(),
        per(walked),
        per(files),
        per(walked) / per(files)
    ))
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("nodepulse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
