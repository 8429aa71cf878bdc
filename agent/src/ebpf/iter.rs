//! CPU time per cgroup from the kernel's own accounting, read in one pass by
//! a BPF cgroup iterator: the number `cpu.stat` shows (in ns), for every
//! cgroup below a start cgroup, with nothing attached to the context-switch
//! path. Where the memory controller is on the hierarchy walked, the same
//! pass reads each cgroup's memory usage (see [`Reading::memory_usage`]).
//!
//! aya loads the iterator but cannot attach it to a cgroup (its link
//! carries no iterator options, and the kernel refuses a cgroup iterator
//! without a walk order), nor can a Rust program declare the kernel function
//! that flushes the statistics. So two things are done here by hand, each the
//! smallest sound way through:
//! - the link, created with `BPF_LINK_CREATE` naming the start cgroup and
//!   the pre-order walk, and each walk's descriptor with `BPF_ITER_CREATE`;
//! - the kernel function call: the program calls a placeholder helper number
//!   ([`KFUNC_PLACEHOLDER`]), which the loader rewrites, in a copy of the
//!   object, into a kernel function call (`src_reg` 2) of the flush
//!   function's BTF id before aya sees it.
use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use agent_common::{
    CgroupTotal, GLOBAL_CGROUP_OFFSETS, MAP_CGROUP_CPU, MAP_CGROUP_TOTALS, MEMORY_READ,
    PROG_CGROUP_ITER,
};
use aya::{EbpfLoader, maps::Map, programs::Iter};
use tracing::debug;

use super::{
    Error, OBJECT, Result, Stats,
    btf::{self, CgroupIter, Kernel},
    kfunc, program, program_error, wall_time,
};

/// One cgroup's figures from one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Cumulative CPU ns (meaningful on the v2 hierarchy only).
    pub cpu_ns: u64,
    /// Memory charged, bytes (`memory.current`, v1
    /// `memory.usage_in_bytes`), where the memory controller is on the
    /// hierarchy walked.
    pub memory_usage: Option<u64>,
}

/// One walk's readings, by cgroup id in the hierarchy walked.
pub type Readings = foldhash::HashMap<u64, Reading>;

/// One walk.
#[derive(Clone, Debug)]
pub struct Pass {
    /// When the kernel read the walk's first cgroup, right after flushing
    /// the statistics: the time the figures are of. Taken by the program,
    /// so a reader preempted before or after the walk does not skew the
    /// rates computed from it.
    pub at: SystemTime,
    pub cgroups: Readings,
}

/// Links kept at once: one per hierarchy walked (CPU on v2, memory on a v1
/// memory hierarchy).
const LINKS: usize = 2;

/// The loaded iterator, linked to start cgroups.
pub struct CgroupTotals {
    /// Holds the loaded program (the links refer to it).
    ebpf: aya::Ebpf,
    totals: Mapped,
    stats: Stats,
    /// The links and the cgroups they walk from, the newest last.
    links: Vec<(PathBuf, OwnedFd)>,
    /// The number of the last walk that recorded anything.
    last_walk: u64,
    /// How many cgroups it recorded (the next one's map is sized for them).
    last_len: usize,
    flush: &'static str,
    /// Why the walks read no memory usage, where they do not.
    no_memory: Option<String>,
}

impl CgroupTotals {
    /// Loads the iterator. Needs CAP_BPF + CAP_PERFMON (or root), kernel BTF,
    /// Linux 6.1 (cgroup iterators, kernel function calls) and a JIT.
    pub fn load(btf_path: &Path, max_cgroups: u32) -> Result<Self> {
        Self::load_with(Kernel::from_file(btf_path)?.cgroup_iter, max_cgroups)
    }

