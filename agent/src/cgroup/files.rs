//! Counter files kept open per cgroup and re-read in place.
//!
//! Opening a cgroupfs file resolves its path and sets up kernel state every
//! time; re-reading an open one at offset 0 (`pread`) only has the kernel
//! regenerate its text. On this host (v1 memory controller) open + read +
//! close of a leaf's `memory.stat` costs ~24 µs and a `pread` ~13 µs;
//! `memory.usage_in_bytes` 9 µs against 1.2 µs. The collector reads every
//! container every interval, so it keeps each sampled cgroup's files open while
//! the cgroup lives, keyed by cgroup id (a path re-created as a new cgroup
//! gets its files reopened), and reads into one reused buffer.
use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::Path,
    time::{Duration, Instant},
};

use super::{
    Hierarchy, Tree,
    stats::{Dir, Memory, Read, Slow},
};

/// Open counter files of the cgroups being sampled.
pub struct CounterFiles {
    /// By cgroup id (0: the node's figures outside cgroupfs).
    by_id: foldhash::HashMap<u64, Entry>,
    buf: Vec<u8>,
    stat_max_age: Duration,
}

/// The key of the node's files outside cgroupfs (no cgroup has id 0).
const NODE: u64 = 0;

impl Default for CounterFiles {
    fn default() -> Self {
        Self::with_stat_max_age(STAT_MAX_AGE)
    }
}

/// One cgroup's open files, by name (a cgroup reads `memory.stat` from either
/// the v2 or the v1 directory, never both, so names do not collide).
struct Entry {
    /// The cgroup's path, relative to its hierarchy's root.
    rel: String,
    files: Vec<(&'static str, File)>,
    /// The last reading of the slow figures.
    slow: Option<SlowReading>,
}

impl Entry {
    fn new(rel: &str) -> Self {
        Self {
            rel: rel.to_string(),
            files: Vec::new(),
            slow: None,
        }
    }
}

/// A reading of the slow figures and the usage read with it.
#[derive(Clone, Copy, Debug)]
struct SlowReading {
    slow: Slow,
    usage: u64,
    at: Instant,
}

/// When `memory.stat` (and swap) are read again: `memory.stat` is what the
/// kernel spends most on per container (~13 µs to generate against ~1 µs for
/// the usage). Usage is read every interval; the inactive file pages
/// subtracted from it, and swap, are re-read when usage has moved by more than
/// [`STAT_USAGE_SLACK`] (or 1 %) since they were (swapping out lowers usage),
/// and at least every `max_age` (default [`STAT_MAX_AGE`]: the kubelet's
/// cAdvisor reads all of them every 10–15 s). A container whose memory is
/// steady costs one small read per interval; one whose memory moves, all.
pub const STAT_MAX_AGE: Duration = Duration::from_secs(10);
/// See [`STAT_MAX_AGE`].
pub const STAT_USAGE_SLACK: u64 = 1 << 20;

impl SlowReading {
    fn still_good(&self, usage: u64, max_age: Duration) -> bool {
        let slack = STAT_USAGE_SLACK.max(self.usage / 100);
        usage.abs_diff(self.usage) <= slack && self.at.elapsed() < max_age
    }
}

/// A [`Read`] over one entry's files, opening a file on first use.
struct Reader<'a> {
    entry: &'a mut Entry,
    buf: &'a mut Vec<u8>,
    stat_max_age: Duration,
}

