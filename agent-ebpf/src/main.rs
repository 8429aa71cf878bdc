//! Kernel side of the node agent: on-CPU time per cgroup v2 id, either read
//! from the kernel's own accounting by a cgroup iterator ([`cgroup_totals`],
//! nothing on the switch path) or, on kernels without it, charged at every
//! context switch, as follows.
//!
//! The method: every time a thread leaves a CPU, read its `se.sum_exec_runtime`
//! (the scheduler's own cumulative run time, the same clock cgroup `cpu.stat`
//! accumulates) and charge the change since we last saw it to the cgroup it runs
//! in. That is exact where timestamp arithmetic at switches is not, and for the
//! same reason the state is per thread, not per CPU: the kernel emits switch
//! events that do not chain (measured here: switches away from some threads run
//! no program at all), and a per-CPU "who was switched in, at what count" slot
//! then charges the wrong run (tried twice: −2 % on a lone busy loop with
//! timestamps; +40 % on a duty-cycled container with run-time counters). A
//! per-thread count is right whatever happened in between: the counter only
//! moves while that thread runs. A thread that never leaves its CPU would never
//! be charged, so userspace runs [`flush_cpu`] on each CPU right before it reads
//! (or, where the kernel cannot do that, [`tick`] runs from a per-CPU clock),
//! charging whatever is running there the same way.
//!
//! The cost that matters is per switch. The BTF tracepoint reads `prev`'s
//! thread id, run time and cgroup id (`prev->cgroups->dfl_cgrp->kn->id`) with
//! plain loads through its typed argument, and in the common case makes one
//! helper call: the task-storage lookup, which creates a thread's value the
//! first time. Charges gather in a per-CPU cache of cgroup slots; a cgroup
//! finding its slot taken adds a call to [`add_to_map`] (a hash lookup), and
//! a thread's first charge a clock read if it is older than the programs. The raw tracepoint (the fallback, attached by
//! name) gets the same typed pointer from `bpf_get_current_task_btf` (`prev`
//! is still `current` there): one call more.
//! There is no CO-RE for Rust programs: struct offsets come from the kernel's
//! BTF in userspace and arrive as one read-only global.
#![no_std]
#![no_main]

use agent_common::{
    CGROUP_CPU_MAX_ENTRIES, CgroupOffsets, CgroupTotal, KFUNC_PLACEHOLDER, MEMORY_READ,
    PENDING_SLOTS, Stat, TaskOffsets,
};
use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST,
        bpf_map_type,
    },
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_storage_get},
    },
    macros::{btf_map, btf_tracepoint, map, perf_event, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, PerfEventContext, RawTracePointContext},
};
use aya_log_ebpf::error;

// Globals, named as `agent_common::GLOBAL_*` (identifiers cannot come from a
// constant); the loader fails when one is missing, so a rename cannot go unnoticed.
#[unsafe(no_mangle)]
static TASK_OFFSETS: TaskOffsets = TaskOffsets::UNSET;
#[unsafe(no_mangle)]
static LOADED_AT_NS: u64 = 0;
#[unsafe(no_mangle)]
static PENDING_SLOTS_USED: u64 = PENDING_SLOTS as u64;
#[unsafe(no_mangle)]
static CGROUP_OFFSETS: CgroupOffsets = CgroupOffsets::UNSET;

#[map(name = "CGROUP_CPU")]
static CGROUP_CPU: PerCpuHashMap<u64, u64> =
    PerCpuHashMap::with_max_entries(CGROUP_CPU_MAX_ENTRIES, 0);

/// A BTF definition of a task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`,
/// which aya-ebpf does not wrap): one value per task, reached from the task
/// itself (no hash of a thread id, no shared buckets), created on first use
/// and freed by the kernel when the task exits. The fields are the BTF
/// encoding of the map's attributes, read by the loader; never dereferenced.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader replaces; no shared state in Rust.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The value of `task`, created as a copy of `init` when it has none.
    /// Null when the kernel declines (out of memory, or a recursive use of
    /// task storage on this CPU). One call, found or created.
    #[inline(always)]
    fn get_or_create(&self, task: Typed, init: &mut T) -> *mut T {
        // SAFETY: `task` is a BTF-typed task pointer (what the verifier
        // requires here); `init` is a live stack value the helper copies.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task.0.cast_mut().cast(),
                core::ptr::from_mut(init).cast(),
                u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE),
            )
        }
        .cast()
    }
}

