//! A simulated node for tests and the demo: cgroups laid out as the kubelet
//! lays them, and burner processes with known loads placed in them from birth.
//!
//! Directories are named exactly as a kubelet (systemd or cgroupfs driver) and
//! containerd name them, on the real cgroup hierarchy of this kernel, with real
//! processes burning CPU or holding memory. Nothing is a mock: the agent reads
//! the same kernel interfaces it reads on a node.
//!
//! Burners are this crate's [`burner_main`] run in a child process; the caller
//! says how to start one (a test binary re-running itself, a CLI's hidden
//! subcommand) with a [`Launcher`].
#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod flag_reference;
pub mod process;
pub mod stats;
use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use agent::cgroup::Hierarchy;

/// Skips (returns `None` after saying why) unless this process can create
/// cgroups and load eBPF; under `NODEPULSE_REQUIRE_PRIVILEGED=1` (CI) it fails instead.
pub fn privileged(test: &str) -> Option<Hierarchy> {
    let why = if unsafe_geteuid() != 0 {
        Some("not running as root".to_string())
    } else if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel has no BTF (/sys/kernel/btf/vmlinux)".to_string())
    } else {
        match Hierarchy::detect(Path::new("/sys/fs/cgroup")) {
            Ok(h) if h.v2.is_some() => return Some(h),
            Ok(_) => Some("no cgroup v2 hierarchy on this host".to_string()),
            Err(e) => Some(e.to_string()),
        }
    };
    let why = why.unwrap_or_default();
    if std::env::var("NODEPULSE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs root, BTF and cgroup v2 here: {why}");
    }
    eprintln!("skipped {test}: {why} (run as root on a BTF kernel to run it)");
    None
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The environment variable that carries a burner's [`Burn`] spec.
pub const BURN_ENV: &str = "NODEPULSE_BURN";

