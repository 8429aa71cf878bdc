//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so the loader reads the
//! offsets the programs need and passes them in as globals, and finds the type
//! id a BTF tracepoint attaches by. Only what that needs is parsed: the type
//! section is walked once, structs are looked up by name, and anonymous
//! struct/union members are searched through as the C compiler would.
use std::{
    collections::HashMap,
    io::{Read as _, Seek as _, SeekFrom},
    num::NonZeroU32,
    os::unix::fs::FileExt as _,
    path::Path,
};

use agent_common::{
    CgroupOffsets, ITER_TARGET_CGROUP, KFUNC_RSTAT_FLUSH, TYPEDEF_SCHED_SWITCH, TaskOffsets,
};

/// Errors reading offsets from BTF.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("reading BTF: {0}")]
    Io(#[source] std::io::Error),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in this kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("this kernel's BTF has no function {0}")]
    NoFunction(&'static str),
    #[error("this kernel's BTF has no enumerator {0}")]
    NoEnumerator(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the loader needs from the kernel's BTF.
#[derive(Debug)]
pub struct Kernel {
    /// For the switch programs: their offsets, or why this kernel's BTF
    /// lacks one.
    pub offsets: Result<TaskOffsets>,
    /// Type id of the `btf_trace_sched_switch` typedef, what a BTF tracepoint
    /// on `sched_switch` attaches by (absent: no BTF tracepoints here).
    pub sched_switch_typedef: Option<NonZeroU32>,
    /// For the cgroup iterator: what it needs, or why this kernel lacks it.
    pub cgroup_iter: Result<CgroupIter>,
}

/// What the cgroup iterator needs from the kernel.
#[derive(Debug)]
pub struct CgroupIter {
    /// Its offsets, the memory ones 0.
    pub offsets: CgroupOffsets,
    /// What it needs to read memory too, or why this kernel's BTF lacks it.
    pub memory: Result<MemoryOffsets>,
    /// Id of the `bpf_iter_cgroup` function, what the iterator loads against.
    pub target: NonZeroU32,
    /// The statistics flush function (one of [`KFUNC_RSTAT_FLUSH`]) and its id.
    pub flush: (&'static str, NonZeroU32),
}

impl Kernel {
    /// Reads the kernel's BTF (a vmlinux BTF file): its strings whole, its
    /// types as they stream past (the file is ~5 MiB; the agent's peak
    /// memory is this read).
    pub fn from_file(path: &Path) -> Result<Self> {
        let read_error = |source| Error::Read {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        // A section past the file's end is malformed (a read that comes
        // short of it too, should the file shrink meanwhile).
        let read_at = |buf: &mut [u8], at: usize, short: &'static str| {
            file.read_exact_at(buf, at as u64)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Error::Malformed(short),
                    _ => read_error(e),
                })
        };
        let mut header = [0u8; HEADER_LEN];
        read_at(&mut header, 0, "header truncated")?;
        let h = Header::parse(&header)?;
        let file_len = file.metadata().map_err(read_error)?.len();
        // Checked before allocating: the header's lengths are not trusted.
        if (h.str_start() + h.str_len) as u64 > file_len {
            return Err(Error::Malformed("string section out of bounds"));
        }
        let mut strings = vec![0u8; h.str_len];
        read_at(&mut strings, h.str_start(), "string section out of bounds")?;
        file.seek(SeekFrom::Start(h.type_start() as u64))
            .map_err(read_error)?;
        let types = std::io::BufReader::with_capacity(64 << 10, file.take(h.type_len as u64));
        let btf = Btf::parse_from(strings, types, h.type_len, Some(&STRUCTS))?;
        Ok(Self {
            offsets: task_offsets(&btf),
            sched_switch_typedef: btf.named_id(Named::Typedef, TYPEDEF_SCHED_SWITCH),
            cgroup_iter: cgroup_iter(&btf),
        })
    }
}

/// The structs whose members the loader looks up (the only named ones the
/// parse keeps; anonymous ones are kept for the members inside them). A
/// test checks that the loader finds the same offsets in this kernel's BTF
/// with every struct kept.
const STRUCTS: [&str; 10] = [
    "bpf_iter_meta",
    "cgroup",
    "cgroup_base_stat",
    "css_set",
    "kernfs_node",
    "mem_cgroup",
    "page_counter",
    "sched_entity",
    "task_cputime",
    "task_struct",
];

const HEADER_LEN: usize = 24;

/// Where a BTF blob's sections are.
struct Header {
    hdr_len: usize,
    type_off: usize,
    type_len: usize,
    str_off: usize,
    str_len: usize,
}

impl Header {
    fn parse(data: &[u8]) -> Result<Self> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(Error::Malformed("bad magic (not little-endian BTF)"));
        }
        let at = |i| u32_at(data, i).map(|v| v as usize);
        Ok(Self {
            hdr_len: at(4)?,
            type_off: at(8)?,
            type_len: at(12)?,
            str_off: at(16)?,
            str_len: at(20)?,
        })
    }

    fn type_start(&self) -> usize {
        self.hdr_len + self.type_off
    }

    fn str_start(&self) -> usize {
        self.hdr_len + self.str_off
    }
}

