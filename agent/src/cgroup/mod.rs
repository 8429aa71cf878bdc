//! The node's cgroup hierarchy: which layout it has (v2, hybrid, v1), the
//! cgroups in it and their pod/container identity, and the counters cgroupfs
//! keeps for each (CPU, memory working set, swap).
//!
//! The mount point is configurable: a DaemonSet mounts the host's
//! `/sys/fs/cgroup` somewhere of its own, and tests point at fixtures.
pub mod files;
pub mod identity;
pub mod stats;
pub mod watch;

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

pub use files::CounterFiles;
pub use identity::{Identity, QosClass, Runtime};
pub use watch::TreeWatch;

/// Errors reading the hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not a cgroup mount (no cgroup v2 root, no v1 cpuacct/memory controllers)")]
    NotCgroupfs { path: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the host mounts cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Unified hierarchy only (`cgroup.controllers` at the mount point).
    V2,
    /// v1 controllers beside a v2 hierarchy at `unified/` (systemd's hybrid mode).
    Hybrid,
    /// v1 controllers only.
    V1,
}

/// The directories of one host's cgroup hierarchy.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub version: Version,
    /// The v2 hierarchy's root, where there is one.
    pub v2: Option<PathBuf>,
    /// The v1 `cpuacct` controller's root, where there is one.
    pub v1_cpuacct: Option<PathBuf>,
    /// The v1 `memory` controller's root, where there is one.
    pub v1_memory: Option<PathBuf>,
    /// The memory controller is on the v2 tree (`memory` in its root's
    /// `cgroup.controllers`): read `memory.current`; else the v1 controller.
    pub v2_memory: bool,
    /// The v1 memory controller accounts swap (`memory.memsw.*` exist).
    pub v1_memsw: bool,
}

/// Which tree the pods were found in; cgroup ids (and so eBPF charges) identify
/// pods only in the v2 tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    V2,
    V1,
}

/// One cgroup directory.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// The directory's inode number: for the v2 tree, the cgroup id the kernel
    /// reports (`bpf_get_current_cgroup_id`).
    pub id: u64,
    /// Path relative to the tree's root, starting with `/` (`/` is the root).
    pub path: String,
    pub identity: Option<Identity>,
    /// Last modification of the directory; cgroupfs sets it at creation and
    /// when children come and go, so for a container's leaf cgroup it is
    /// close to its start.
    pub modified: Option<SystemTime>,
}

/// The result of walking the tree: cgroups, and paths that did not parse.
#[derive(Debug, Default)]
pub struct Scan {
    pub tree: Option<Tree>,
    pub cgroups: Vec<Cgroup>,
    pub errors: Vec<identity::Error>,
}

impl Scan {
    /// Cgroup id → index into `cgroups`.
    pub fn by_id(&self) -> HashMap<u64, usize> {
        self.cgroups
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect()
    }
}

/// Deepest directory level walked; the kubelet's tree is at most ~6 deep.
const MAX_DEPTH: usize = 16;

fn controller_root(mount: &Path, names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .map(|n| mount.join(n))
        .find(|p| p.join("cgroup.procs").is_file())
}

impl Hierarchy {
    /// Detects the layout under a cgroup mount point (normally `/sys/fs/cgroup`).
    pub fn detect(mount: &Path) -> Result<Self> {
        let v1_cpuacct = controller_root(mount, &["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]);
        let v1_memory = controller_root(mount, &["memory"]);
        let (version, v2) = if mount.join("cgroup.controllers").is_file() {
            (Version::V2, Some(mount.to_path_buf()))
        } else if mount.join("unified/cgroup.controllers").is_file() {
            (Version::Hybrid, Some(mount.join("unified")))
        } else if v1_cpuacct.is_some() || v1_memory.is_some() {
            (Version::V1, None)
        } else {
            return Err(Error::NotCgroupfs {
                path: mount.to_path_buf(),
            });
        };
        // Decided once: per-container probes for files that are never there
        // cost a syscall per container per interval.
        let v2_memory = v2.as_ref().is_some_and(|root| {
            fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|name| name == "memory"))
        });
        let v1_memsw = v1_memory
            .as_ref()
            .is_some_and(|root| root.join("memory.memsw.usage_in_bytes").is_file());
        Ok(Self {
            version,
            v2,
            v1_cpuacct,
            v1_memory,
            v2_memory,
            v1_memsw,
        })
    }

