//! Kernel side of the node agent: charges on-CPU time to cgroup v2 ids.
//!
//! The method: every time a thread leaves a CPU, read its `se.sum_exec_runtime`
//! (the scheduler's own cumulative run time, the same clock cgroup `cpu.stat`
//! accumulates) and charge the change since we last saw it to the cgroup it runs
//! in. That is exact where timestamp arithmetic at switches is not (the kernel
//! emits switch events that do not chain), and for the same reason the state is
//! per thread, not per CPU: a per-CPU "switched in at" slot loses a whole run
//! whenever two events do not chain (tried: −2 % on a lone busy loop). A thread
//! that never leaves its CPU would never be charged, so userspace runs
//! [`flush_cpu`] on each CPU right before it reads (or, where the kernel cannot
//! do that, [`tick`] runs from a per-CPU clock), charging whatever is running
//! there the same way.
//!
//! There is no CO-RE for Rust programs: struct offsets come from the kernel's BTF
//! in userspace and arrive as read-only globals.
#![no_std]
#![no_main]

use agent_common::{CGROUP_CPU_MAX_ENTRIES, Stat};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST, bpf_map_type},
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf,
            bpf_ktime_get_ns, bpf_task_storage_get,
        },
    },
    macros::{btf_map, btf_tracepoint, map, perf_event, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, PerfEventContext, RawTracePointContext},
};
use aya_log_ebpf::error;

// Globals, named as `agent_common::GLOBAL_*` (identifiers cannot come from a
// constant); the loader fails when one is missing, so a rename cannot go unnoticed.
#[unsafe(no_mangle)]
static SUM_EXEC_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static START_TIME_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static PREV_SUM_EXEC_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static LOADED_AT_NS: u64 = 0;

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

    /// The value of `task`, created as `init` when it has none (`init`
    /// `None`: not created). Null when absent, or when the kernel declines
    /// (out of memory, or a recursive use of task storage on this CPU).
    #[inline(always)]
    fn get(&self, task: *mut c_void, init: Option<&mut T>) -> *mut T {
        let (value, flags) = match init {
            Some(v) => (
                core::ptr::from_mut(v).cast(),
                u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE),
            ),
            None => (core::ptr::null_mut(), 0),
        };
        // SAFETY: `task` comes from bpf_get_current_task_btf (a trusted
        // task pointer, what the verifier requires here); `value` is null or
        // a live stack value the helper copies.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task.cast(),
                value,
                flags,
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
/// [`CGROUP_CPU`]: consecutive charges to the same cgroup (a thread and the
/// ones it wakes, a container's workers) accumulate here, in the CPU's own
/// slot, instead of costing a hash lookup each. Moved into the map when a
/// charge to another cgroup comes, and by [`flush_cpu`] / [`tick`] (so a read
/// right after a flush misses nothing).
#[repr(C)]
struct Pending {
    cgroup: u64,
    ns: u64,
}

#[map(name = "PENDING")]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn global(g: &u64) -> u64 {
    // SAFETY: a plain read of a global in the program's read-only data; volatile so
    // the compiler does not fold the zero the object file carries.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn bump(stat: Stat, by: u64) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, and programs on one CPU do not interleave here
        // (sched_switch runs with interrupts off; flush/tick do not nest with it).
        unsafe { *slot += by };
    }
}

#[inline(always)]
fn read_u64(task: *const u8, offset: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    match unsafe { bpf_probe_read_kernel(task.wrapping_add(offset as usize) as *const u64) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump(Stat::ReadErrors, 1);
            None
        }
    }
}