/// How to start a process that calls [`burner_main`].
#[derive(Clone, Debug)]
pub struct Launcher {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl Launcher {
    /// The running test binary re-run for one `#[ignore]`d test named `entry`
    /// whose body calls [`burner_main`].
    pub fn test_binary(entry: &str) -> Self {
        Self {
            program: std::env::current_exe().expect("test binary path"),
            args: [
                entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: distinct, random-looking ids from (process, n).
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn seed(n: u32, salt: u64) -> u64 {
    mix((u64::from(std::process::id()) << 32 | u64::from(n)) ^ salt)
}

/// A UUID for simulated pod `n`, unique to this process.
pub fn uid(n: u32) -> String {
    let (a, b) = (seed(n, 1), seed(n, 2));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// A 64-hex container id for simulated container `n`, unique to this process.
pub fn container_id(n: u32) -> String {
    (3..7)
        .map(|salt| format!("{:016x}", seed(n, salt)))
        .collect()
}

/// The kubelet's path for a container, relative to the tree root.
pub fn systemd_container(base: &str, qos: &str, pod_uid: &str, cid: &str) -> String {
    let pod = pod_uid.replace('-', "_");
    if qos == "guaranteed" {
        format!("{base}/kubepods.slice/kubepods-pod{pod}.slice/cri-containerd-{cid}.scope")
    } else {
        format!(
            "{base}/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{pod}.slice/cri-containerd-{cid}.scope"
        )
    }
}

pub fn cgroupfs_container(base: &str, qos: &str, pod_uid: &str, cid: &str) -> String {
    if qos == "guaranteed" {
        format!("{base}/kubepods/pod{pod_uid}/{cid}")
    } else {
        format!("{base}/kubepods/{qos}/pod{pod_uid}/{cid}")
    }
}

/// Cgroups made by one test, in the v2 tree and (on hybrid/v1 hosts) the v1
/// memory and cpuacct controllers; all removed on drop, processes killed first.
pub struct CgroupTree {
    roots: Vec<PathBuf>,
    v2: PathBuf,
    /// A unique top directory, so parallel tests never collide.
    pub base: String,
    made: Vec<String>,
    /// See [`CgroupTree::new_v1`].
    v1_only: Option<Vec<PathBuf>>,
}

impl CgroupTree {
    pub fn new(h: &Hierarchy, test: &str) -> Self {
        let v2 = h.v2.clone().expect("checked by privileged()");
        let mut roots = vec![v2.clone()];
        roots.extend(h.v1_memory.clone());
        roots.extend(h.v1_cpuacct.clone());
        let base = format!(
            "/nodepulse-test-{}-{}-{}",
            test,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut tree = Self {
            roots,
            v2,
            base: base.clone(),
            made: Vec::new(),
            v1_only: None,
        };
        tree.mkdir(&base);
        tree
    }

    /// A tree whose cgroups below `base` are made only in the v1 memory and
    /// cpuacct controllers, as a cgroupfs-driver kubelet makes them on a
    /// hybrid host: the node's own `base` exists in v2 too (empty), pods do
    /// not. `None` where the host has no such v1 controllers.
    pub fn new_v1(h: &Hierarchy, test: &str) -> Option<Self> {
        let mut tree = Self::new(h, test);
        let roots: Vec<PathBuf> = h
            .v1_memory
            .iter()
            .chain(h.v1_cpuacct.iter())
            .cloned()
            .collect();
        if roots.len() < 2 {
            return None;
        }
        // `base` stays in the list of what to remove, in every hierarchy.
        tree.v1_only = Some(roots);
        Some(tree)
    }

    /// Where `rel` is made: the v1 controllers only for a [`CgroupTree::new_v1`]
    /// tree (below its base), every hierarchy otherwise.
    fn roots_for(&self, rel: &str) -> &[PathBuf] {
        match &self.v1_only {
            Some(v1) if rel.trim_end_matches('/') != self.base => v1,
            _ => &self.roots,
        }
    }

    /// Creates `rel` and its parents in every hierarchy.
    pub fn mkdir(&mut self, rel: &str) {
        let mut path = String::new();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            if self.made.contains(&path) {
                continue;
            }
            for root in self.roots_for(&path) {
                let dir = root.join(path.trim_start_matches('/'));
                if !dir.exists() {
                    fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                }
            }
            self.made.push(path.clone());
        }
    }

    /// Removes `rel` (made by [`CgroupTree::mkdir`], empty: no processes, no
    /// children) from every hierarchy.
    pub fn rmdir(&mut self, rel: &str) {
        for root in self.roots_for(rel) {
            let dir = root.join(rel.trim_start_matches('/'));
            fs::remove_dir(&dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
        }
        self.made.retain(|made| made != rel);
    }

    /// The v2 directory of `rel`.
    pub fn v2_dir(&self, rel: &str) -> PathBuf {
        self.v2.join(rel.trim_start_matches('/'))
    }

    /// Cumulative CPU of `rel` as the kernel's own `cpu.stat` says, ns.
    pub fn cpu_stat_ns(&self, rel: &str) -> u64 {
        let text = fs::read_to_string(self.v2_dir(rel).join("cpu.stat")).expect("cpu.stat");
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("usage_usec")
            * 1000
    }

    /// Freezes (or thaws) every task in `rel` with the v2 freezer and
    /// returns once the kernel says the cgroup is frozen (thawed): from
    /// then on its CPU time stands still.
    pub fn freeze(&self, rel: &str, frozen: bool) {
        let dir = self.v2_dir(rel);
        fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            .expect("cgroup.freeze");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        // The state changes once every task has stopped: bounded polling.
        for _ in 0..500 {
            let events = fs::read_to_string(dir.join("cgroup.events")).expect("cgroup.events");
            if events.lines().any(|l| l == want) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{rel}: not {want} after 5 s");
    }

    /// Starts a burner (see [`Burn`]) inside `rel` (created if needed): the child
    /// joins the cgroups before it execs, so every cycle it burns is theirs.
    /// Returns once the burner says it is running.
    pub fn spawn(&mut self, rel: &str, burn: &Burn, launcher: &Launcher) -> Burner {
        self.mkdir(rel);
        let procs: Vec<PathBuf> = self
            .roots_for(rel)
            .iter()
            .map(|r| r.join(rel.trim_start_matches('/')).join("cgroup.procs"))
            .collect();
        let mut cmd = Command::new(&launcher.program);
        cmd.args(&launcher.args)
            .env(BURN_ENV, burn.spec())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        join_cgroups_in_child(&mut cmd, &procs);
        let mut burner = Burner {
            child: cmd.spawn().expect("spawn burner"),
        };
        let stdout = burner.child.stdout.take().expect("piped stdout");
        // libtest prints its own lines first; the burner's comes after them.
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("burner output");
            if line.contains("burner ready") {
                return burner;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        drop(burner);
        panic!("burner exited before it was ready; it printed:\n{seen}");
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for rel in self.made.iter().rev() {
            // Kill whatever is left (v2 cgroup.kill, 5.14+), then remove, waiting
            // boundedly for the killed to exit.
            let _ = fs::write(self.v2_dir(rel).join("cgroup.kill"), "1");
            for root in &self.roots {
                let dir = root.join(rel.trim_start_matches('/'));
                for _ in 0..200 {
                    match fs::remove_dir(&dir) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                    }
                }
            }
        }
    }
}

/// Makes the child that `cmd` spawns join the cgroups whose `cgroup.procs`
/// files are `procs` before it execs, so that everything it ever runs is
/// theirs.
pub fn join_cgroups_in_child(cmd: &mut Command, procs: &[PathBuf]) {
    let procs: Vec<CString> = procs
        .iter()
        .map(|p| {
            CString::new(p.clone().into_os_string().into_encoded_bytes()).expect("no NUL in path")
        })
        .collect();
    // SAFETY: the hook only calls async-signal-safe functions (open, write,
    // close) on buffers prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A running burner; killed and reaped on drop.
pub struct Burner {
    child: Child,
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a burner does.
pub enum Burn {
    /// `threads` threads spinning without pause.
    Spin { threads: u32, cpu: Option<u32> },
    /// Busy `fraction` of every `period_ms`, asleep the rest: `fraction` of
    /// one core. Busy is counted on the thread's own CPU clock, so a busy
    /// phase that is preempted, or a sleep that overshoots, is made up in the
    /// next period (up to two periods' worth) rather than lost.
    Duty { fraction: f64, period_ms: u64 },
    /// Touch `mib` MiB of anonymous memory, write `cache_mib` MiB to `file`
    /// (page cache), then idle.
    Memory {
        mib: u64,
        cache_mib: u64,
        file: PathBuf,
    },
}

impl Burn {
    fn spec(&self) -> String {
        match self {
            Burn::Spin { threads, cpu } => {
                format!("spin:{threads}:{}", cpu.map_or(-1, i64::from))
            }
            Burn::Duty {
                fraction,
                period_ms,
            } => format!("duty:{fraction}:{period_ms}"),
            Burn::Memory {
                mib,
                cache_mib,
                file,
            } => format!("mem:{mib}:{cache_mib}:{}", file.display()),
        }
    }
}

/// The burner's body; runs in the child when `NODEPULSE_BURN` is set.
pub fn burner_main() {
    use std::{hint::black_box, io::Write};
    let Ok(spec) = std::env::var(BURN_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let ready = || {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "burner ready");
        let _ = out.flush();
    };
    match parts.as_slice() {
        ["spin", threads, cpu] => {
            let cpu: i64 = cpu.parse().expect("cpu");
            if cpu >= 0 {
                pin(cpu as usize);
            }
            let threads: u32 = threads.parse().expect("threads");
            for _ in 1..threads {
                std::thread::spawn(|| {
                    let mut x = 0u64;
                    loop {
                        x = black_box(x.wrapping_add(1));
                    }
                });
            }
            ready();
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        ["duty", fraction, period] => {
            let fraction: f64 = fraction.parse().expect("fraction");
            let period = std::time::Duration::from_millis(period.parse().expect("period"));
            ready();
            burn_duty(fraction, period)
        }
        ["mem", mib, cache, file] => {
            let mib: usize = mib.parse().expect("mib");
            let cache: usize = cache.parse().expect("cache");
            let held = hold_anonymous(mib << 20);
            let mut f = fs::File::create(file).expect("cache file");
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..cache {
                f.write_all(&chunk).expect("write");
            }
            f.sync_all().expect("fsync");
            ready();
            loop {
                std::thread::park();
                black_box(&held);
            }
        }
        _ => panic!("bad {BURN_ENV} {spec:?}"),
    }
}

/// Keeps this thread busy `fraction` of every `period` (on its own CPU clock),
/// forever.
///
/// Counting busy time on the wall clock falls 5-10 % short on a VM even when
/// idle: a sleeping vCPU can take a millisecond or more to wake, which
/// stretches every period. So: by the end of each period this thread's CPU
/// time must reach `fraction` of the wall time since start; debt beyond two
/// periods' worth (a starved machine) is forgiven rather than burnt later in
/// one long burst.
pub fn burn_duty(fraction: f64, period: std::time::Duration) -> ! {
    use std::{hint::black_box, time::Instant};
    let start = Instant::now();
    let cpu0 = thread_cpu_time();
    let most_owed = period.mul_f64(2.0 * fraction);
    let mut forgiven = std::time::Duration::ZERO;
    let mut next = start;
    loop {
        next += period;
        let now = Instant::now();
        if next < now {
            next = now + period;
        }
        let goal = (next - start).mul_f64(fraction);
        let used = thread_cpu_time().saturating_sub(cpu0) + forgiven;
        if goal > used + most_owed {
            forgiven += goal - used - most_owed;
        }
        while thread_cpu_time().saturating_sub(cpu0) + forgiven < goal {
            black_box(());
        }
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
    }
}

/// `bytes` of anonymous memory, every page touched so that it is resident.
pub fn hold_anonymous(bytes: usize) -> Vec<u8> {
    let mut held = vec![0u8; bytes];
    for page in held.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(held)
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time (utime + stime, seconds) in a `/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat` file; `None` if it cannot be read (the
/// process or thread is gone).
pub fn stat_cpu_seconds(stat: &Path) -> Option<f64> {
    let text = fs::read_to_string(stat).ok()?;
    // After the command name, which may hold spaces and parentheses:
    // utime and stime are fields 14 and 15 of the whole line.
    let rest = text.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / hz.max(1) as f64)
}