    fn tree_root(&self, tree: Tree) -> Option<&Path> {
        match tree {
            Tree::V2 => self.v2.as_deref(),
            Tree::V1 => self.v1_cpuacct.as_deref().or(self.v1_memory.as_deref()),
        }
    }

    /// Walks the tree that holds the kubelet's pods: the v2 tree when it has a
    /// pods root (or has no v1 alternative), else the v1 tree (a cgroupfs-driver
    /// kubelet on a hybrid host creates pods only in the v1 controllers).
    ///
    /// `base` limits the walk to one subtree (`/` for the whole host): the
    /// node's own cgroup where a node is nested in a larger hierarchy.
    pub fn scan(&self, base: &str) -> Result<Scan> {
        self.scan_watched(base, None)
    }

    /// [`Hierarchy::scan`], adding a watch on every directory walked (in both
    /// trees where both are walked), so the caller knows when to walk again.
    pub fn scan_watched(&self, base: &str, mut watch: Option<&mut TreeWatch>) -> Result<Scan> {
        let v2 = self
            .tree_root(Tree::V2)
            .map(|r| walk(r, base, Tree::V2, watch.as_deref_mut()))
            .transpose()?;
        if v2.as_ref().is_some_and(has_pods) {
            return Ok(v2.unwrap_or_default());
        }
        let v1 = self
            .tree_root(Tree::V1)
            .map(|r| walk(r, base, Tree::V1, watch))
            .transpose()?;
        Ok(match (v2, v1) {
            (_, Some(v1)) if has_pods(&v1) => v1,
            (Some(v2), _) => v2,
            (None, Some(v1)) => v1,
            (None, None) => Scan::default(),
        })
    }

    /// The directory of a cgroup (path relative to the tree root) in a tree.
    pub fn dir(&self, tree: Tree, rel: &str) -> Option<PathBuf> {
        self.tree_root(tree)
            .map(|root| root.join(rel.trim_start_matches('/')))
    }
}

fn has_pods(scan: &Scan) -> bool {
    scan.cgroups
        .iter()
        .any(|c| matches!(c.identity, Some(Identity::Pod { .. })))
}

fn walk(root: &Path, base: &str, tree: Tree, mut watch: Option<&mut TreeWatch>) -> Result<Scan> {
    let base = base.trim_end_matches('/');
    let start = root.join(base.trim_start_matches('/'));
    let meta = fs::metadata(&start).map_err(|source| Error::Io {
        path: start.clone(),
        source,
    })?;
    let mut scan = Scan {
        tree: Some(tree),
        cgroups: vec![Cgroup {
            id: meta.ino(),
            path: if base.is_empty() {
                "/".into()
            } else {
                base.to_string()
            },
            identity: None,
            modified: meta.modified().ok(),
        }],
        errors: Vec::new(),
    };
    let mut stack = vec![(start, base.to_string(), 0usize)];
    while let Some((dir, rel, depth)) = stack.pop() {
        // Before listing: a child made from now on is listed or reported.
        if let Some(watch) = watch.as_deref_mut() {
            watch.add(&dir);
        }
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed while we walked: it is simply gone.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) if depth == 0 => return Err(Error::Io { path: dir, source }),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = format!("{rel}/{name}");
            let identity = match identity::parse(&path) {
                Ok(id) => id,
                Err(e) => {
                    scan.errors.push(e);
                    None
                }
            };
            if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), path.clone(), depth + 1));
            }
            scan.cgroups.push(Cgroup {
                id: meta.ino(),
                path,
                identity,
                modified: meta.modified().ok(),
            });
        }
    }
    Ok(scan)
}