fn cgroup_iter(btf: &Btf) -> Result<CgroupIter> {
    let target_name = format!("bpf_iter_{ITER_TARGET_CGROUP}");
    let target = btf
        .named_id(Named::Func, &target_name)
        .ok_or(Error::NoFunction(
            "bpf_iter_cgroup (cgroup iterators: Linux 6.1)",
        ))?;
    let flush = KFUNC_RSTAT_FLUSH
        .into_iter()
        .find_map(|name| Some((name, btf.named_id(Named::Func, name)?)))
        .ok_or(Error::NoFunction(
            "css_rstat_flush or cgroup_rstat_flush (kernel functions for BPF: Linux 6.1)",
        ))?;
    let bytes = |strukt, member| btf.member_offset(strukt, member).map(|m| m.bits / 8);
    let bstat = bytes("cgroup", "bstat")?;
    let cputime = bytes("cgroup_base_stat", "cputime")?;
    Ok(CgroupIter {
        offsets: CgroupOffsets {
            cgroup_kn: bytes("cgroup", "kn")?,
            kernfs_id: bytes("kernfs_node", "id")?,
            cpu_time: bstat + cputime + bytes("task_cputime", "sum_exec_runtime")?,
            meta_session_id: bytes("bpf_iter_meta", "session_id")?,
            meta_seq_num: bytes("bpf_iter_meta", "seq_num")?,
            ..CgroupOffsets::UNSET
        },
        memory: memory_offsets(btf),
        target,
        flush,
    })
}

/// The offsets of [`CgroupOffsets`]' memory fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryOffsets {
    pub memory_css: u64,
    pub memcg_usage: u64,
}

impl MemoryOffsets {
    /// `offsets` with these set: the iterator reads memory usage too.
    pub fn apply(self, offsets: CgroupOffsets) -> CgroupOffsets {
        CgroupOffsets {
            memory_css: self.memory_css,
            memcg_usage: self.memcg_usage,
            ..offsets
        }
    }
}

fn memory_offsets(btf: &Btf) -> Result<MemoryOffsets> {
    let bytes = |strukt, member| btf.member_offset(strukt, member).map(|m| m.bits / 8);
    let memory_id = btf.enumerator(ENUM_MEMORY_CGRP_ID)?;
    if bytes("mem_cgroup", "css")? != 0 {
        return Err(Error::Malformed("mem_cgroup.css is not its first member"));
    }
    Ok(MemoryOffsets {
        // An array of pointers.
        memory_css: bytes("cgroup", "subsys")? + 8 * memory_id,
        memcg_usage: bytes("mem_cgroup", "memory")? + bytes("page_counter", "usage")?,
    })
}

/// `enum cgroup_subsys_id`'s memory controller: its index in `cgroup.subsys`.
const ENUM_MEMORY_CGRP_ID: &str = "memory_cgrp_id";
/// The enumerators the loader looks up (the only ones the parse keeps).
const ENUMERATORS: [&str; 1] = [ENUM_MEMORY_CGRP_ID];

fn task_offsets(btf: &Btf) -> Result<TaskOffsets> {
    let bytes = |strukt, member| btf.member_offset(strukt, member).map(|m| m.bits / 8);
    let se = bytes("task_struct", "se")?;
    Ok(TaskOffsets {
        pid: bytes("task_struct", "pid")?,
        sum_exec_runtime: se + bytes("sched_entity", "sum_exec_runtime")?,
        prev_sum_exec_runtime: se + bytes("sched_entity", "prev_sum_exec_runtime")?,
        start_time: bytes("task_struct", "start_time")?,
        cgroups: bytes("task_struct", "cgroups")?,
        dfl_cgrp: bytes("css_set", "dfl_cgrp")?,
        cgroup_kn: bytes("cgroup", "kn")?,
        kernfs_id: bytes("kernfs_node", "id")?,
    })
}