/// Charges the current task of this CPU (`task`, thread id `tid`) for the run
/// time it accrued since it was last charged.
#[inline(always)]
fn charge(task: *const u8, tid: u32) {
    if tid == 0 {
        // The per-CPU idle tasks: not charged to any cgroup.
        return;
    }
    // SAFETY: helper without arguments; the same task as `task`, as a
    // trusted BTF pointer.
    let me = unsafe { bpf_get_current_task_btf() }.cast::<c_void>();
    // A direct load through the trusted pointer (no helper call): the
    // offset is a frozen read-only global, a constant to the verifier, which
    // checks it lands on a u64 member of task_struct.
    // SAFETY: see above; the verifier rejects the program otherwise.
    let now = unsafe {
        core::ptr::read_volatile(
            me.cast::<u8>()
                .wrapping_add(global(&SUM_EXEC_OFFSET) as usize)
                .cast::<u64>(),
        )
    };
    let last = THREADS.get(me, None);
    let delta = if last.is_null() {
        let Some(started) = read_u64(task, global(&START_TIME_OFFSET)) else {
            return;
        };
        let mut first = now;
        if THREADS.get(me, Some(&mut first)).is_null() {
            // Without a value the next switch would charge the thread's whole
            // run time again.
            bump(Stat::ThreadMapFull, 1);
            return;
        }
        let loaded_at = global(&LOADED_AT_NS);
        if started >= loaded_at {
            // Started after we loaded: all of its run time is ours to charge.
            now
        } else {
            // Started before: the run that is ending (or being flushed) now,
            // which began when the scheduler last picked it and set
            // `se.prev_sum_exec_runtime`, capped at the time since we loaded
            // (a run that began before the load; a task of another class
            // whose field is stale). Everything after is charged exactly.
            let Some(picked_at) = read_u64(task, global(&PREV_SUM_EXEC_OFFSET)) else {
                return;
            };
            // SAFETY: helper without arguments.
            let since_load = unsafe { bpf_ktime_get_ns() }.saturating_sub(loaded_at);
            now.saturating_sub(picked_at).min(since_load)
        }
    } else {
        // SAFETY: this task's own value; the task runs on this CPU only now.
        let before = unsafe { *last };
        // SAFETY: as above; updated in place.
        unsafe { *last = now };
        if now < before {
            bump(Stat::Rebaselined, 1);
            0
        } else {
            now - before
        }
    };
    if delta == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    add_to_cgroup(cgroup, delta);
}

#[inline(always)]
fn add_to_cgroup(cgroup: u64, delta: u64) {
    let Some(pending) = PENDING.get_ptr_mut(0) else {
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

/// Moves this CPU's pending charge into [`CGROUP_CPU`].
#[inline(always)]
fn flush_pending() {
    let Some(pending) = PENDING.get_ptr_mut(0) else {
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

#[inline(always)]
fn add_to_map(cgroup: u64, delta: u64) {
    if let Some(total) = CGROUP_CPU.get_ptr_mut(&cgroup) {
        // SAFETY: this CPU's slot of a per-CPU value.
        unsafe { *total += delta };
        return;
    }
    if CGROUP_CPU
        .insert(&cgroup, &delta, BPF_NOEXIST as u64)
        .is_ok()
    {
        return;
    }
    // Lost a race with our own insert on another CPU, or the map is full.
    match CGROUP_CPU.get_ptr_mut(&cgroup) {
        // SAFETY: as above.
        Some(total) => unsafe { *total += delta },
        None => bump(Stat::CgroupMapFull, 1),
    }
}

#[inline(always)]
fn on_switch(prev: *const u8) -> u32 {
    // At sched_switch `current` is still `prev`: its tid, storage and cgroup
    // come from helpers. A dying task's storage is freed by the kernel.
    let tid = bpf_get_current_pid_tgid() as u32;
    charge(prev, tid);
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`, where raw tracepoints are unavailable.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    on_switch(prev) as i32
}

/// The same as a raw tracepoint (what the loader attaches first).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    on_switch(prev) as i32
}

#[inline(always)]
fn charge_current() -> u32 {
    bump(Stat::Flushes, 1);
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    charge(task, bpf_get_current_pid_tgid() as u32);
    flush_pending();
    0
}

/// Run by userspace with BPF_PROG_TEST_RUN pinned to each CPU before a read.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn flush_cpu(ctx: RawTracePointContext) -> i32 {
    if global(&SUM_EXEC_OFFSET) == 0 {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