#[btf_map(name = "THREADS")]
static THREADS: TaskStorage<u64> = TaskStorage::new();

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Run time charged on this CPU to one cgroup and not yet added to
/// [`CGROUP_CPU`]. [`PENDING`] is a direct-mapped cache of these in the CPU's
/// own slots: a charge to a cgroup whose slot it holds adds there, with no
/// hash lookup (a helper call, and cache misses on the bucket); a charge to a
/// cgroup that maps to a slot another cgroup holds moves that one into the
/// map first. Every slot is moved into the map by [`flush_cpu`] / [`tick`],
/// so a read right after a flush misses nothing.
#[repr(C)]
struct Pending {
    cgroup: u64,
    ns: u64,
}

#[map(name = "PENDING")]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(PENDING_SLOTS, 0);

/// The slot of `cgroup` (cgroup ids are inode numbers, handed out in order:
/// a multiplicative hash spreads neighbours).
#[inline(always)]
fn pending_slot(cgroup: u64) -> u32 {
    // Both powers of two: a mask, in range whatever the global holds.
    let mask = global(&PENDING_SLOTS_USED).wrapping_sub(1) & u64::from(PENDING_SLOTS - 1);
    ((cgroup.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) & mask) as u32
}

#[inline(always)]
fn global(g: &u64) -> u64 {
    // SAFETY: a plain read of a global in the program's read-only data; volatile so
    // the compiler does not fold the zero the object file carries.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn bump(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, and programs on one CPU do not interleave here
        // (sched_switch runs with interrupts off; flush/tick do not nest with it).
        unsafe { *slot += 1 };
    }
}

/// A BTF-typed pointer to a kernel object (a BTF tracepoint's argument, the
/// result of `bpf_get_current_task_btf`), read with plain loads. The offsets
/// are frozen read-only globals, constants to the verifier, which types each
/// pointer loaded against the kernel's BTF (a scalar field at a wrong offset
/// would still load: the offsets must come from the running kernel's BTF); the
/// JIT makes each a guarded load with an exception-table entry. No helper
/// call.
#[derive(Clone, Copy)]
struct Typed(*const u8);

impl Typed {
    #[inline(always)]
    fn read<T: Copy>(self, offset: u64) -> T {
        // SAFETY: see the type; the verifier rejects the program otherwise.
        unsafe { core::ptr::read_volatile(self.0.wrapping_add(offset as usize).cast::<T>()) }
    }

    /// The pointer at `offset`, if not null.
    #[inline(always)]
    fn follow(self, offset: u64) -> Option<Self> {
        let p = self.read::<*const u8>(offset);
        (!p.is_null()).then_some(Self(p))
    }

    /// The cgroup v2 id of this task: `cgroups->dfl_cgrp->kn->id`, what
    /// `bpf_get_current_cgroup_id` returns for the current task.
    #[inline(always)]
    fn cgroup_id(self) -> Option<u64> {
        Some(
            self.follow(global(&TASK_OFFSETS.cgroups))?
                .follow(global(&TASK_OFFSETS.dfl_cgrp))?
                .follow(global(&TASK_OFFSETS.cgroup_kn))?
                .read::<u64>(global(&TASK_OFFSETS.kernfs_id)),
        )
    }
}

/// A thread's value before its first charge: no run-time counter gets there.
const UNSEEN: u64 = u64::MAX;

/// What to charge a thread seen for the first time, whose run-time counter
/// reads `now`.
#[inline(always)]
fn first_charge(task: Typed, now: u64) -> u64 {
    let loaded_at = global(&LOADED_AT_NS);
    if task.read::<u64>(global(&TASK_OFFSETS.start_time)) >= loaded_at {
        // Started after we loaded: all of its run time is ours to charge.
        return now;
    }
    // Started before: the run that is ending (or being flushed) now, which
    // began when the scheduler last picked it and set
    // `se.prev_sum_exec_runtime`, capped at the time since we loaded (a run
    // that began before the load; a task of another class whose field is
    // stale). Everything after is charged exactly.
    let picked_at = task.read::<u64>(global(&TASK_OFFSETS.prev_sum_exec_runtime));
    // SAFETY: helper without arguments.
    let since_load = unsafe { bpf_ktime_get_ns() }.saturating_sub(loaded_at);
    now.saturating_sub(picked_at).min(since_load)
}

/// Charges `task`, the thread running on this CPU, for the run time it
/// accrued since it was last charged.
#[inline(always)]
fn charge(task: Typed) {
    if task.read::<u32>(global(&TASK_OFFSETS.pid)) == 0 {
        // The per-CPU idle tasks: not charged to any cgroup.
        return;
    }
    let now = task.read::<u64>(global(&TASK_OFFSETS.sum_exec_runtime));
    let mut unseen = UNSEEN;
    let last = THREADS.get_or_create(task, &mut unseen);
    if last.is_null() {
        // Nothing charged now: the thread counts as first seen when its
        // value can be created.
        bump(Stat::ThreadMapFull);
        return;
    }
    // SAFETY: this task's own value; the task runs on this CPU only now.
    let before = unsafe { *last };
    // SAFETY: as above; updated in place.
    unsafe { *last = now };
    let delta = if before == UNSEEN {
        first_charge(task, now)
    } else if now < before {
        bump(Stat::Rebaselined);
        0
    } else {
        now - before
    };
    if delta == 0 {
        return;
    }
    match task.cgroup_id() {
        Some(cgroup) => add_to_cgroup(cgroup, delta),
        None => bump(Stat::ReadErrors),
    }
}

