//! Counters cgroupfs keeps per cgroup: cumulative CPU time, memory working set
//! and swap, in v2 and v1 form, and the node's totals from the root.
//!
//! Working set is what the kubelet and metrics-server report: usage minus
//! inactive file pages (reclaimable page cache), floored at zero.
//!
//! Which files hold what is decided here once; how they are read is a [`Read`]:
//! opened afresh each time ([`OneShot`]), or kept open and re-read in place
//! ([`super::files::CounterFiles`], what the collector uses every interval).
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{Hierarchy, Tree};

/// Memory of one cgroup (or the node), bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage: u64,
    pub working_set: u64,
    /// Swap in use, where the kernel reports it for this cgroup.
    pub swap: Option<u64>,
}

impl Memory {
    /// Working set as the kubelet computes it: usage minus inactive file
    /// pages, floored at zero.
    pub(crate) fn from_usage(usage: u64, inactive_file: u64, swap: Option<u64>) -> Self {
        Self {
            usage,
            working_set: usage.saturating_sub(inactive_file),
            swap,
        }
    }
}

/// A cgroup's directory (or procfs): a root and a path below it, joined
/// only where a file is opened or named in an error (a reader that keeps
/// files open needs no path in the steady state).
#[derive(Clone, Copy)]
pub(super) struct Dir<'a> {
    root: &'a Path,
    rel: &'a str,
}

impl<'a> Dir<'a> {
    pub fn new(root: &'a Path, rel: &'a str) -> Self {
        Self { root, rel }
    }

    /// File `name` in it.
    pub fn file(&self, name: &str) -> PathBuf {
        let mut path = self.root.join(self.rel.trim_start_matches('/'));
        path.push(name);
        path
    }
}

/// How a cgroupfs file's text is obtained.
pub(super) trait Read {
    /// The whole text of file `name` in directory `dir`.
    fn text(&mut self, dir: Dir<'_>, name: &'static str) -> io::Result<&str>;

    /// The figures that change slowly and cost the kernel most to produce
    /// (inactive file pages from `memory.stat`, swap), given the `usage` just
    /// read: `read` reads them. A reader that keeps state between intervals
    /// may return a recent reading instead (see [`super::files`]).
    fn slow(
        &mut self,
        usage: u64,
        read: &mut dyn FnMut(&mut Self) -> io::Result<Slow>,
    ) -> io::Result<Slow>
    where
        Self: Sized,
    {
        let _ = usage;
        read(self)
    }
}

/// See [`Read::slow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slow {
    pub inactive_file: u64,
    pub swap: Option<u64>,
}

/// Opens, reads and closes the file each time.
#[derive(Default)]
pub(super) struct OneShot(String);

impl Read for OneShot {
    fn text(&mut self, dir: Dir<'_>, name: &'static str) -> io::Result<&str> {
        self.0 = fs::read_to_string(dir.file(name))?;
        Ok(&self.0)
    }
}

fn invalid(dir: Dir<'_>, name: &str, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", dir.file(name).display()),
    )
}

/// A single-value file's number (`max` is `u64::MAX`).
fn single(r: &mut impl Read, dir: Dir<'_>, name: &'static str) -> io::Result<u64> {
    let text = r.text(dir, name)?.trim();
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse()
        .map_err(|e| invalid(dir, name, format!("{text:?}: {e}")))
}

/// A `key value` line's value from a flat-keyed file (`cpu.stat`, `memory.stat`).
fn keyed(r: &mut impl Read, dir: Dir<'_>, name: &'static str, key: &str) -> io::Result<u64> {
    keyed_value(r.text(dir, name)?, key)
        .ok_or_else(|| invalid(dir, name, format!("no numeric {key:?}")))
}

/// Finds the line `key value` by searching for the key (memory.stat has ~40
/// lines; splitting each costs more than one substring search).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.match_indices(key).find_map(|(at, _)| {
        let line_start = at == 0 || text.as_bytes()[at - 1] == b'\n';
        let rest = text[at + key.len()..].strip_prefix(' ')?;
        let value = rest.split('\n').next()?.trim();
        if line_start {
            value.parse::<u64>().ok()
        } else {
            None
        }
    })
}

impl Hierarchy {
    /// Cumulative CPU time of a cgroup (and its descendants), nanoseconds.
    /// v2: `cpu.stat` `usage_usec` (µs resolution); v1: `cpuacct.usage` (ns).
    pub fn cpu_usage_ns(&self, tree: Tree, rel: &str) -> io::Result<u64> {
        self.cpu_usage_ns_with(&mut OneShot::default(), tree, rel)
    }

    pub(super) fn cpu_usage_ns_with(
        &self,
        r: &mut impl Read,
        tree: Tree,
        rel: &str,
    ) -> io::Result<u64> {
        if tree == Tree::V2
            && let Some(root) = self.v2.as_deref()
        {
            return keyed(r, Dir::new(root, rel), "cpu.stat", "usage_usec").map(|us| us * 1000);
        }
        let dir = v1_dir(self.v1_cpuacct.as_deref(), rel, "no cpuacct controller")?;
        single(r, dir, "cpuacct.usage")
    }

    /// Memory of a cgroup: from the v2 files where the memory controller is on the
    /// v2 tree, else from the v1 memory controller at the same relative path
    /// (hybrid hosts keep memory on v1).
    pub fn memory(&self, tree: Tree, rel: &str) -> io::Result<Memory> {
        self.memory_with(&mut OneShot::default(), tree, rel, None)
    }