impl Read for Reader<'_> {
    fn text(&mut self, dir: Dir<'_>, name: &'static str) -> io::Result<&str> {
        let file = match self.entry.files.iter().position(|(n, _)| *n == name) {
            Some(i) => &self.entry.files[i].1,
            None => {
                let file = File::open(dir.file(name))?;
                self.entry.files.push((name, file));
                &self.entry.files[self.entry.files.len() - 1].1
            }
        };
        let len = read_from_start(file, self.buf)?;
        std::str::from_utf8(&self.buf[..len]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.file(name).display()),
            )
        })
    }

    fn slow(
        &mut self,
        usage: u64,
        read: &mut dyn FnMut(&mut Self) -> io::Result<Slow>,
    ) -> io::Result<Slow> {
        if let Some(kept) = self.entry.slow
            && kept.still_good(usage, self.stat_max_age)
        {
            return Ok(kept.slow);
        }
        let slow = read(self)?;
        self.entry.slow = Some(SlowReading {
            slow,
            usage,
            at: Instant::now(),
        });
        Ok(slow)
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
    /// `memory.stat` re-read at least every `max_age` (zero: every read).
    pub fn with_stat_max_age(max_age: Duration) -> Self {
        Self {
            by_id: foldhash::HashMap::default(),
            buf: Vec::new(),
            stat_max_age: max_age,
        }
    }

    /// Runs `read` over the files of cgroup `id` at `rel`; on failure the
    /// cgroup's files are closed (it most likely went away; a later call
    /// reopens them).
    fn with<T>(
        &mut self,
        id: u64,
        rel: &str,
        read: impl FnOnce(&mut Reader<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        let entry = self.by_id.entry(id).or_insert_with(|| Entry::new(rel));
        if entry.rel != rel {
            // The id names another directory now (cgroupfs never reuses
            // one, but other file systems reuse inode numbers): the old
            // files are stale.
            *entry = Entry::new(rel);
        }
        let result = read(&mut Reader {
            entry,
            buf: &mut self.buf,
            stat_max_age: self.stat_max_age,
        });
        if result.is_err() {
            self.by_id.remove(&id);
        }
        result
    }

    /// [`Hierarchy::memory`] of cgroup `id` at `rel`, through kept-open files.
    pub fn memory(&mut self, h: &Hierarchy, tree: Tree, id: u64, rel: &str) -> io::Result<Memory> {
        self.with(id, rel, |r| h.memory_with(r, tree, rel, None))
    }

    /// As [`CounterFiles::memory`], with the usage (bytes) read elsewhere
    /// from the same counter: only the slow figures come from the files,
    /// on their schedule.
    pub fn memory_with_usage(
        &mut self,
        h: &Hierarchy,
        tree: Tree,
        id: u64,
        rel: &str,
        usage: u64,
    ) -> io::Result<Memory> {
        self.with(id, rel, |r| h.memory_with(r, tree, rel, Some(usage)))
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
        self.with(NODE, "", |r| h.node_memory_with(r, proc_root))
    }

    /// Closes the files of cgroups for which `live(rel, id)` is false.
    pub fn retain(&mut self, mut live: impl FnMut(&str, u64) -> bool) {
        self.by_id
            .retain(|&id, entry| id == NODE || live(&entry.rel, id));
    }

    /// How many cgroups have files open.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no files are open.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The process's open-file limit (`RLIMIT_NOFILE`) before and after
/// [`raise_open_file_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit found.
    pub was: libc::rlim_t,
    /// The soft limit now.
    pub soft: libc::rlim_t,
    /// The hard limit, which an unprivileged process may raise the soft one to.
    pub hard: libc::rlim_t,
}

/// Raises the soft open-file limit to the hard one.
///
/// [`CounterFiles`] keeps three or four files open per container (four per
/// pod with its sandbox), so a node of 110 pods needs over a thousand
/// descriptors, besides sockets and the eBPF maps. Container runtimes hand
/// containers a soft limit of 1024 (containerd 2 no longer sets
/// `LimitNOFILE`, so the systemd default applies) with a far higher hard one.
/// Go programs raise their soft limit at start; Rust's runtime does not, so
/// the agent does it here, before it opens anything. Nothing the agent runs
/// uses `select(2)`, whose descriptors must stay below 1024 (the reason the
/// soft default is low).
pub fn raise_open_file_limit() -> io::Result<OpenFileLimit> {
    let (was, hard) = open_file_limit()?;
    if was < hard {
        set_open_file_limit(hard, hard)?;
    }
    let (soft, hard) = open_file_limit()?;
    Ok(OpenFileLimit { was, soft, hard })
}

/// The soft and hard `RLIMIT_NOFILE`.
fn open_file_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set_open_file_limit(soft: libc::rlim_t, hard: libc::rlim_t) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the rlimit we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

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

        // Gone: an error, and its files are closed; the older cgroups'
        // stay open until a walk no longer sees them.
        fs::remove_dir_all(&dir).expect("rm -r");
        assert!(files.memory(&h, Tree::V2, 9, "/a").is_err());
        assert_eq!(files.len(), 2);
        files.retain(|rel, id| rel == "/a" && id == 8);
        assert_eq!(files.len(), 1);
        files.retain(|_, _| false);
        assert!(files.is_empty());
    }

    /// Rewrites a kept-open file in place (as cgroupfs values change).
    fn rewrite(path: &Path, text: &str) {
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .expect("rewrite");
    }

    #[test]
    fn memory_stat_is_read_again_when_usage_moves_or_the_reading_ages() {
        const MIB: u64 = 1 << 20;
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        write(root, "cgroup.controllers", "memory\n");
        let dir = root.join("a");
        write(&dir, "memory.current", &format!("{}\n", 100 * MIB));
        write(
            &dir,
            "memory.stat",
            &format!("inactive_file {}\n", 40 * MIB),
        );
        let h = Hierarchy::detect(root).expect("detect");
        let mut files = CounterFiles::default();
        let ws = |files: &mut CounterFiles| {
            files
                .memory(&h, Tree::V2, 7, "/a")
                .expect("mem")
                .working_set
                / MIB
        };
        assert_eq!(ws(&mut files), 60);

        // Pages aged onto the inactive list, usage within the slack: the
        // reading of a moment ago stands (usage itself is always fresh).
        rewrite(
            &dir.join("memory.stat"),
            &format!("inactive_file {}\n", 50 * MIB),
        );
        rewrite(
            &dir.join("memory.current"),
            &format!("{}\n", 100 * MIB + 4096),
        );
        assert_eq!(ws(&mut files), 60);

        // Usage moved by more than the slack: memory.stat is read again.
        rewrite(&dir.join("memory.current"), &format!("{}\n", 110 * MIB));
        assert_eq!(ws(&mut files), 60, "110 MiB - 50 MiB inactive");

        // Where readings may not age at all, every read reads memory.stat.
        let mut fresh = CounterFiles::with_stat_max_age(Duration::ZERO);
        assert_eq!(ws(&mut fresh), 60);
        rewrite(
            &dir.join("memory.stat"),
            &format!("inactive_file {}\n", 30 * MIB),
        );
        assert_eq!(ws(&mut fresh), 80);
        // ... while the default one still holds its recent reading.
        assert_eq!(ws(&mut files), 60);
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let (_, hard) = open_file_limit().expect("getrlimit");
        // As a container runtime leaves it (the test harness may have raised
        // it already; lowering the soft limit needs no privilege).
        let low = hard.min(1024);
        set_open_file_limit(low, hard).expect("lower the soft limit");
        let limit = raise_open_file_limit().expect("raise");
        assert_eq!(
            limit,
            OpenFileLimit {
                was: low,
                soft: hard,
                hard
            }
        );
        assert_eq!(open_file_limit().expect("getrlimit"), (hard, hard));
        // Already raised: nothing to do, and no error.
        assert_eq!(raise_open_file_limit().expect("again").was, hard);
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