    /// As [`CgroupTotals::load`], with what it needs from the kernel's BTF
    /// already read (see [`Kernel`]).
    pub fn load_with(iter: btf::Result<CgroupIter>, max_cgroups: u32) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NotEmbedded);
        }
        let iter = iter?;
        debug!(?iter, "cgroup iterator's offsets and ids from BTF");
        let (offsets, no_memory) = match iter.memory {
            Ok(memory) => (memory.apply(iter.offsets), None),
            Err(e) => (iter.offsets, Some(e.to_string())),
        };
        let object = kfunc::with_kfunc(OBJECT, iter.flush.1.get())?;
        let mut ebpf = EbpfLoader::new()
            // The switch programs' task storage is created with the object
            // (aya does not wrap it); it stays empty here.
            .allow_unsupported_maps()
            // Maps of the switch programs, unused here: as small as allowed.
            .map_max_entries(MAP_CGROUP_CPU, 1)
            .map_max_entries(MAP_CGROUP_TOTALS, max_cgroups.max(1))
            .override_global(GLOBAL_CGROUP_OFFSETS, &offsets, true)
            .load(object.bytes())?;
        let err = program_error(PROG_CGROUP_ITER);
        // The target's id from our own BTF read: aya's `load` would look it
        // up in a parsed copy of the kernel's whole BTF (megabytes).
        let prog: &mut Iter = program(&mut ebpf, PROG_CGROUP_ITER)?;
        prog.load_with_btf_id(iter.target.get()).map_err(&err)?;
        let Some(Map::Array(totals)) = ebpf.take_map(MAP_CGROUP_TOTALS) else {
            return Err(Error::MissingMap(MAP_CGROUP_TOTALS));
        };
        let totals = Mapped::new(totals.fd().as_fd().as_raw_fd(), max_cgroups.max(1))?;
        let stats = Stats::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            totals,
            stats,
            links: Vec::new(),
            last_walk: 0,
            last_len: 0,
            flush: iter.flush.0,
            no_memory,
        })
    }

    /// Why the walks read no memory usage (the kernel's BTF lacks what
    /// they need), where they do not.
    pub fn no_memory(&self) -> Option<&str> {
        self.no_memory.as_deref()
    }

    /// One of the kernel side's counters, summed over CPUs.
    pub fn stat(&self, stat: agent_common::Stat) -> u64 {
        self.stats.get(stat)
    }

    /// The kernel function that flushes the statistics on this kernel.
    pub fn flush_function(&self) -> &'static str {
        self.flush
    }

    /// The figures of `start` and every cgroup below it, by id in their
    /// hierarchy, as the kernel counts them now. `start` is a cgroup
    /// directory; CPU is meaningful on the v2 hierarchy only, and there
    /// not for its root, whose time the kernel keeps elsewhere.
    pub fn read(&mut self, start: &Path) -> Result<Pass> {
        if !self.links.iter().any(|(at, _)| at == start) {
            self.relink(start)?;
        }
        if let Some(out) = self.walk_once(start)? {
            return Ok(out);
        }
        // Nothing recorded: the linked cgroup died (the kernel skips a dead
        // cgroup, the start included). The path may name a new one.
        self.relink(start)?;
        self.walk_once(start)?.ok_or_else(|| Error::Syscall {
            call: "cgroup iterator",
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is gone: its walk records nothing", start.display()),
            ),
        })
    }

    fn relink(&mut self, start: &Path) -> Result<()> {
        self.links.retain(|(at, _)| at != start);
        let link = self.link_to(start)?;
        if self.links.len() == LINKS {
            self.links.remove(0);
        }
        self.links.push((start.to_path_buf(), link));
        Ok(())
    }

    /// One walk from `start` and its results; `None` when it recorded nothing.
    fn walk_once(&mut self, start: &Path) -> Result<Option<Pass>> {
        let Some((_, link)) = self.links.iter().find(|(at, _)| at == start) else {
            return Ok(None);
        };
        walk(link)?;
        self.stats.warn_on_losses();
        // The walk's entries are the prefix carrying the first one's walk
        // number. Walk numbers only grow (across links too): a first entry
        // with the last read's number (or none yet) means this walk
        // recorded nothing.
        let mut entries = self.totals.entries();
        let Some(first) = entries.next().filter(|t| t.walk > self.last_walk) else {
            return Ok(None);
        };
        self.last_walk = first.walk;
        let page = page_size() as u64;
        let mut out = Readings::with_capacity_and_hasher(self.last_len, Default::default());
        out.extend(
            std::iter::once(first)
                .chain(entries.take_while(|t| t.walk == first.walk))
                .map(|t| (t.cgroup, Reading::new(t, page))),
        );
        self.last_len = out.len();
        Ok(Some(Pass {
            at: wall_time(first.read_at_ns),
            cgroups: out,
        }))
    }

    fn link_to(&self, start: &Path) -> Result<OwnedFd> {
        let prog: &Iter = self
            .ebpf
            .program(PROG_CGROUP_ITER)
            .ok_or(Error::MissingProgram(PROG_CGROUP_ITER))?
            .try_into()
            .map_err(program_error(PROG_CGROUP_ITER))?;
        let prog_fd = prog.fd().map_err(program_error(PROG_CGROUP_ITER))?;
        let dir = open_dir(start)?;
        link_create(prog_fd.as_fd().as_raw_fd(), dir.as_raw_fd())
    }
}

