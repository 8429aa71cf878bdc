//! Loads and drives the kernel programs of `agent-ebpf`: exact on-CPU time per
//! cgroup v2 id, charged at every context switch.
//!
//! Reading is flush-then-read: before each read the never-attached `flush_cpu`
//! program is test-run on every CPU, charging whatever runs there (a busy loop
//! that never switches is otherwise invisible). Where the kernel cannot test-run
//! a raw tracepoint on a chosen CPU, a per-CPU software clock runs the same
//! charge instead, at [`TICK_HZ`].
pub mod btf;
pub mod iter;
mod kfunc;

use std::{
    num::NonZeroU32,
    time::{Duration, Instant, SystemTime},
};

pub use agent_common::TaskOffsets;
use agent_common::{
    CGROUP_CPU_MAX_ENTRIES, GLOBAL_LOADED_AT_NS, GLOBAL_PENDING_SLOTS_USED, GLOBAL_TASK_OFFSETS,
    MAP_CGROUP_CPU, MAP_STATS, PENDING_SLOTS, PROG_FLUSH, PROG_SCHED_SWITCH,
    PROG_SCHED_SWITCH_EMPTY, PROG_SCHED_SWITCH_RAW, PROG_TICK, Stat, TRACEPOINT_SCHED_SWITCH,
    TYPEDEF_SCHED_SWITCH,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        BtfTracePoint, PerfEvent, ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use tracing::{debug, info, warn};

pub use btf::Kernel;

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENT_EBPF_OBJECT"));

/// Rate of the fallback per-CPU clock: ≥ 100 Hz bounds a lone busy loop's
/// per-second error to 1 %.
pub const TICK_HZ: u64 = 100;

/// How often reads check the kernel side's counters of lost charges (and
/// warn when they grew).
pub const LOSS_CHECK_PERIOD: Duration = Duration::from_secs(30);

/// Errors loading or reading the programs. Any of them makes the agent fall back
/// to cgroupfs counters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this agent was built without its eBPF object; run `cargo xtask build-ebpf` \
         (after `scripts/setup.sh`) and rebuild"
    )]
    NotEmbedded,
    #[error("reading task_struct offsets from BTF: {0}")]
    Btf(#[from] btf::Error),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {}", brief(.source))]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("listing online CPUs ({0}): {1}")]
    Cpus(&'static str, #[source] std::io::Error),
    #[error("attaching sched_switch: BTF tracepoint: {btf}; raw tracepoint: {raw}")]
    Attach { btf: String, raw: Box<Error> },
    #[error("program {0} returned {1}: the loader did not set the kernel side's offsets")]
    Refused(&'static str, u32),
    #[error("kernel function call: {0}")]
    Kfunc(&'static str),
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the running tasks are charged before a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMode {
    /// `flush_cpu` test-run on each CPU right before reading: exact at read time.
    TestRun,
    /// Per-CPU software clock at this many Hz.
    Tick(u64),
}

/// Where to find kernel interfaces; overridable so a DaemonSet can use host mounts.
#[derive(Clone, Debug)]
pub struct Options {
    /// The kernel's BTF (`/sys/kernel/btf/vmlinux`).
    pub btf_path: std::path::PathBuf,
    /// Force the per-CPU clock instead of flush-on-read (tests, benchmarks).
    pub force_tick: bool,
    /// Attach the raw tracepoint even where the BTF one attaches (tests).
    pub force_raw_tracepoint: bool,
    /// Slots per CPU of the kernel side's cache of pending charges, 1 to
    /// [`PENDING_SLOTS`], rounded up to a power of two (fewer only in tests,
    /// to make cgroups share slots).
    pub pending_slots: u32,
    /// How many cgroups the kernel side counts at once (see
    /// [`CGROUP_CPU_MAX_ENTRIES`]); the time of any more is lost, and
    /// [`CpuAccounting::read`] warns.
    pub max_cgroups: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            btf_path: "/sys/kernel/btf/vmlinux".into(),
            force_tick: false,
            force_raw_tracepoint: false,
            pending_slots: PENDING_SLOTS,
            max_cgroups: CGROUP_CPU_MAX_ENTRIES,
        }
    }
}

/// Which program charges at context switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchHook {
    BtfTracepoint,
    RawTracepoint,
}

/// The loaded, attached programs and their maps.
pub struct CpuAccounting {
    ebpf: Ebpf,
    cgroup_cpu: PerCpuHashMap<MapData, u64, u64>,
    stats: Stats,
    cpus: Vec<u32>,
    flush: FlushMode,
    hook: SwitchHook,
    logger: Option<Logger>,
}

/// The kernel side's [`Stat`] counters, with what they were when last
/// checked, to warn when a counter of lost time grows.
pub(crate) struct Stats {
    map: PerCpuArray<MapData, u64>,
    seen: [u64; Stat::COUNT as usize],
    checked_at: Option<Instant>,
}

impl Stats {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            map: take(ebpf, MAP_STATS)?,
            seen: [0; Stat::COUNT as usize],
            checked_at: None,
        })
    }

    /// One counter, summed over CPUs (0 if unreadable).
    pub(crate) fn get(&self, stat: Stat) -> u64 {
        self.map
            .get(&(stat as u32), 0)
            .map(|per_cpu| sum_over_cpus(&per_cpu))
            .unwrap_or(0)
    }

    /// Warns when the kernel side counted time it lost (or doubted): at the
    /// first check and then at most every [`LOSS_CHECK_PERIOD`], with the
    /// counts since the last warning.
    pub(crate) fn warn_on_losses(&mut self) {
        let now = Instant::now();
        if self
            .checked_at
            .is_some_and(|at| now.duration_since(at) < LOSS_CHECK_PERIOD)
        {
            return;
        }
        self.checked_at = Some(now);
        for stat in Stat::ALL {
            let Some(meaning) = loss(stat) else { continue };
            let total = self.get(stat);
            let seen = &mut self.seen[stat as usize];
            if total > *seen {
                warn!(
                    counter = stat.name(),
                    new = total - *seen,
                    total,
                    "eBPF CPU accounting: {meaning}"
                );
                *seen = total;
            }
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The wall-clock time of `monotonic` (CLOCK_MONOTONIC ns, what programs'
/// `bpf_ktime_get_ns` gives), a moment in the past: now less the time since.
fn wall_time(monotonic: u64) -> SystemTime {
    let since = Duration::from_nanos(monotonic_ns().saturating_sub(monotonic));
    SystemTime::now() - since
}

impl CpuAccounting {
    /// Loads the programs, attaches the switch hook and picks
    /// a flush mode. Needs CAP_BPF + CAP_PERFMON (or root) and kernel BTF.
    pub fn load(opts: &Options) -> Result<Self> {
        let kernel = Kernel::from_file(&opts.btf_path)?;
        Self::load_with(opts, kernel.offsets, kernel.sched_switch_typedef)
    }

    /// As [`CpuAccounting::load`], with what it needs from the kernel's BTF
    /// already read (see [`Kernel`]).
    pub fn load_with(
        opts: &Options,
        offsets: btf::Result<TaskOffsets>,
        sched_switch_typedef: Option<std::num::NonZeroU32>,
    ) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NotEmbedded);
        }
        let offsets = offsets?;
        debug!(?offsets, typedef = ?sched_switch_typedef, "offsets and attach id from BTF");
        let loaded_at = monotonic_ns();
        // A power of two (the program masks with it), 1 to all.
        let pending_slots =
            u64::from(opts.pending_slots.clamp(1, PENDING_SLOTS)).next_power_of_two();
        let mut ebpf = EbpfLoader::new()
            // The per-thread state is task-local storage, which aya creates
            // but does not wrap (userspace never touches it).
            .allow_unsupported_maps()
            .map_max_entries(MAP_CGROUP_CPU, opts.max_cgroups.max(1))
            .override_global(GLOBAL_TASK_OFFSETS, &offsets, true)
            .override_global(GLOBAL_LOADED_AT_NS, &loaded_at, true)
            .override_global(GLOBAL_PENDING_SLOTS_USED, &pending_slots, true)
            .load(OBJECT)?;
        let mut logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!(error = %e, "eBPF load-time diagnostics unavailable");
                None
            }
        };

        let hook = attach_switch(&mut ebpf, sched_switch_typedef, opts.force_raw_tracepoint)?;
        let cpus = online_cpus().map_err(|(what, e)| Error::Cpus(what, e))?;
        // Settle the flush mode, loading only the program it runs, before
        // taking maps out of `ebpf`: a program loads against the map fds the
        // object still holds.
        let flush = choose_flush(&mut ebpf, &cpus, opts.force_tick, &mut logger)?;
        let cgroup_cpu = take(&mut ebpf, MAP_CGROUP_CPU)?;
        let stats = Stats::take(&mut ebpf)?;
        info!(
            ?hook,
            ?flush,
            cpus = cpus.len(),
            "eBPF CPU accounting attached"
        );
        Ok(Self {
            ebpf,
            cgroup_cpu,
            stats,
            cpus,
            flush,
            hook,
            logger,
        })
    }

    /// The hook charging at context switches.
    pub fn hook(&self) -> SwitchHook {
        self.hook
    }

    /// How running tasks are charged before a read.
    pub fn flush_mode(&self) -> FlushMode {
        self.flush
    }

    /// Cumulative on-CPU nanoseconds per cgroup v2 id since loading, exact up to
    /// this call (in [`FlushMode::TestRun`]) or to the last clock tick.
    pub fn read(&mut self) -> Result<foldhash::HashMap<u64, u64>> {
        if self.flush == FlushMode::TestRun {
            let flushed = run_flush(&self.ebpf, &self.cpus);
            drain(&mut self.logger);
            flushed?;
        }
        let mut out = foldhash::HashMap::with_capacity_and_hasher(256, Default::default());
        for entry in self.cgroup_cpu.iter() {
            let (cgroup, per_cpu) = entry.map_err(|source| Error::Map {
                name: MAP_CGROUP_CPU,
                source,
            })?;
            out.insert(cgroup, sum_over_cpus(&per_cpu));
        }
        self.stats.warn_on_losses();
        Ok(out)
    }

    /// Drops the counters of cgroups that no longer exist, after their last read.
    pub fn forget(&mut self, cgroups: impl IntoIterator<Item = u64>) {
        for cgroup in cgroups {
            if let Err(e) = self.cgroup_cpu.remove(&cgroup) {
                debug!(cgroup, error = %e, "removing a gone cgroup's counter");
            }
        }
    }

    /// One of the kernel programs' counters, summed over CPUs (0 if unreadable).
    pub fn stat(&self, stat: Stat) -> u64 {
        self.stats.get(stat)
    }

    /// Charges lost (or doubted) since the programs loaded, as of the last
    /// check (at most [`LOSS_CHECK_PERIOD`] old).
    pub fn lost_charges(&self) -> u64 {
        self.stats.seen.iter().sum()
    }
}