#[inline(always)]
fn add_to_cgroup(cgroup: u64, delta: u64) {
    let Some(pending) = PENDING.get_ptr_mut(pending_slot(cgroup)) else {
        add_to_map(cgroup, delta);
        return;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not interleave (see `bump`).
    let (held, ns) = unsafe { ((*pending).cgroup, (*pending).ns) };
    if held == cgroup {
        // SAFETY: as above.
        unsafe { (*pending).ns = ns + delta };
        return;
    }
    // SAFETY: as above.
    unsafe {
        (*pending).cgroup = cgroup;
        (*pending).ns = delta;
    }
    if ns != 0 {
        add_to_map(held, ns);
    }
}

/// Moves this CPU's pending charges into [`CGROUP_CPU`].
#[inline(always)]
fn flush_pending() {
    for slot in 0..PENDING_SLOTS {
        let Some(pending) = PENDING.get_ptr_mut(slot) else {
            return;
        };
        // SAFETY: this CPU's slot; programs on one CPU do not interleave (see `bump`).
        let (cgroup, ns) = unsafe { ((*pending).cgroup, (*pending).ns) };
        if ns != 0 {
            // SAFETY: as above.
            unsafe { (*pending).ns = 0 };
            add_to_map(cgroup, ns);
        }
    }
}

/// Adds `delta` to this CPU's total of `cgroup` in [`CGROUP_CPU`]; 1 when
/// the map is full and the time is lost (counted here: callers need not
/// look), else 0. A global function (which must return a scalar): the
/// verifier checks it once, not at each of its calls, which the flush's walk
/// of the pending slots made ~30 ms of start-up CPU here (`flush_cpu` now
/// loads in ~10 ms, was ~41).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn add_to_map(cgroup: u64, delta: u64) -> u32 {
    if let Some(total) = CGROUP_CPU.get_ptr_mut(&cgroup) {
        // SAFETY: this CPU's slot of a per-CPU value.
        unsafe { *total += delta };
        return 0;
    }
    if CGROUP_CPU
        .insert(&cgroup, &delta, BPF_NOEXIST as u64)
        .is_ok()
    {
        return 0;
    }
    // Lost a race with our own insert on another CPU, or the map is full.
    match CGROUP_CPU.get_ptr_mut(&cgroup) {
        Some(total) => {
            // SAFETY: as above.
            unsafe { *total += delta };
            0
        }
        None => {
            bump(Stat::CgroupMapFull);
            1
        }
    }
}

