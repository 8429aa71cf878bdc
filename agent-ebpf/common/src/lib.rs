//! What the kernel programs and the agent's loader must agree on: program, map
//! and global names, map sizes, and the layout of the statistics array.
//!
//! Every name here is used on both sides; a bare string in either crate is a bug.
#![no_std]

/// `tp_btf/sched_switch`: charges the switching-out task's run time to its
/// cgroup, reading task fields with plain loads (attached first).
pub const PROG_SCHED_SWITCH: &str = "sched_switch";
/// `raw_tp/sched_switch`: the same body, attached by name where the BTF
/// tracepoint fails to attach by our BTF id (its arguments are untyped: it
/// takes `prev` from `bpf_get_current_task_btf`, one helper call more).
pub const PROG_SCHED_SWITCH_RAW: &str = "sched_switch_raw";
/// `raw_tp/sched_switch` that does nothing: attached only by the switch-cost
/// benchmark, to measure what any program at this hook costs on a kernel.
pub const PROG_SCHED_SWITCH_EMPTY: &str = "sched_switch_empty";
/// Never attached: userspace runs it on each CPU (BPF_PROG_TEST_RUN pinned to the
/// CPU) right before reading, so a task that never leaves its CPU is charged too.
pub const PROG_FLUSH: &str = "flush_cpu";
/// Per-CPU software clock event: the same charge at a fixed rate, used where the
/// kernel cannot test-run raw tracepoint programs on a chosen CPU.
pub const PROG_TICK: &str = "tick";

/// `iter.s/cgroup`: a sleepable cgroup iterator that flushes the kernel's
/// per-cgroup CPU statistics once and records each cgroup's total in
/// [`MAP_CGROUP_TOTALS`]. Nothing runs on the context-switch path.
pub const PROG_CGROUP_ITER: &str = "cgroup_totals";
/// The kernel's iterator target the program attaches to (`bpf_iter_<target>`
/// is the BTF function it loads against).
pub const ITER_TARGET_CGROUP: &str = "cgroup";
/// The kernel function that flushes a cgroup subtree's CPU statistics (what
/// reading `cpu.stat` calls), by kernel: Linux 6.16 on, then 6.1 to 6.15.
/// Both take a pointer whose first member is the cgroup's own state, so one
/// call site serves either.
pub const KFUNC_RSTAT_FLUSH: [&str; 2] = ["css_rstat_flush", "cgroup_rstat_flush"];
/// What the iterator calls where it means [`KFUNC_RSTAT_FLUSH`]: Rust cannot
/// declare a kernel function for the linker, so the program calls this
/// helper number and the loader rewrites each such call into a call of the
/// kernel function's BTF id before loading. No helper has this number.
pub const KFUNC_PLACEHOLDER: u32 = 0x6b66_0001;

/// The tracepoint both switch programs attach to.
pub const TRACEPOINT_SCHED_SWITCH: &str = "sched_switch";
/// The kernel's BTF typedef for that tracepoint, whose type id a BTF
/// tracepoint program attaches by.
pub const TYPEDEF_SCHED_SWITCH: &str = "btf_trace_sched_switch";

/// `PerCpuHashMap<u64 cgroup v2 id, u64 ns>`: on-CPU time charged to each cgroup.
pub const MAP_CGROUP_CPU: &str = "CGROUP_CPU";
/// Task-local storage (`BPF_MAP_TYPE_TASK_STORAGE`) of a `u64`: each thread's
/// `se.sum_exec_runtime` when last charged (created as `u64::MAX` and
/// overwritten in the same run), reached from the task itself, updated in
/// place, freed by the kernel when the thread exits. Kernel-side only (the
/// loader creates it; userspace never reads it). One allocation per thread,
/// charged to the agent's memory cgroup.
pub const MAP_THREADS: &str = "THREADS";
/// `Array<CgroupTotal>`, memory-mapped by the reader: entry `i` is the
/// `i`-th cgroup recorded by the iterator's last walk (the seq_file an iterator
/// writes to returns at most one page per read, and a cgroup walk cannot
/// resume across reads). The walk's entries are the prefix that carries its
/// number; what follows is from older, longer walks. Read with no system
/// call; as many entries as the agent's `--max-cgroups`.
pub const MAP_CGROUP_TOTALS: &str = "CGROUP_TOTALS";
/// `Array<u32>` of one: how many cgroups the current walk has recorded,
/// the next entry's index. Kernel-side only. (The walk's own position
/// cannot serve: it counts the dying cgroups the iterator skips too.)
pub const MAP_CGROUP_WALK_LEN: &str = "CGROUP_WALK_LEN";
/// `PerCpuArray<u64>` indexed by [`Stat`].
pub const MAP_STATS: &str = "STATS";