/// A per-CPU counter's total (each CPU's part only grows; the sum wraps as
/// the kernel's would).
fn sum_over_cpus(per_cpu: &[u64]) -> u64 {
    per_cpu.iter().copied().fold(0u64, u64::wrapping_add)
}

/// What a growing [`Stat`] means to the operator; `None`: not a loss.
fn loss(stat: Stat) -> Option<&'static str> {
    match stat {
        Stat::Flushes => None,
        Stat::CgroupMapFull => {
            Some("more cgroups than --max-cgroups holds; their CPU time was not counted (raise it)")
        }
        Stat::ReadErrors => Some("a task's cgroup could not be read; its CPU time was not counted"),
        Stat::Rebaselined => {
            Some("a thread's run-time counter went backwards; it was re-baselined")
        }
        Stat::ThreadMapFull => Some(
            "a thread's state could not be created (kernel memory, the agent's memory limit, or \
             task storage busy on that CPU); it was not charged then, and a thread older than \
             the agent loses that time",
        ),
    }
}

/// Run count and total run time of one loaded program, as the kernel counts
/// them while run-time statistics are on (see [`run_time_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    pub id: u32,
    pub name: String,
    pub runs: u64,
    pub run_time: std::time::Duration,
}

/// Turns on the kernel's per-program run-time statistics until the returned
/// descriptor is dropped (BPF_ENABLE_STATS; for benchmarks: it adds two clock
/// reads to every run of every program).
pub fn run_time_stats() -> std::io::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(std::io::Error::other)
}