impl Reading {
    /// An entry's figures; `page`: the page size in bytes.
    fn new(t: CgroupTotal, page: u64) -> Self {
        Self {
            cpu_ns: t.cpu_ns,
            memory_usage: (t.flags & MEMORY_READ != 0).then(|| t.memory_pages.saturating_mul(page)),
        }
    }
}

/// The iterator's results array, mapped into our memory: read with no
/// system call. The mapping holds its own reference to the map.
struct Mapped {
    at: std::ptr::NonNull<CgroupTotal>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory, owned by this value alone.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(map_fd: i32, entries: u32) -> Result<Self> {
        let len = entries as usize;
        let bytes = (len * std::mem::size_of::<CgroupTotal>()).next_multiple_of(page_size());
        // SAFETY: maps an mmapable array map read-only, shared, whole;
        // checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map_fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(Error::Syscall {
                call: "mmap(cgroup totals)",
                source: std::io::Error::last_os_error(),
            });
        }
        let at = std::ptr::NonNull::new(at.cast()).ok_or(Error::Syscall {
            call: "mmap(cgroup totals)",
            source: std::io::Error::other("null mapping"),
        })?;
        Ok(Self { at, len, bytes })
    }

    /// The entries in order, copied out one by one (the kernel writes them
    /// during a walk only, which runs inside this thread's read).
    fn entries(&self) -> impl Iterator<Item = CgroupTotal> + '_ {
        (0..self.len)
            // SAFETY: within the mapping; entries are `#[repr(C)]` u64s,
            // any bytes a value; volatile as the kernel writes them.
            .map(|i| unsafe { std::ptr::read_volatile(self.at.as_ptr().add(i)) })
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: no arguments; always succeeds on Linux.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Syscall {
        call: "open",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: a NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::Syscall {
            call: "open",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;
const BPF_CGROUP_ITER_DESCENDANTS_PRE: u32 = 2;

/// `union bpf_attr` as `BPF_LINK_CREATE` reads it for an iterator.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_iter_link_info`, its cgroup member.
#[repr(C)]
struct CgroupIterInfo {
    order: u32,
    cgroup_fd: u32,
    cgroup_id: u64,
}

/// `union bpf_attr` as `BPF_ITER_CREATE` reads it.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T, call: &'static str) -> Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`
    // (the kernel zero-fills the rest) and lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(Error::Syscall {
            call,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel returned a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Links the iterator program to a pre-order walk from the cgroup `dir_fd`.
fn link_create(prog_fd: i32, dir_fd: i32) -> Result<OwnedFd> {
    let info = CgroupIterInfo {
        order: BPF_CGROUP_ITER_DESCENDANTS_PRE,
        cgroup_fd: dir_fd as u32,
        cgroup_id: 0,
    };
    let attr = LinkCreate {
        prog_fd: prog_fd as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: std::ptr::from_ref(&info) as u64,
        iter_info_len: std::mem::size_of::<CgroupIterInfo>() as u32,
        _pad: 0,
    };
    bpf(BPF_LINK_CREATE, &attr, "bpf(BPF_LINK_CREATE)")
}

/// One walk: a new iterator from `link`, read to its end (the program
/// writes into the map, not the file, so there is nothing to read).
fn walk(link: &OwnedFd) -> Result<()> {
    let attr = IterCreate {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    let iter = bpf(BPF_ITER_CREATE, &attr, "bpf(BPF_ITER_CREATE)")?;
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a buffer we own, of its length.
        let n = unsafe { libc::read(iter.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Ok(()),
            n if n > 0 => continue,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Syscall {
                    call: "read(cgroup iterator)",
                    source: e,
                });
            }
        }
    }
}