/// The kinds of named type looked up by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Typedef,
    Func,
}

impl Named {
    const fn kind(self) -> u32 {
        match self {
            Named::Typedef => KIND_TYPEDEF,
            Named::Func => KIND_FUNC,
        }
    }
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    bits: u64,
}

struct Composite {
    name_off: u32,
    members: Vec<Member>,
}

/// The string at `off` of a string section.
fn name_at(strings: &[u8], off: u32) -> &[u8] {
    let rest = strings.get(off as usize..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    &rest[..end]
}

/// The functions and typedefs the loader looks up by name: the cgroup
/// iterator's target, the statistics flush and the switch tracepoint's
/// typedef (tens of thousands of others are not kept).
fn looked_up(kind: u32, name: &[u8]) -> bool {
    match kind {
        KIND_FUNC => {
            name.strip_prefix(b"bpf_iter_") == Some(ITER_TARGET_CGROUP.as_bytes())
                || KFUNC_RSTAT_FLUSH.iter().any(|f| f.as_bytes() == name)
        }
        KIND_TYPEDEF => name == TYPEDEF_SCHED_SWITCH.as_bytes(),
        _ => false,
    }
}

/// The parts of a BTF blob needed to find member offsets.
pub struct Btf {
    strings: Vec<u8>,
    /// Type id → composite (struct/union), for ids that are one.
    composites: HashMap<u32, Composite>,
    /// Type id → (kind, referenced type) for modifiers and typedefs, to see through them.
    refs: HashMap<u32, u32>,
    /// Typedef and function type ids by kind → name offset.
    named: HashMap<(u32, u32), u32>,
    /// The values of the [`ENUMERATORS`] found (non-negative ones: an
    /// index or a position).
    enumerators: HashMap<&'static str, u64>,
}

/// The type section as it is read, `len` bytes long.
struct Cursor<R> {
    read: R,
    pos: usize,
    len: usize,
}

impl<R: std::io::Read> Cursor<R> {
    fn u32(&mut self) -> Result<u32> {
        let mut bytes = [0u8; 4];
        self.fill(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn skip(&mut self, mut n: usize) -> Result<()> {
        let mut scratch = [0u8; 64];
        while n > 0 {
            let step = n.min(scratch.len());
            self.fill(&mut scratch[..step])?;
            n -= step;
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.pos + buf.len() > self.len {
            return Err(Error::Malformed("type section truncated"));
        }
        self.read.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Malformed("type section truncated"),
            _ => Error::Io(e),
        })?;
        self.pos += buf.len();
        Ok(())
    }
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(Error::Malformed("header truncated"))
}

impl Btf {
    /// Parses a little-endian BTF blob (vmlinux BTF is native-endian; this agent
    /// runs on little-endian hosts only, as does its eBPF target), keeping
    /// the loader's [`STRUCTS`].
    pub fn parse(data: &[u8]) -> Result<Self> {
        Self::parse_keeping(data, Some(&STRUCTS))
    }

    /// As [`Btf::parse`], keeping the structs named `structs` (`None`:
    /// every one).
    fn parse_keeping(data: &[u8], structs: Option<&[&str]>) -> Result<Self> {
        let h = Header::parse(data)?;
        let types = data
            .get(h.type_start()..h.type_start() + h.type_len)
            .ok_or(Error::Malformed("type section out of bounds"))?;
        let strings = data
            .get(h.str_start()..h.str_start() + h.str_len)
            .ok_or(Error::Malformed("string section out of bounds"))?;
        Self::parse_from(strings.to_vec(), types, h.type_len, structs)
    }

    /// Parses the type section `types`, `type_len` bytes long, whose names
    /// are in `strings`.
    fn parse_from(
        strings: Vec<u8>,
        types: impl std::io::Read,
        type_len: usize,
        structs: Option<&[&str]>,
    ) -> Result<Self> {
        let mut composites = HashMap::new();
        let mut refs = HashMap::new();
        let mut named = HashMap::new();
        let mut enumerators = HashMap::new();
        let mut cur = Cursor {
            read: types,
            pos: 0,
            len: type_len,
        };
        // Named structs not looked up, and their members, are not kept.
        let kept = |name_off: u32| {
            let name = name_at(&strings, name_off);
            name.is_empty()
                || structs.is_none_or(|structs| structs.iter().any(|s| s.as_bytes() == name))
        };
        let mut id = 0u32;
        while cur.pos < type_len {
            id += 1;
            let name_off = cur.u32()?;
            let info = cur.u32()?;
            let size_or_type = cur.u32()?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => cur.skip(4)?,
                KIND_ARRAY => cur.skip(12)?,
                KIND_STRUCT | KIND_UNION if !kept(name_off) => cur.skip(12 * vlen)?,
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = cur.u32()?;
                        let m_type = cur.u32()?;
                        let offset = cur.u32()?;
                        // With kind_flag the top 8 bits are a bitfield size.
                        let bits = if kind_flag {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        };
                        members.push(Member {
                            name_off: m_name,
                            type_id: m_type,
                            bits: u64::from(bits),
                        });
                    }
                    composites.insert(id, Composite { name_off, members });
                }
                KIND_ENUM | KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let name = name_at(&strings, cur.u32()?);
                        let low = cur.u32()?;
                        let high = if kind == KIND_ENUM64 { cur.u32()? } else { 0 };
                        if let Some(&wanted) = ENUMERATORS.iter().find(|e| e.as_bytes() == name) {
                            enumerators.insert(wanted, u64::from(low) | u64::from(high) << 32);
                        }
                    }
                }
                KIND_FUNC_PROTO => cur.skip(8 * vlen)?,
                KIND_DATASEC => cur.skip(12 * vlen)?,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG:
                // no trailing data. Modifiers/typedefs refer to another type.
                8..=11 | 18 => {
                    refs.insert(id, size_or_type);
                    if kind == KIND_TYPEDEF && looked_up(kind, name_at(&strings, name_off)) {
                        named.insert((KIND_TYPEDEF, id), name_off);
                    }
                }
                KIND_FUNC if looked_up(kind, name_at(&strings, name_off)) => {
                    named.insert((KIND_FUNC, id), name_off);
                }
                KIND_FUNC => {}
                2 | 7 | 16 => {}
                _ => return Err(Error::Malformed("unknown type kind")),
            }
        }
        Ok(Self {
            strings,
            composites,
            refs,
            named,
            enumerators,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        name_at(&self.strings, off)
    }

    /// The type id of the typedef or function named `name` (the lowest, if
    /// several; ids start at 1).
    fn named_id(&self, kind: Named, name: &str) -> Option<NonZeroU32> {
        self.named
            .iter()
            .filter(|&(&(k, _), &off)| k == kind.kind() && self.name(off) == name.as_bytes())
            .filter_map(|(&(_, id), _)| NonZeroU32::new(id))
            .min()
    }

    /// The value of enumerator `name` (one of [`ENUMERATORS`]).
    fn enumerator(&self, name: &'static str) -> Result<u64> {
        self.enumerators
            .get(name)
            .copied()
            .ok_or(Error::NoEnumerator(name))
    }

    fn resolve(&self, mut id: u32) -> u32 {
        // Bounded: a malformed cycle must not hang the loader.
        for _ in 0..32 {
            match self.refs.get(&id) {
                Some(&next) => id = next,
                None => break,
            }
        }
        id
    }

    /// Offset of `member` in the struct named `strukt`, looking inside anonymous
    /// members. Several structs may share a name in BTF; the first with the member wins.
    fn member_offset(&self, strukt: &str, member: &str) -> Result<MemberOffset> {
        let mut found_struct = false;
        let mut ids: Vec<_> = self.composites.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(c) = self.composites.get(&id) else {
                continue;
            };
            if self.name(c.name_off) != strukt.as_bytes() {
                continue;
            }
            found_struct = true;
            if let Some(bits) = self.find_in(id, member.as_bytes(), 0) {
                return Ok(MemberOffset { bits });
            }
        }
        Err(if found_struct {
            Error::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            }
        } else {
            Error::NoStruct(strukt.into())
        })
    }

    fn find_in(&self, id: u32, member: &[u8], depth: u32) -> Option<u64> {
        let c = self.composites.get(&id)?;
        for m in &c.members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(m.bits);
            }
            if name.is_empty() && depth < 8 {
                let inner = self.resolve(m.type_id);
                if let Some(bits) = self.find_in(inner, member, depth + 1) {
                    return Some(m.bits + bits);
                }
            }
        }
        None
    }
}

