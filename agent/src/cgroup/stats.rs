//! Counters cgroupfs keeps per cgroup: cumulative CPU time, memory working set
//! and swap, in v2 and v1 form, and the node's totals from the root.
//!
//! Working set is what the kubelet and metrics-server report: usage minus
//! inactive file pages (reclaimable page cache), floored at zero.
use std::{fs, io, path::Path};

use super::{Hierarchy, Tree};

/// Memory of one cgroup (or the node), bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    pub working_set: u64,
    /// Swap in use, where the kernel reports it for this cgroup.
    pub swap: Option<u64>,
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    let text = text.trim();
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {text:?}: {e}", path.display()),
        )
    })
}

/// A `key value` line's value from a flat-keyed file (`cpu.stat`, `memory.stat`).
fn keyed(path: &Path, key: &str) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok())?
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no numeric {key:?}", path.display()),
            )
        })
}

impl Hierarchy {
    /// Cumulative CPU time of a cgroup (and its descendants), nanoseconds.
    /// v2: `cpu.stat` `usage_usec` (µs resolution); v1: `cpuacct.usage` (ns).
    pub fn cpu_usage_ns(&self, tree: Tree, rel: &str) -> io::Result<u64> {
        if tree == Tree::V2
            && let Some(dir) = self.dir(Tree::V2, rel)
        {
            return keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us * 1000);
        }
        let dir = self
            .v1_cpuacct
            .as_ref()
            .map(|root| root.join(rel.trim_start_matches('/')))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cpuacct controller"))?;
        read_u64(&dir.join("cpuacct.usage"))
    }

    /// Memory of a cgroup: from the v2 files where the memory controller is on the
    /// v2 tree, else from the v1 memory controller at the same relative path
    /// (hybrid hosts keep memory on v1).
    pub fn memory(&self, tree: Tree, rel: &str) -> io::Result<Memory> {
        if tree == Tree::V2
            && self.v2_memory
            && let Some(dir) = self.dir(Tree::V2, rel)
        {
            return memory_v2(&dir);
        }
        let dir = self
            .v1_memory
            .as_ref()
            .map(|root| root.join(rel.trim_start_matches('/')))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no memory controller"))?;
        memory_v1(&dir, self.v1_memsw)
    }

    /// The node's memory: the v1 memory controller's root where there is one,
    /// else `/proc/meminfo` (the v2 root has no `memory.current`).
    pub fn node_memory(&self, proc_root: &Path) -> io::Result<Memory> {
        match &self.v1_memory {
            Some(root) => memory_v1(root, self.v1_memsw),
            None => meminfo(&proc_root.join("meminfo")),
        }
    }
}

fn memory_v2(dir: &Path) -> io::Result<Memory> {
    let usage = read_u64(&dir.join("memory.current"))?;
    let inactive = keyed(&dir.join("memory.stat"), "inactive_file")?;
    let swap = read_u64(&dir.join("memory.swap.current")).ok();
    Ok(Memory {
        usage,
        working_set: usage.saturating_sub(inactive),
        swap,
    })
}

fn memory_v1(dir: &Path, memsw: bool) -> io::Result<Memory> {
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
    let inactive = keyed(&dir.join("memory.stat"), "total_inactive_file")?;
    // memsw counts memory + swap; present only with swap accounting enabled.
    let swap = memsw
        .then(|| read_u64(&dir.join("memory.memsw.usage_in_bytes")).ok())
        .flatten()
        .map(|memsw| memsw.saturating_sub(usage));
    Ok(Memory {
        usage,
        working_set: usage.saturating_sub(inactive),
        swap,
    })
}

/// Node memory as cAdvisor computes it for a v2 root: usage = MemTotal − MemFree,
/// working set = usage − Inactive(file); swap = SwapTotal − SwapFree.
fn meminfo(path: &Path) -> io::Result<Memory> {
    let text = fs::read_to_string(path)?;
    let field = |name: &str| -> io::Result<u64> {
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kb = rest.trim().trim_end_matches("kB").trim();
                kb.parse::<u64>().ok().map(|kb| kb * 1024)
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no {name}", path.display()),
                )
            })
    };
    let usage = field("MemTotal")?.saturating_sub(field("MemFree")?);
    let inactive = field("Inactive(file)")?;
    let swap = match (field("SwapTotal"), field("SwapFree")) {
        (Ok(total), Ok(free)) if total > 0 => Some(total.saturating_sub(free)),
        _ => None,
    };
    Ok(Memory {
        usage,
        working_set: usage.saturating_sub(inactive),
        swap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn v2_fixture() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "cpu memory\n");
        write(root, "cgroup.procs", "");
        let pod = root.join("kubepods/burstable");
        write(
            &pod,
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write(&pod, "memory.current", "10485760\n");
        write(
            &pod,
            "memory.stat",
            "anon 1\nfile 2\ninactive_file 4194304\nactive_file 3\n",
        );
        write(&pod, "memory.swap.current", "4096\n");
        let h = Hierarchy::detect(root).expect("detect");
        assert_eq!(h.version, super::super::Version::V2);
        assert_eq!(
            h.cpu_usage_ns(Tree::V2, "/kubepods/burstable")
                .expect("cpu"),
            1_500_000
        );
        assert_eq!(
            h.memory(Tree::V2, "/kubepods/burstable").expect("mem"),
            Memory {
                usage: 10485760,
                working_set: 6291456,
                swap: Some(4096)
            }
        );
    }

    #[test]
    fn v1_fixture_floors_at_zero_and_reads_swap() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        for c in ["cpuacct", "memory"] {
            write(&root.join(c), "cgroup.procs", "");
        }
        write(&root.join("memory"), "memory.memsw.usage_in_bytes", "0\n");
        let mem = root.join("memory/kubepods");
        write(&mem, "memory.usage_in_bytes", "1000\n");
        write(&mem, "memory.stat", "cache 5\ntotal_inactive_file 5000\n");
        write(&mem, "memory.memsw.usage_in_bytes", "1500\n");
        write(
            &root.join("cpuacct/kubepods"),
            "cpuacct.usage",
            "123456789\n",
        );
        let h = Hierarchy::detect(root).expect("detect");
        assert_eq!(h.version, super::super::Version::V1);
        assert_eq!(
            h.cpu_usage_ns(Tree::V1, "/kubepods").expect("cpu"),
            123456789
        );
        assert_eq!(
            h.memory(Tree::V1, "/kubepods").expect("mem"),
            Memory {
                usage: 1000,
                working_set: 0,
                swap: Some(500)
            }
        );
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "");
        write(&root.join("a"), "cpu.stat", "usage_usec lots\n");
        write(&root.join("a"), "memory.current", "-1\n");
        write(&root.join("a"), "memory.stat", "");
        let h = Hierarchy::detect(root).expect("detect");
        assert!(h.cpu_usage_ns(Tree::V2, "/a").is_err());
        assert!(h.memory(Tree::V2, "/a").is_err());
        assert!(h.cpu_usage_ns(Tree::V2, "/missing").is_err());
        assert!(Hierarchy::detect(&root.join("a")).is_err());
    }

    #[test]
    fn meminfo_node_memory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(
            tmp.path(),
            "meminfo",
            "MemTotal:       1000 kB\nMemFree:         200 kB\nInactive(file):  100 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        );
        let m = meminfo(&tmp.path().join("meminfo")).expect("meminfo");
        assert_eq!(
            m,
            Memory {
                usage: 800 * 1024,
                working_set: 700 * 1024,
                swap: None
            }
        );
    }
}