    /// `usage`: the cgroup's usage in bytes where the caller has it from
    /// the memory controller's own counter (the file's figure); read from
    /// the file otherwise.
    pub(super) fn memory_with(
        &self,
        r: &mut impl Read,
        tree: Tree,
        rel: &str,
        usage: Option<u64>,
    ) -> io::Result<Memory> {
        if tree == Tree::V2
            && self.v2_memory
            && let Some(root) = self.v2.as_deref()
        {
            return memory_v2(r, Dir::new(root, rel), usage);
        }
        let dir = v1_dir(self.v1_memory.as_deref(), rel, "no memory controller")?;
        memory_v1(r, dir, self.v1_memsw, usage)
    }

    /// The node's memory: the v1 memory controller's root where there is one,
    /// else `/proc/meminfo` (the v2 root has no `memory.current`).
    pub fn node_memory(&self, proc_root: &Path) -> io::Result<Memory> {
        self.node_memory_with(&mut OneShot::default(), proc_root)
    }

    pub(super) fn node_memory_with(
        &self,
        r: &mut impl Read,
        proc_root: &Path,
    ) -> io::Result<Memory> {
        match &self.v1_memory {
            Some(root) => memory_v1(r, Dir::new(root, ""), self.v1_memsw, None),
            None => meminfo(r, proc_root),
        }
    }
}

fn v1_dir<'a>(root: Option<&'a Path>, rel: &'a str, missing: &'static str) -> io::Result<Dir<'a>> {
    root.map(|root| Dir::new(root, rel))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, missing))
}

fn memory_v2(r: &mut impl Read, dir: Dir<'_>, usage: Option<u64>) -> io::Result<Memory> {
    let usage = match usage {
        Some(usage) => usage,
        None => single(r, dir, "memory.current")?,
    };
    let slow = r.slow(usage, &mut |r| {
        Ok(Slow {
            inactive_file: keyed(r, dir, "memory.stat", "inactive_file")?,
            swap: single(r, dir, "memory.swap.current").ok(),
        })
    })?;
    Ok(Memory::from_usage(usage, slow.inactive_file, slow.swap))
}

fn memory_v1(
    r: &mut impl Read,
    dir: Dir<'_>,
    memsw: bool,
    usage: Option<u64>,
) -> io::Result<Memory> {
    let usage = match usage {
        Some(usage) => usage,
        None => single(r, dir, "memory.usage_in_bytes")?,
    };
    let slow = r.slow(usage, &mut |r| {
        let stat = r.text(dir, "memory.stat")?;
        let inactive_file = keyed_value(stat, "total_inactive_file").ok_or_else(|| {
            invalid(
                dir,
                "memory.stat",
                "no numeric \"total_inactive_file\"".into(),
            )
        })?;
        // With swap accounting (memsw) memory.stat has the swap in use
        // (what memory.memsw.usage_in_bytes counts beyond usage).
        let swap = if memsw {
            match keyed_value(stat, "total_swap") {
                Some(swap) => Some(swap),
                None => single(r, dir, "memory.memsw.usage_in_bytes")
                    .ok()
                    .map(|memsw| memsw.saturating_sub(usage)),
            }
        } else {
            None
        };
        Ok(Slow {
            inactive_file,
            swap,
        })
    })?;
    Ok(Memory::from_usage(usage, slow.inactive_file, slow.swap))
}

/// Node memory as cAdvisor computes it for a v2 root: usage = MemTotal − MemFree,
/// working set = usage − Inactive(file); swap = SwapTotal − SwapFree.
fn meminfo(r: &mut impl Read, proc_root: &Path) -> io::Result<Memory> {
    const NAME: &str = "meminfo";
    let dir = Dir::new(proc_root, "");
    let text = r.text(dir, NAME)?;
    let field = |name: &str| -> io::Result<u64> {
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kb = rest.trim().trim_end_matches("kB").trim();
                kb.parse::<u64>().ok().map(|kb| kb * 1024)
            })
            .ok_or_else(|| invalid(dir, NAME, format!("no {name}")))
    };
    let usage = field("MemTotal")?.saturating_sub(field("MemFree")?);
    let inactive = field("Inactive(file)")?;
    let swap = match (field("SwapTotal"), field("SwapFree")) {
        (Ok(total), Ok(free)) if total > 0 => Some(total.saturating_sub(free)),
        _ => None,
    };
    Ok(Memory::from_usage(usage, inactive, swap))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Writes a fixture file, making its directory.
    pub(in crate::cgroup) fn write(dir: &Path, name: &str, text: &str) {
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
        let swapped = root.join("memory/kubepods/swapped");
        write(&swapped, "memory.usage_in_bytes", "1000\n");
        write(
            &swapped,
            "memory.stat",
            "swap 300\ntotal_inactive_file 100\ntotal_swap 700\n",
        );
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
        // memory.stat's total_swap where it has one (no memsw file read).
        assert_eq!(
            h.memory(Tree::V1, "/kubepods/swapped").expect("mem"),
            Memory {
                usage: 1000,
                working_set: 900,
                swap: Some(700)
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
    fn keyed_values_match_whole_keys_at_line_starts() {
        let text =
            "total_inactive_file 7\ninactive_file 3\nx_inactive_file 9\nbad inactive_file 1\n";
        assert_eq!(keyed_value(text, "inactive_file"), Some(3));
        assert_eq!(keyed_value(text, "total_inactive_file"), Some(7));
        assert_eq!(
            keyed_value("inactive_file_x 1\ninactive_file 2", "inactive_file"),
            Some(2)
        );
        assert_eq!(keyed_value("inactive_file lots\n", "inactive_file"), None);
        assert_eq!(keyed_value("", "inactive_file"), None);
    }

    #[test]
    fn meminfo_node_memory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(
            tmp.path(),
            "meminfo",
            "MemTotal:       1000 kB\nMemFree:         200 kB\nInactive(file):  100 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        );
        let m = meminfo(&mut OneShot::default(), tmp.path()).expect("meminfo");
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
