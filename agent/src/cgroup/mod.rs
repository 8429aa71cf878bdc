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

/// Something a walk met that it skipped; the rest of the walk stands.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A path in the kubelet's tree that did not parse.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// A directory that could not be listed, or a cgroup that could not be
    /// looked at (other than one removed during the walk): the walk missed
    /// part of the tree, and a pod may be missing from it.
    #[error("cgroup tree walk incomplete (walked again at the next interval): {0}")]
    Walk(#[source] Error),
}

/// The result of walking the tree: cgroups, and what was skipped.
#[derive(Debug, Default)]
pub struct Scan {
    pub tree: Option<Tree>,
    pub cgroups: Vec<Cgroup>,
    pub errors: Vec<ScanError>,
}

impl Scan {
    /// Whether the walk saw the whole tree: no directory listing or cgroup
    /// lookup failed. An incomplete walk's missing cgroups may still exist;
    /// the watch passed to it reports a change at every check, so the
    /// caller walks again.
    pub fn is_complete(&self) -> bool {
        !self.errors.iter().any(|e| matches!(e, ScanError::Walk(_)))
    }

    /// Cgroup id → index into `cgroups`.
    pub fn by_id(&self) -> foldhash::HashMap<u64, usize> {
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

/// Records a failure to list a directory or look at a cgroup. Other than
/// ENOENT (a cgroup removed while we walked, which its parent's watch reports)
/// it means part of the tree went unseen: the scan says so, and the watch is
/// made to report a change, so the caller walks again at the next interval
/// rather than leaving the missed pods out until something else changes the
/// tree.
fn missed(scan: &mut Scan, watch: Option<&mut TreeWatch>, path: PathBuf, source: io::Error) {
    if source.kind() == io::ErrorKind::NotFound {
        return;
    }
    if let Some(watch) = watch {
        watch.set_incomplete();
    }
    scan.errors
        .push(ScanError::Walk(Error::Io { path, source }));
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
            Err(source) if depth == 0 && source.kind() != io::ErrorKind::NotFound => {
                return Err(Error::Io { path: dir, source });
            }
            Err(source) => {
                missed(&mut scan, watch.as_deref_mut(), dir, source);
                continue;
            }
        };
        for entry in entries {
            // A listing cut short is as incomplete as one that failed.
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    missed(&mut scan, watch.as_deref_mut(), dir.clone(), source);
                    break;
                }
            };
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(source) => {
                    missed(&mut scan, watch.as_deref_mut(), entry.path(), source);
                    continue;
                }
            };
            if !ft.is_dir() {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(source) => {
                    missed(&mut scan, watch.as_deref_mut(), entry.path(), source);
                    continue;
                }
            };
            let name = entry.file_name();
            // Not a name the kubelet or a runtime makes.
            let Some(name) = name.to_str() else { continue };
            let path = format!("{rel}/{name}");
            let identity = match identity::parse(&path) {
                Ok(id) => id,
                Err(e) => {
                    scan.errors.push(e.into());
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cgroup::stats::tests::write;

    const UID_A: &str = "0c9a4e5e-2b1f-4f7a-9c55-0a1b2c3d4e5f";
    const UID_B: &str = "1d8b5f6f-3c2a-4a8b-8d66-1b2c3d4e5f60";
    const UID_C: &str = "2e7c6a7a-4d3b-4b9c-9e77-2c3d4e5f6071";

    fn container(qos: &str, uid: &str, cid: char) -> String {
        let pod = uid.replace('-', "_");
        format!(
            "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{pod}.slice/cri-containerd-{}.scope",
            cid.to_string().repeat(64)
        )
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn containers(scan: &Scan) -> Vec<&str> {
        let mut pods: Vec<&str> = scan
            .cgroups
            .iter()
            .filter_map(|c| match &c.identity {
                Some(Identity::Container { pod_uid, .. }) => Some(pod_uid.as_str()),
                _ => None,
            })
            .collect();
        pods.sort_unstable();
        pods
    }

    fn walk_errors(scan: &Scan) -> Vec<String> {
        scan.errors
            .iter()
            .filter_map(|e| match e {
                ScanError::Walk(Error::Io { path, .. }) => Some(path.display().to_string()),
                _ => None,
            })
            .collect()
    }

    /// Permissions are what make a directory unreadable here; root has them
    /// overridden. Switching this thread's filesystem uid away from 0 drops
    /// that override for this thread only (until dropped).
    struct Unprivileged {
        was_root: bool,
    }

    impl Unprivileged {
        /// `None` where root cannot switch (a user namespace without uid 65534).
        fn enter() -> Option<Self> {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                return Some(Self { was_root: false });
            }
            // SAFETY: setfsuid changes only this thread's filesystem uid;
            // `u32::MAX` (-1) is invalid, so that call only reports the current one.
            let now = unsafe {
                libc::setfsuid(65534);
                libc::setfsuid(u32::MAX)
            };
            (now == 65534).then_some(Self { was_root: true })
        }
    }

    impl Drop for Unprivileged {
        fn drop(&mut self) {
            if self.was_root {
                // SAFETY: as in `enter`; back to root's filesystem uid.
                unsafe { libc::setfsuid(0) };
            }
        }
    }

    #[test]
    fn walk_failures_other_than_removal_make_the_walk_incomplete() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        chmod(root, 0o755);
        write(root, "cgroup.controllers", "cpu memory\n");
        write(root, "cgroup.procs", "");
        for (qos, uid, cid) in [
            ("burstable", UID_A, 'a'),
            ("besteffort", UID_B, 'b'),
            ("burstable", UID_C, 'c'),
        ] {
            let dir = root.join(container(qos, uid, cid).trim_start_matches('/'));
            fs::create_dir_all(dir).expect("mkdir");
        }
        let h = Hierarchy::detect(root).expect("detect");
        let pod_c = root.join(
            container("burstable", UID_C, 'c')
                .trim_start_matches('/')
                .rsplit_once('/')
                .expect("pod dir")
                .0,
        );
        let besteffort = root.join("kubepods.slice/kubepods-besteffort.slice");

        // Pod C's directory lists but its container cannot be looked at.
        chmod(&pod_c, 0o444);
        let (scan, mut watch) = {
            let Some(_unprivileged) = Unprivileged::enter() else {
                eprintln!("skipped: cannot drop root's permission override here");
                chmod(&pod_c, 0o755);
                return;
            };
            let mut watch = TreeWatch::new().expect("inotify");
            (h.scan_watched("/", Some(&mut watch)), watch)
        };
        chmod(&pod_c, 0o755);
        let scan = scan.expect("scan");
        assert_eq!(
            containers(&scan),
            [UID_A, UID_B],
            "the rest of the walk stands"
        );
        assert!(!scan.is_complete());
        let missed = walk_errors(&scan);
        assert_eq!(missed.len(), 1, "{missed:?}");
        assert!(missed[0].contains("cri-containerd-ccc"), "{missed:?}");
        assert!(watch.is_incomplete(), "the caller must walk again");
        assert!(watch.changed());

        // A directory that cannot be listed below the top.
        chmod(&besteffort, 0o000);
        let scan = {
            let Some(_unprivileged) = Unprivileged::enter() else {
                unreachable!("entered above");
            };
            h.scan("/")
        };
        chmod(&besteffort, 0o755);
        let scan = scan.expect("scan");
        assert_eq!(containers(&scan), [UID_A, UID_C]);
        assert_eq!(
            walk_errors(&scan),
            [besteffort.display().to_string()],
            "{:?}",
            scan.errors
        );
        let message = scan
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            message.iter().any(|m| m.contains("walked again")),
            "{message:?}"
        );

        // Readable again: a complete walk, and a watch that waits for changes.
        let mut watch = TreeWatch::new().expect("inotify");
        let scan = h.scan_watched("/", Some(&mut watch)).expect("scan");
        assert_eq!(containers(&scan), [UID_A, UID_B, UID_C]);
        assert!(scan.is_complete(), "{:?}", scan.errors);
        assert!(!watch.changed());
    }
}