/// The task running on this CPU, as a typed pointer.
#[inline(always)]
fn current() -> Typed {
    // SAFETY: helper without arguments.
    Typed(
        unsafe { bpf_get_current_task_btf() }
            .cast::<u8>()
            .cast_const(),
    )
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`: `prev` is typed (what the loader attaches first).
/// A dying task's storage is freed by the kernel.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    charge(Typed(ctx.arg(1)));
    0
}

/// The fallback, attached by name where the BTF tracepoint will not attach by
/// the id the loader found. At sched_switch `current` is still `prev`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(_ctx: RawTracePointContext) -> i32 {
    charge(current());
    0
}

/// Does nothing: the switch-cost benchmark's reference for what any program at
/// this hook costs (never attached by the agent).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_empty(_ctx: RawTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn charge_current() -> u32 {
    bump(Stat::Flushes);
    charge(current());
    flush_pending();
    0
}

/// Run by userspace with BPF_PROG_TEST_RUN pinned to each CPU before a read.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn flush_cpu(ctx: RawTracePointContext) -> i32 {
    if global(&TASK_OFFSETS.sum_exec_runtime) == 0 {
        // Not on the hot path: only when the loader failed to set the offsets.
        error!(
            &ctx,
            "task_struct offsets not set by the loader: nothing is charged"
        );
        return 1;
    }
    charge_current() as i32
}

/// Per-CPU software clock, where [`flush_cpu`] cannot be test-run on a CPU.
#[perf_event]
pub fn tick(_ctx: PerfEventContext) -> u32 {
    charge_current()
}

#[map(name = "CGROUP_TOTALS")]
static CGROUP_TOTALS: Array<CgroupTotal> =
    Array::with_max_entries(CGROUP_CPU_MAX_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "CGROUP_WALK_LEN")]
static CGROUP_WALK_LEN: Array<u32> = Array::with_max_entries(1, 0);

/// The kernel's own CPU time (and memory usage, see [`read_memory`]) of every
/// cgroup in a subtree, walked in
/// pre-order from the cgroup the loader attached to (the kernel holds the
/// cgroup mutex for the walk), into [`CGROUP_TOTALS`] by walk position. `cgroup.bstat` is exact once the subtree's
/// per-CPU statistics are flushed into it, which the first cgroup's flush
/// does for all (what reading its `cpu.stat` would do); then each cgroup is
/// two loads. aya-ebpf has no iterator macro: this is what one would emit,
/// with the context `struct bpf_iter__cgroup { meta; cgroup; }`, whose
/// `cgroup` is null once more after the last cgroup.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter.s/cgroup")]
pub extern "C" fn cgroup_totals(ctx: *const u8) -> i32 {
    let ctx = Typed(ctx);
    let (Some(meta), Some(cgroup)) = (ctx.follow(0), ctx.follow(8)) else {
        return 0;
    };
    if global(&CGROUP_OFFSETS.cpu_time) == 0 {
        // The loader did not set the offsets: nothing recorded, which the
        // reader reports.
        return 0;
    }
    let Some(len) = CGROUP_WALK_LEN.get_ptr_mut(0) else {
        return 0;
    };
    if meta.read::<u64>(global(&CGROUP_OFFSETS.meta_seq_num)) == 0 {
        rstat_flush(cgroup);
        // SAFETY: the walk's counter; one walk runs at a time (the agent's
        // reads are sequential), and this program is its only writer.
        unsafe { *len = 0 };
    }
    let Some(kn) = cgroup.follow(global(&CGROUP_OFFSETS.cgroup_kn)) else {
        bump(Stat::ReadErrors);
        return 0;
    };
    // SAFETY: as above.
    let index = unsafe { *len };
    let Some(slot) = CGROUP_TOTALS.get_ptr_mut(index) else {
        bump(Stat::CgroupMapFull);
        return 0;
    };
    // SAFETY: as above.
    unsafe { *len = index + 1 };
    let mut total = CgroupTotal {
        cgroup: kn.read::<u64>(global(&CGROUP_OFFSETS.kernfs_id)),
        cpu_ns: cgroup.read::<u64>(global(&CGROUP_OFFSETS.cpu_time)),
        walk: meta.read::<u64>(global(&CGROUP_OFFSETS.meta_session_id)),
        flags: 0,
        memory_pages: 0,
        // SAFETY: a helper every program type may call.
        read_at_ns: unsafe { bpf_ktime_get_ns() },
    };
    read_memory(cgroup, &mut total);
    // SAFETY: an entry of the array; the reader reads after the walk.
    unsafe { *slot = total };
    0
}

/// The cgroup's memory usage, where the loader asked for it and the memory
/// controller is on the hierarchy walked: its page counter, the figure
/// `memory.current` shows, always current (no statistics flush behind it).
/// The controller's state is reached through a pointer the verifier no
/// longer trusts here (an RCU pointer in a sleepable program) and read as a
/// `struct mem_cgroup` beyond the `cgroup_subsys_state` it is typed as: so
/// with `bpf_probe_read_kernel`, which cannot fault. The kernel holds the
/// cgroup mutex for the walk, so the state lives.
#[inline(always)]
fn read_memory(cgroup: Typed, total: &mut CgroupTotal) {
    let css_at = global(&CGROUP_OFFSETS.memory_css);
    if css_at == 0 {
        return;
    }
    let memcg = cgroup.read::<u64>(css_at);
    if memcg == 0 {
        // The controller is not enabled for this cgroup.
        return;
    }
    let usage = (memcg + global(&CGROUP_OFFSETS.memcg_usage)) as *const u64;
    // SAFETY: a probe read, which fails instead of faulting.
    match unsafe { bpf_probe_read_kernel(usage) } {
        Ok(pages) => {
            total.flags = MEMORY_READ;
            total.memory_pages = pages;
        }
        Err(_) => bump(Stat::ReadErrors),
    }
}

/// Flushes `cgroup`'s subtree's CPU statistics: a call of the kernel
/// function the loader substitutes for [`KFUNC_PLACEHOLDER`] (see there).
#[inline(always)]
fn rstat_flush(cgroup: Typed) {
    // SAFETY: never called as a helper: the loader rewrites the call into a
    // kernel function call (and the verifier refuses the program if not).
    // The argument is the walk's trusted cgroup pointer, whose first member
    // is its own `cgroup_subsys_state`.
    unsafe {
        let flush: unsafe extern "C" fn(*const u8) =
            core::mem::transmute(KFUNC_PLACEHOLDER as usize);
        flush(cgroup.0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