/// Slots per CPU of the kernel side's direct-mapped cache of pending charges:
/// room for the cgroups one CPU charges between two reads (1 KiB per CPU; a
/// cgroup finding its slot taken costs the hash lookup the cache saves).
/// Every flush walks all of them, and the verifier walks that loop at load:
/// here 256 slots cost ~100 ms more start-up CPU, 64 ~20 ms.
pub const PENDING_SLOTS: u32 = 64;
const _: () = assert!(
    PENDING_SLOTS.is_power_of_two(),
    "slots are picked by a mask"
);
/// Global: how many of the [`PENDING_SLOTS`] are used (a power of two, 1 to
/// all; fewer only in tests, to make cgroups share slots).
pub const GLOBAL_PENDING_SLOTS_USED: &str = "PENDING_SLOTS_USED";

/// Default capacity of [`MAP_CGROUP_CPU`] (the loader sets the agent's
/// `--max-cgroups`): every live cgroup that has run since the agent started
/// (a gone one is dropped after its last read; a subtree node also holds the
/// cgroups outside it that ran in the last interval). A kubelet's 110 pods
/// make ~400 cgroups with the host's own. The map is preallocated (before
/// Linux 6.1 the verifier refuses a run-time allocated hash map to the
/// `tick` perf-event program) and per CPU: 8 bytes per entry per possible
/// CPU, charged to the agent's memory cgroup (4 MiB on 128 CPUs).
pub const CGROUP_CPU_MAX_ENTRIES: u32 = 4_096;

/// Global: the [`TaskOffsets`] the programs read with, from the kernel's BTF.
pub const GLOBAL_TASK_OFFSETS: &str = "TASK_OFFSETS";

/// The struct member offsets (bytes) the kernel programs read: a task's
/// thread id and run-time counters, and the chain from a task to its cgroup
/// v2 id (`task->cgroups->dfl_cgrp->kn->id`). Rust eBPF programs get no CO-RE
/// relocations: the loader reads these from the running kernel's BTF and sets
/// them as one read-only global ([`GLOBAL_TASK_OFFSETS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.pid` (the thread id).
    pub pid: u64,
    /// `task_struct.se.sum_exec_runtime`.
    pub sum_exec_runtime: u64,
    /// `task_struct.se.prev_sum_exec_runtime` (the run-time counter when the
    /// scheduler last picked the task).
    pub prev_sum_exec_runtime: u64,
    /// `task_struct.start_time` (CLOCK_MONOTONIC ns).
    pub start_time: u64,
    /// `task_struct.cgroups` (the task's `struct css_set *`).
    pub cgroups: u64,
    /// `css_set.dfl_cgrp` (the cgroup v2 `struct cgroup *`).
    pub dfl_cgrp: u64,
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub cgroup_kn: u64,
    /// `kernfs_node.id` (the cgroup id: the directory's inode number).
    pub kernfs_id: u64,
}

impl TaskOffsets {
    /// What the object file carries until the loader sets the global:
    /// `flush_cpu` refuses to run with it (returns 1, which the loader
    /// treats as an error).
    pub const UNSET: Self = Self {
        pid: 0,
        sum_exec_runtime: 0,
        prev_sum_exec_runtime: 0,
        start_time: 0,
        cgroups: 0,
        dfl_cgrp: 0,
        cgroup_kn: 0,
        kernfs_id: 0,
    };
}

// SAFETY: `#[repr(C)]`, only `u64` fields: no padding, any bytes are a value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TaskOffsets {}

/// Global: the [`CgroupOffsets`] the cgroup iterator reads with.
pub const GLOBAL_CGROUP_OFFSETS: &str = "CGROUP_OFFSETS";

