//! Counter files kept open per cgroup and re-read in place.
//!
//! Opening a cgroupfs file resolves its path and sets up kernel state every
//! time; re-reading an open one at offset 0 (`pread`) only has the kernel
//! regenerate its text. On this host (v1 memory controller) open + read +
//! close of a leaf's `memory.stat` costs ~24 µs and a `pread` ~13 µs;
//! `memory.usage_in_bytes` 9 µs against 1.2 µs. The collector reads every
//! container every interval, so it keeps each sampled cgroup's files open while
//! the cgroup lives, keyed by path and cgroup id (a path re-created as a new
//! cgroup gets its files reopened), and reads into one reused buffer.
use std::{collections::HashMap, fs::File, io, os::unix::fs::FileExt, path::Path};

use super::{
    Hierarchy, Tree,
    stats::{Memory, Read},
};

/// Open counter files of the cgroups being sampled.
#[derive(Default)]
pub struct CounterFiles {
    by_path: HashMap<String, Entry>,
    buf: Vec<u8>,
}

/// One cgroup's open files, by name (a cgroup reads `memory.stat` from either
/// the v2 or the v1 directory, never both, so names do not collide).
struct Entry {
    id: u64,
    files: Vec<(&'static str, File)>,
}

/// A [`Read`] over one entry's files, opening a file on first use.
struct Kept<'a> {
    entry: &'a mut Entry,
    buf: &'a mut Vec<u8>,
}

impl Read for Kept<'_> {
    fn text(&mut self, dir: &Path, name: &'static str) -> io::Result<&str> {
        let file = match self.entry.files.iter().position(|(n, _)| *n == name) {
            Some(i) => &self.entry.files[i].1,
            None => {
                let file = File::open(dir.join(name))?;
                self.entry.files.push((name, file));
                &self.entry.files[self.entry.files.len() - 1].1
            }
        };
        let len = read_from_start(file, self.buf)?;
        std::str::from_utf8(&self.buf[..len]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(name).display()),
            )
        })
    }
}

/// Reads the whole file from offset 0 into the start of `buf` and returns its
/// length. cgroupfs (seq_file) files regenerate their text on a read at offset
/// 0. `buf` only grows (zero-filled once), so reads do not clear it.
fn read_from_start(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut len = 0;
    loop {
        if buf.len() - len < 1024 {
            buf.resize(buf.len() + 4096, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl CounterFiles {
    /// Runs `read` over the files of cgroup `id` at `rel`; on failure the
    /// cgroup's files are closed (it most likely went away; a later call
    /// reopens them).
    fn with<T>(
        &mut self,
        id: u64,
        rel: &str,
        read: impl FnOnce(&mut Kept<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        // Looked up before inserting: no key allocated in the steady state.
        if !self.by_path.contains_key(rel) {
            self.by_path.insert(
                rel.to_string(),
                Entry {
                    id,
                    files: Vec::new(),
                },
            );
        }
        let Some(entry) = self.by_path.get_mut(rel) else {
            return Err(io::Error::other(
                "counter files: entry just inserted is missing",
            ));
        };
        if entry.id != id {
            // The path now names another cgroup: its old files are stale.
            *entry = Entry {
                id,
                files: Vec::new(),
            };
        }
        let result = read(&mut Kept {
            entry,
            buf: &mut self.buf,
        });
        if result.is_err() {
            self.by_path.remove(rel);
        }
        result
    }

    /// [`Hierarchy::memory`] of cgroup `id` at `rel`, through kept-open files.
    pub fn memory(&mut self, h: &Hierarchy, tree: Tree, id: u64, rel: &str) -> io::Result<Memory> {
        self.with(id, rel, |r| h.memory_with(r, tree, rel))
    }

    /// [`Hierarchy::cpu_usage_ns`] of cgroup `id` at `rel`, through kept-open files.
    pub fn cpu_usage_ns(
        &mut self,
        h: &Hierarchy,
        tree: Tree,
        id: u64,
        rel: &str,
    ) -> io::Result<u64> {
        self.with(id, rel, |r| h.cpu_usage_ns_with(r, tree, rel))
    }

    /// [`Hierarchy::node_memory`], through kept-open files.
    pub fn node_memory(&mut self, h: &Hierarchy, proc_root: &Path) -> io::Result<Memory> {
        // Not a cgroup path: cannot collide with one (they start with `/`).
        const NODE: &str = "node";
        self.with(0, NODE, |r| h.node_memory_with(r, proc_root))
    }

    /// Closes the files of cgroups for which `live(rel, id)` is false.
    pub fn retain(&mut self, mut live: impl FnMut(&str, u64) -> bool) {
        self.by_path
            .retain(|rel, entry| rel == "node" || live(rel, entry.id));
    }

    /// How many cgroups have files open.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether no files are open.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::stats::tests::write;

    #[test]
    fn kept_files_see_new_values_and_a_recreated_path_is_reopened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "cpu memory\n");
        write(root, "cgroup.procs", "");
        let dir = root.join("a");
        write(&dir, "cpu.stat", "usage_usec 1\n");
        write(&dir, "memory.current", "100\n");
        write(&dir, "memory.stat", "inactive_file 40\n");
        let h = Hierarchy::detect(root).expect("detect");
        let mut files = CounterFiles::default();
        assert_eq!(
            files.cpu_usage_ns(&h, Tree::V2, 7, "/a").expect("cpu"),
            1000
        );
        assert_eq!(
            files
                .memory(&h, Tree::V2, 7, "/a")
                .expect("mem")
                .working_set,
            60
        );
        assert_eq!(files.len(), 1);

        // Rewritten in place (same inode, as cgroupfs values change): seen.
        // A longer text than before must be read whole.
        let long = format!("{}usage_usec 123456789\n", "x 1\n".repeat(2000));
        fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cpu.stat"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, long.as_bytes()))
            .expect("rewrite");
        assert_eq!(
            files.cpu_usage_ns(&h, Tree::V2, 7, "/a").expect("cpu"),
            123_456_789_000
        );

        // Replaced by a new file under the same name with another cgroup id:
        // the kept descriptor is dropped and the new file read.
        fs::remove_file(dir.join("memory.current")).expect("rm");
        write(&dir, "memory.current", "500\n");
        assert_eq!(files.memory(&h, Tree::V2, 8, "/a").expect("mem").usage, 500);

        // Gone: an error, and its files are closed.
        fs::remove_dir_all(&dir).expect("rm -r");
        assert!(files.memory(&h, Tree::V2, 9, "/a").is_err());
        assert!(files.is_empty());
    }

    #[test]
    fn retain_closes_the_files_of_gone_cgroups() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "cpu\n");
        for name in ["a", "b"] {
            write(&root.join(name), "cpu.stat", "usage_usec 5\n");
        }
        let h = Hierarchy::detect(root).expect("detect");
        let mut files = CounterFiles::default();
        files.cpu_usage_ns(&h, Tree::V2, 1, "/a").expect("a");
        files.cpu_usage_ns(&h, Tree::V2, 2, "/b").expect("b");
        files.retain(|rel, id| rel == "/a" && id == 1);
        assert_eq!(files.len(), 1);
    }
}