#[derive(Clone, Copy, Debug)]
struct MemberOffset {
    bits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: types as (name, info, size_or_type, trailing u32s).
    fn blob(strings: &[&str], types: &[(u32, u32, u32, Vec<u32>)]) -> Vec<u8> {
        let mut strs = vec![0u8];
        for s in strings {
            strs.extend_from_slice(s.as_bytes());
            strs.push(0);
        }
        let mut ty = Vec::new();
        for (name, info, sz, extra) in types {
            for v in [*name, *info, *sz].iter().chain(extra) {
                ty.extend_from_slice(&v.to_le_bytes());
            }
        }
        // Header (type section right after it, strings after the types),
        // then the sections.
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            ty.len() as u32,
            ty.len() as u32,
            strs.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&ty);
        out.extend_from_slice(&strs);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        // strings: 1 "int", 5 "outer", 11 "a", 13 "b"
        let data = blob(
            &["int", "outer", "a", "b"],
            &[
                (1, KIND_INT << 24, 8, vec![64]),               // 1: int
                (0, (KIND_UNION << 24) | 1, 8, vec![13, 1, 0]), // 2: union { b }
                (5, (KIND_STRUCT << 24) | 2, 24, vec![11, 1, 0, 0, 2, 128]), // 3: outer { a; union {b} at 16 }
            ],
        );
        let btf = Btf::parse_keeping(&data, Some(&["outer"])).expect("parses");
        assert_eq!(btf.member_offset("outer", "a").expect("a").bits, 0);
        assert_eq!(btf.member_offset("outer", "b").expect("b").bits, 128);
        assert!(matches!(
            btf.member_offset("outer", "c"),
            Err(Error::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(Error::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut data = blob(&["x"], &[(1, (KIND_STRUCT << 24) | 5, 8, vec![])]);
        data.truncate(data.len() - 1);
        assert!(Btf::parse(&data).is_err());
        // The same from a file, whose type section is read as it streams.
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("vmlinux");
        let whole = blob(&["x"], &[(1, (KIND_STRUCT << 24) | 5, 8, vec![])]);
        std::fs::write(&file, &whole[..whole.len() - 3]).expect("write");
        assert!(matches!(
            Kernel::from_file(&file),
            Err(Error::Malformed("string section out of bounds"))
        ));
        // A string section's length near 4 GiB is refused before any is
        // allocated.
        let mut huge = whole.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&file, &huge).expect("write");
        assert!(matches!(
            Kernel::from_file(&file),
            Err(Error::Malformed("string section out of bounds"))
        ));
        let mut short = whole.clone();
        short[12] = 200; // the type section's length
        std::fs::write(&file, &short).expect("write");
        assert!(matches!(
            Kernel::from_file(&file),
            Err(Error::Malformed("type section truncated"))
        ));
    }

    /// This kernel's BTF, or `None` (said) on a kernel without.
    fn kernel_btf() -> Option<&'static Path> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!(
                "skipped: {} not present (kernel without BTF)",
                path.display()
            );
            return None;
        }
        Some(path)
    }

    #[test]
    fn reads_this_kernels_task_struct() {
        let Some(path) = kernel_btf() else { return };
        let kernel = Kernel::from_file(path).expect("BTF");
        let offsets = kernel.offsets.expect("task_struct offsets");
        // None of these is a struct's first member; all are 8-byte fields
        // but the pid.
        for u64_field in [
            offsets.sum_exec_runtime,
            offsets.prev_sum_exec_runtime,
            offsets.start_time,
            offsets.cgroups,
            offsets.dfl_cgrp,
            offsets.cgroup_kn,
            offsets.kernfs_id,
        ] {
            assert!(u64_field > 0 && u64_field.is_multiple_of(8), "{offsets:?}");
        }
        assert_ne!(offsets.prev_sum_exec_runtime, offsets.sum_exec_runtime);
        assert!(offsets.pid > 0 && offsets.pid.is_multiple_of(4));
        // The attach id is the one aya's own loader would find in the whole
        // BTF. (That the kernel accepts it is shown by the privileged tests,
        // which attach the BTF tracepoint with it.)
        let id = kernel.sched_switch_typedef.expect("btf_trace_sched_switch");
        let whole = std::fs::read(path).expect("read BTF");
        assert_eq!(aya_typedef_id(&whole), id.get());
    }

    #[test]
    fn reads_this_kernels_cgroup_iterator() {
        let Some(path) = kernel_btf() else { return };
        let kernel = Kernel::from_file(path).expect("BTF");
        let Ok(iter) = kernel.cgroup_iter else {
            // Linux before 6.1: the privileged tests show the fallback.
            eprintln!("skipped: {:?}", kernel.cgroup_iter);
            return;
        };
        let o = iter.offsets;
        for field in [
            o.cgroup_kn,
            o.kernfs_id,
            o.cpu_time,
            o.meta_session_id,
            o.meta_seq_num,
        ] {
            assert!(field > 0 && field.is_multiple_of(8), "{o:?}");
        }
        // The target's id is the one aya's own loader would find in the
        // whole BTF.
        let name = format!("bpf_iter_{ITER_TARGET_CGROUP}");
        let func_id = |data: &[u8]| {
            aya::Btf::parse(data, aya::Endianness::default())
                .expect("aya parses it")
                .id_by_type_name_kind(&name, aya_obj::btf::BtfKind::Func)
                .expect("aya finds the function")
        };
        let whole = std::fs::read(path).expect("read BTF");
        assert_eq!(func_id(&whole), iter.target.get());
        let flush = aya::Btf::parse(&whole, aya::Endianness::default())
            .expect("aya parses it")
            .id_by_type_name_kind(iter.flush.0, aya_obj::btf::BtfKind::Func)
            .expect("the flush function");
        assert_eq!(flush, iter.flush.1.get());
    }

    #[test]
    fn the_structs_kept_are_every_one_looked_up() {
        let Some(path) = kernel_btf() else { return };
        let whole = std::fs::read(path).expect("read BTF");
        let kept = Btf::parse(&whole).expect("BTF");
        let all = Btf::parse_keeping(&whole, None).expect("BTF");
        // Debug output: errors have no equality, and an error here (a
        // struct missing from STRUCTS reads as NoStruct) must differ too.
        let found = |btf: &Btf| {
            format!(
                "{:?} {:?} {:?}",
                task_offsets(btf),
                cgroup_iter(btf),
                memory_offsets(btf)
            )
        };
        assert_eq!(found(&kept), found(&all));
    }

    fn aya_typedef_id(data: &[u8]) -> u32 {
        aya::Btf::parse(data, aya::Endianness::default())
            .expect("aya parses it")
            .id_by_type_name_kind(TYPEDEF_SCHED_SWITCH, aya_obj::btf::BtfKind::Typedef)
            .expect("aya finds the typedef")
    }

    #[test]
    fn finds_typedefs_and_functions_by_name() {
        const T: &str = TYPEDEF_SCHED_SWITCH;
        // strings: 1 "int", 5 T, then "u"
        let data = blob(
            &["int", T, "u"],
            &[
                (1, KIND_INT << 24, 8, vec![64]),                    // 1: int
                (5, KIND_TYPEDEF << 24, 1, vec![]),                  // 2: typedef int T
                (6 + T.len() as u32, KIND_TYPEDEF << 24, 1, vec![]), // 3: typedef int u
            ],
        );
        let btf = Btf::parse(&data).expect("parses");
        assert_eq!(btf.named_id(Named::Typedef, T), NonZeroU32::new(2));
        assert_eq!(btf.named_id(Named::Typedef, "int"), None);
        assert_eq!(btf.named_id(Named::Func, T), None);
        // Typedefs nobody looks up are not kept.
        assert_eq!(btf.named_id(Named::Typedef, "u"), None);
        // A function looked up is found at its id; one nobody looks up is
        // not kept. strings: 1 "vfs_read", 10 "css_rstat_flush"
        let data = blob(
            &["vfs_read", "css_rstat_flush"],
            &[
                (1, KIND_FUNC << 24, 0, vec![]),  // 1: vfs_read
                (10, KIND_FUNC << 24, 0, vec![]), // 2: css_rstat_flush
            ],
        );
        let btf = Btf::parse(&data).expect("parses");
        assert_eq!(
            btf.named_id(Named::Func, "css_rstat_flush"),
            NonZeroU32::new(2)
        );
        assert_eq!(btf.named_id(Named::Func, "vfs_read"), None);
    }
}