/// The offsets (bytes) the cgroup iterator reads, from the kernel's BTF as
/// [`TaskOffsets`] are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupOffsets {
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub cgroup_kn: u64,
    /// `kernfs_node.id` (the cgroup id).
    pub kernfs_id: u64,
    /// `cgroup.bstat.cputime.sum_exec_runtime`: the cgroup's CPU time in ns
    /// once flushed, what `cpu.stat`'s `usage_usec` shows in µs.
    pub cpu_time: u64,
    /// `bpf_iter_meta.session_id`: one walk's number, increasing.
    pub meta_session_id: u64,
    /// `bpf_iter_meta.seq_num`: 0 at the walk's first cgroup.
    pub meta_seq_num: u64,
    /// `cgroup.subsys[memory_cgrp_id]`: the memory controller's state of
    /// the cgroup, a `struct mem_cgroup` (whose `css` comes first); 0: the
    /// iterator records no memory.
    pub memory_css: u64,
    /// `mem_cgroup.memory.usage`: pages charged, what `memory.current`
    /// (`memory.usage_in_bytes` in v1) shows in bytes.
    pub memcg_usage: u64,
}

impl CgroupOffsets {
    /// What the object file carries until the loader sets the global: the
    /// iterator records nothing with it.
    pub const UNSET: Self = Self {
        cgroup_kn: 0,
        kernfs_id: 0,
        cpu_time: 0,
        meta_session_id: 0,
        meta_seq_num: 0,
        memory_css: 0,
        memcg_usage: 0,
    };
}

// SAFETY: `#[repr(C)]`, only `u64` fields: no padding, any bytes are a value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupOffsets {}

/// One cgroup's figures as the iterator recorded them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupTotal {
    /// The cgroup's id in the hierarchy walked (its directory's inode number).
    pub cgroup: u64,
    /// Cumulative ns since the cgroup was created (v2 hierarchy only).
    pub cpu_ns: u64,
    /// The walk that recorded it (`bpf_iter_meta.session_id`).
    pub walk: u64,
    /// [`MEMORY_READ`] when `memory_pages` was read.
    pub flags: u64,
    /// Pages charged (see [`CgroupOffsets::memcg_usage`]).
    pub memory_pages: u64,
    /// CLOCK_MONOTONIC ns when the cgroup was read: the time its figures
    /// are of, to the microsecond, however late the reader gets to them.
    pub read_at_ns: u64,
}

/// [`CgroupTotal::flags`]: the cgroup's memory usage was read.
pub const MEMORY_READ: u64 = 1;

// SAFETY: `#[repr(C)]`, only `u64` fields: no padding, any bytes are a value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupTotal {}

/// Global: CLOCK_MONOTONIC ns when the programs were loaded. A thread first seen
/// that started after this is charged its whole run time; one that started before
/// from the run during which it is first seen (at most the time since the load).
pub const GLOBAL_LOADED_AT_NS: &str = "LOADED_AT_NS";

/// Counters in [`MAP_STATS`], one slot each, summed over CPUs by userspace.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
///
/// Only rare events are counted: a counter bumped at every context switch
/// costs a map access on the hottest path in the kernel.
pub enum Stat {
    /// Charges made by the flush or tick program.
    Flushes = 0,
    /// A cgroup could not be added because [`MAP_CGROUP_CPU`] is full: time lost.
    CgroupMapFull = 1,
    /// A task's cgroup could not be read (a null pointer on the way, which
    /// should not happen): time lost.
    ReadErrors = 2,
    /// A thread's run time went backwards (should not happen with per-task
    /// storage; counted rather than trusted): re-baselined.
    Rebaselined = 3,
    /// A thread's storage could not be created (kernel memory, the agent's
    /// memory limit, or task storage busy on this CPU): not charged then; at
    /// the next success a thread started after the load is charged all of
    /// its time, an older one only its current run.
    ThreadMapFull = 4,
}

impl Stat {
    /// Number of slots in [`MAP_STATS`].
    pub const COUNT: u32 = 5;
    /// Every statistic, in slot order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Flushes,
        Stat::CgroupMapFull,
        Stat::ReadErrors,
        Stat::Rebaselined,
        Stat::ThreadMapFull,
    ];

    /// A stable name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Flushes => "flushes",
            Stat::CgroupMapFull => "cgroup_map_full",
            Stat::ReadErrors => "read_errors",
            Stat::Rebaselined => "rebaselined",
            Stat::ThreadMapFull => "thread_map_full",
        }
    }
}