/// Every loaded program named like a switch program (ours or another agent's,
/// names cut to the kernel's 15 characters), with its runs so far.
pub fn switch_program_runs() -> Vec<ProgramRuns> {
    aya::programs::loaded_programs()
        .filter_map(std::result::Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?.to_string();
            name.starts_with(PROG_SCHED_SWITCH).then(|| ProgramRuns {
                id: info.id(),
                name,
                runs: info.run_count(),
                run_time: info.run_time(),
            })
        })
        .collect()
}

/// For benchmarks: the object's empty `sched_switch` program, attached as a
/// raw tracepoint until the returned handle is dropped (what any program at
/// this hook costs before its first instruction).
pub fn attach_empty_switch_program() -> Result<Ebpf> {
    if OBJECT.is_empty() {
        return Err(Error::NotEmbedded);
    }
    let mut ebpf = EbpfLoader::new().allow_unsupported_maps().load(OBJECT)?;
    let prog: &mut RawTracePoint = program(&mut ebpf, PROG_SCHED_SWITCH_EMPTY)?;
    prog.load()
        .and_then(|()| prog.attach(TRACEPOINT_SCHED_SWITCH).map(drop))
        .map_err(program_error(PROG_SCHED_SWITCH_EMPTY))?;
    Ok(ebpf)
}

