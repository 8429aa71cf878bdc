//! A real node's own cgroup, in every hierarchy of the host: the kubelet's
//! `cgroupRoot` (its `kubepods` tree goes below it) and, in `runtime`, the
//! node's containerd (with every shim it starts) and kubelet. One
//! `cgroup.kill` of it stops all of the node's processes, containers
//! included, and removing it removes everything the kubelet made.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The host's cgroup mount.
pub const CGROUP_FS: &str = "/sys/fs/cgroup";

/// Every hierarchy mounted under `root`: the v2 one (`root` itself on a
/// unified host, `root/unified` on a hybrid one) and each v1 controller.
pub fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut all: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        // A mounted hierarchy has cgroup.procs at its root; a controller
        // alias (`cpu,cpuacct` symlinks) is a symlink, not a directory.
        .filter(|p| {
            p.join("cgroup.procs").exists()
                && fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir())
        })
        .collect();
    all.sort();
    all
}

/// The v2 hierarchy under `root`.
pub fn v2_root(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").exists())
}

/// `/<name>` made in every hierarchy; killed and removed on drop.
#[derive(Debug)]
pub struct NodeCgroup {
    /// Relative to each hierarchy's root, with a leading `/`.
    pub path: String,
    hierarchies: Vec<PathBuf>,
    v2: PathBuf,
}

/// Where the node's runtime and kubelet run, below the node's cgroup.
pub const RUNTIME: &str = "runtime";

impl NodeCgroup {
    pub fn create(name: &str) -> Result<Self> {
        let root = Path::new(CGROUP_FS);
        let hierarchies = hierarchies(root);
        let v2 = v2_root(root).context("no cgroup v2 hierarchy")?;
        let cg = Self {
            path: format!("/{name}"),
            hierarchies,
            v2,
        };
        for h in &cg.hierarchies {
            for rel in [name.to_string(), format!("{name}/{RUNTIME}")] {
                let dir = h.join(&rel);
                fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                // A new v1 cpuset starts with no CPUs and no memory nodes:
                // nothing could join it, or anything below it.
                if h.join("cpuset.cpus").exists() {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let parent = dir.parent().unwrap_or(h).join(file);
                        let value = fs::read_to_string(&parent)
                            .with_context(|| format!("reading {}", parent.display()))?;
                        fs::write(dir.join(file), value.trim())
                            .with_context(|| format!("writing {}", dir.join(file).display()))?;
                    }
                }
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process of the runtime joins, one per
    /// hierarchy.
    pub fn runtime_procs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| {
                h.join(self.path.trim_start_matches('/'))
                    .join(RUNTIME)
                    .join("cgroup.procs")
            })
            .collect()
    }

    /// The v2 directory of `rel` below the node's cgroup (`""`: the node's).
    pub fn v2_dir(&self, rel: &str) -> PathBuf {
        self.v2
            .join(self.path.trim_start_matches('/'))
            .join(rel.trim_start_matches('/'))
    }

    /// Kills every process of the node (runtime, kubelet, containers).
    pub fn kill(&self) {
        let _ = fs::write(self.v2_dir("").join("cgroup.kill"), "1");
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        self.kill();
        for h in &self.hierarchies {
            if let Err(e) = remove_tree(&h.join(self.path.trim_start_matches('/'))) {
                eprintln!("e2e: {e:#}");
            }
        }
    }
}

/// Removes a cgroup directory and everything below it, deepest first,
/// waiting (up to 10 s) for killed processes to leave.
pub fn remove_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut last = None;
    for _ in 0..1000 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "removing cgroup {}: {}",
        dir.display(),
        last.map_or_else(String::new, |e| e.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_of_a_hybrid_and_a_unified_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        for c in ["cpu", "memory", "unified"] {
            fs::create_dir(dir.path().join(c)).expect("join");
            fs::write(dir.path().join(c).join("cgroup.procs"), "").expect("join");
        }
        fs::write(dir.path().join("unified/cgroup.controllers"), "").expect("join");
        std::os::unix::fs::symlink("cpu", dir.path().join("cpu,cpuacct")).expect("join");
        let names: Vec<String> = hierarchies(dir.path())
            .iter()
            .map(|p| {
                p.file_name()
                    .expect("file_name")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["cpu", "memory", "unified"]);
        assert_eq!(v2_root(dir.path()), Some(dir.path().join("unified")));

        fs::write(dir.path().join("cgroup.controllers"), "").expect("join");
        assert_eq!(hierarchies(dir.path()), [dir.path().to_path_buf()]);
        assert_eq!(v2_root(dir.path()), Some(dir.path().to_path_buf()));
    }
}