/// Flush-on-read where `flush_cpu` loads and test-runs on every CPU (it
/// charges what runs there, so that run is not wasted); otherwise the per-CPU
/// clock, loaded and attached only then.
fn choose_flush(
    ebpf: &mut Ebpf,
    cpus: &[u32],
    force_tick: bool,
    logger: &mut Option<Logger>,
) -> Result<FlushMode> {
    if !force_tick {
        let flush = program::<RawTracePoint>(ebpf, PROG_FLUSH)?
            .load()
            .map_err(program_error(PROG_FLUSH))
            .and_then(|()| run_flush(ebpf, cpus));
        // What the program said about it comes before our conclusion.
        drain(logger);
        match flush {
            Ok(()) => return Ok(FlushMode::TestRun),
            Err(e) => warn!(error = %e, "flush-on-read unavailable; using a per-CPU clock"),
        }
    }
    let err = program_error(PROG_TICK);
    let tick: &mut PerfEvent = program(ebpf, PROG_TICK)?;
    tick.load().map_err(&err)?;
    for &cpu in cpus {
        tick.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(TICK_HZ),
            false,
        )
        .map_err(&err)?;
    }
    Ok(FlushMode::Tick(TICK_HZ))
}

/// Test-runs the loaded `flush_cpu` on each of `cpus`.
fn run_flush(ebpf: &Ebpf, cpus: &[u32]) -> Result<()> {
    let err = program_error(PROG_FLUSH);
    let prog: &RawTracePoint = ebpf
        .program(PROG_FLUSH)
        .ok_or(Error::MissingProgram(PROG_FLUSH))?
        .try_into()
        .map_err(&err)?;
    for &cpu in cpus {
        let mut opts = RawTracePointRunOptions::new();
        opts.cpu = Some(cpu);
        let ran = prog.test_run(opts).map_err(&err)?;
        if ran.return_value != 0 {
            return Err(Error::Refused(PROG_FLUSH, ran.return_value));
        }
    }
    Ok(())
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Passes on what the kernel side logged.
fn drain(logger: &mut Option<Logger>) {
    if let Some(logger) = logger {
        logger.flush();
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(program_error(name))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Attaches the switch program: the BTF tracepoint first, the raw tracepoint
/// (attached by name) where that fails. Both run the same body at the same
/// kernel hook (`bpf_trace_run4`), but the BTF tracepoint's arguments are
/// typed, so it reads `prev` directly where the raw one first calls
/// `bpf_get_current_task_btf` (a helper call: ~25 ns here). Both need the
/// kernel features the other does (BTF, task storage); the fallback covers a
/// BTF tracepoint that will not attach by the id our reader found.
fn attach_switch(
    ebpf: &mut Ebpf,
    typedef: Option<NonZeroU32>,
    force_raw: bool,
) -> Result<SwitchHook> {
    let btf_err = if force_raw {
        "not tried (raw tracepoint forced)".to_string()
    } else {
        match attach_btf(ebpf, typedef) {
            Ok(()) => return Ok(SwitchHook::BtfTracepoint),
            Err(e) => {
                warn!(error = %e, "BTF tracepoint unavailable; using the raw tracepoint");
                e.to_string()
            }
        }
    };
    let raw: &mut RawTracePoint = program(ebpf, PROG_SCHED_SWITCH_RAW)?;
    raw.load()
        .and_then(|()| raw.attach(TRACEPOINT_SCHED_SWITCH).map(drop))
        .map(|()| SwitchHook::RawTracepoint)
        .map_err(|source| Error::Attach {
            btf: btf_err,
            raw: Box::new(program_error(PROG_SCHED_SWITCH_RAW)(source)),
        })
}

fn attach_btf(ebpf: &mut Ebpf, typedef: Option<NonZeroU32>) -> Result<()> {
    let err = program_error(PROG_SCHED_SWITCH);
    let id = typedef.ok_or_else(|| {
        err(ProgramError::Btf(aya::BtfError::UnknownBtfTypeName {
            type_name: TYPEDEF_SCHED_SWITCH.into(),
        }))
    })?;
    // The id from our own BTF read: aya's `load` would look it up in a
    // parsed copy of the kernel's whole BTF (megabytes).
    let prog: &mut BtfTracePoint = program(ebpf, PROG_SCHED_SWITCH)?;
    prog.load_with_btf_id(id.get()).map_err(&err)?;
    prog.attach().map_err(err)?;
    Ok(())
}

/// Wraps a program's error. A failed load's verifier log (thousands of
/// lines, which the error's text leaves out) is logged here, at debug.
fn program_error(name: &'static str) -> impl Fn(ProgramError) -> Error {
    move |source| {
        if let ProgramError::LoadError { verifier_log, .. } = &source {
            debug!(program = name, %verifier_log, "verifier log");
        }
        Error::Program { name, source }
    }
}

/// A program's error on one line: a failed load without the verifier's log,
/// anything else with its causes (aya keeps a system call's errno there).
fn brief(e: &ProgramError) -> String {
    if let ProgramError::LoadError { io_error, .. } = e {
        return format!("loading failed: {io_error} (verifier log at debug)");
    }
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
