//! Knowing whether the cgroup tree changed without walking it again.
//!
//! Walking the kubelet's tree every interval costs a directory read and a stat
//! per cgroup; it rarely changes. Every directory a walk visits gets an inotify
//! watch (added before the directory is listed, so a child made during the walk
//! is either listed or reported); `mkdir` and `rmdir` of a cgroup report an
//! event on its parent. Any event, a lost event queue, a watch that could not
//! be added (limits) or a walk that missed part of the tree makes
//! [`TreeWatch::changed`] true, and the caller walks the tree again with a
//! fresh watch.
use std::{
    collections::BTreeSet,
    io,
    os::fd::OwnedFd,
    path::Path,
    sync::{Mutex, PoisonError},
};

use rustix::{
    fs::inotify::{self, CreateFlags, WatchFlags},
    io::Errno,
};
use tracing::warn;

/// Watches on every directory of one walk.
pub struct TreeWatch {
    /// The inotify instance; `None` once the watch is incomplete (a watch
    /// could not be added, or the walk missed part of the tree). Changes may
    /// then go unseen, so [`TreeWatch::changed`] is true every time and the
    /// caller walks every interval, as without a watch; the watches already
    /// added decide nothing more, and closing the instance gives them back at
    /// once. The limit is per user: a DaemonSet agent is the host's root, so
    /// holding the rest of the budget until the next walk would starve the
    /// kubelet, containerd and systemd of watches too.
    fd: Option<OwnedFd>,
    watches: usize,
}

/// Errnos of failed watches already warned about: once per process each, as
/// a watch that cannot be added fails again at every walk.
static WARNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Whether `errno` is reported for the first time in this process.
fn first_report(errno: Errno) -> bool {
    WARNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(errno.raw_os_error())
}

/// What a failed `inotify_add_watch` means and how to fix it, for the
/// operator reading the warning.
fn add_watch_failure(errno: Errno) -> String {
    let cause = match errno {
        Errno::NOSPC => {
            "ENOSPC: fs.inotify.max_user_watches is exhausted (the limit counts every \
             watch of the user, the host's root, on the whole host); raise it, e.g. \
             `sysctl -w fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d to keep it)"
        }
        Errno::NOMEM => "ENOMEM: the kernel could not allocate the watch",
        _ => "unexpected error",
    };
    format!(
        "could not watch a cgroup directory ({cause}): the agent walks the whole cgroup \
         tree every interval instead of when it changes, which costs CPU at every interval"
    )
}

/// What a failed `inotify_init1` means and how to fix it.
fn init_failure(errno: Errno) -> io::Error {
    let cause = match errno {
        Errno::MFILE => {
            "EMFILE: fs.inotify.max_user_instances is exhausted (the limit counts every \
             inotify instance of the user on the whole host), or the agent's open-file \
             limit; raise fs.inotify.max_user_instances, e.g. \
             `sysctl -w fs.inotify.max_user_instances=8192`"
        }
        Errno::NFILE => "ENFILE: the host's open-file limit (fs.file-max) is reached",
        Errno::NOMEM => "ENOMEM: the kernel could not allocate the instance",
        _ => return io::Error::from(errno),
    };
    io::Error::new(
        io::Error::from(errno).kind(),
        format!("inotify_init1: {cause}"),
    )
}

impl TreeWatch {
    /// A watch with no directories yet.
    pub fn new() -> io::Result<Self> {
        let fd =
            inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).map_err(init_failure)?;
        Ok(Self {
            fd: Some(fd),
            watches: 0,
        })
    }

    /// Watches `dir` for subdirectories coming and going (and for itself being
    /// removed or moved). A watch that cannot be added makes this one
    /// incomplete (warned about once per process and errno).
    pub fn add(&mut self, dir: &Path) {
        let Some(fd) = &self.fd else {
            return;
        };
        let flags = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        match inotify::add_watch(fd, dir, flags) {
            Ok(_) => self.watches += 1,
            // Removed before we got to it: its parent's watch reports that.
            Err(Errno::NOENT) => {}
            Err(errno) => {
                if first_report(errno) {
                    warn!(
                        dir = %dir.display(),
                        error = %errno,
                        watches = self.watches,
                        "{}",
                        add_watch_failure(errno)
                    );
                }
                self.set_incomplete();
            }
        }
    }

    /// The walk missed part of the tree (or a watch failed): from now on
    /// report a change every time, and release the watches added so far.
    pub fn set_incomplete(&mut self) {
        self.fd = None;
        self.watches = 0;
    }

    /// Whether the watch is incomplete (see [`TreeWatch::set_incomplete`]).
    pub fn is_incomplete(&self) -> bool {
        self.fd.is_none()
    }

    /// Directories watched.
    pub fn len(&self) -> usize {
        self.watches
    }

    /// Whether no directory is watched.
    pub fn is_empty(&self) -> bool {
        self.watches == 0
    }

    /// Whether anything changed since the watch was set up (or since the last
    /// call that returned false). Drains the pending events.
    pub fn changed(&mut self) -> bool {
        let Some(fd) = &self.fd else {
            return true;
        };
        let mut buf = [0u8; 4096];
        let mut changed = false;
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => return true,
                Ok(_) => changed = true,
                Err(Errno::AGAIN) => return changed,
                Err(Errno::INTR) => {}
                Err(_) => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_subdirectories_coming_and_going_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("a/b"));
        std::fs::create_dir_all(&b).expect("mkdir");
        let mut w = TreeWatch::new().expect("inotify");
        w.add(tmp.path());
        w.add(&a);
        w.add(&b);
        assert_eq!(w.len(), 3);
        assert!(!w.changed(), "nothing happened yet");
        std::fs::create_dir(b.join("c")).expect("mkdir c");
        assert!(w.changed(), "a new grandchild's directory");
        assert!(!w.changed(), "drained");
        std::fs::remove_dir(b.join("c")).expect("rmdir c");
        assert!(w.changed(), "a removed directory");
        w.add(&tmp.path().join("missing"));
        assert!(!w.changed(), "a directory already gone is not a failure");
    }

    #[test]
    fn a_failed_watch_releases_the_others_and_reports_changes_from_then_on() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("not-a-directory");
        std::fs::write(&file, "").expect("write");
        let mut w = TreeWatch::new().expect("inotify");
        w.add(tmp.path());
        assert_eq!(w.len(), 1);
        assert!(!w.changed());
        // ONLYDIR on a file: ENOTDIR, as good a failure as ENOSPC here.
        w.add(&file);
        assert!(w.is_incomplete());
        assert!(w.fd.is_none(), "the instance, and so its watches, closed");
        assert_eq!(w.len(), 0);
        assert!(w.changed(), "changes may go unseen: report one");
        assert!(w.changed(), "... every time, not only once");
        w.add(tmp.path());
        assert_eq!(w.len(), 0, "no watches added once incomplete");
    }

    #[test]
    fn failures_are_reported_once_each_with_their_remedy() {
        // An errno no other test makes.
        assert!(first_report(Errno::TOOBIG));
        assert!(
            !first_report(Errno::TOOBIG),
            "the second time is not reported"
        );
        assert!(first_report(Errno::XDEV), "another condition is");
        let nospc = add_watch_failure(Errno::NOSPC);
        assert!(nospc.contains("ENOSPC"), "{nospc}");
        assert!(nospc.contains("raise it"), "{nospc}");
        assert!(nospc.contains("fs.inotify.max_user_watches"), "{nospc}");
        assert!(nospc.contains("every interval"), "{nospc}");
        let mfile = init_failure(Errno::MFILE).to_string();
        assert!(mfile.contains("fs.inotify.max_user_instances"), "{mfile}");
        assert_eq!(
            init_failure(Errno::MFILE).raw_os_error(),
            None,
            "a message of its own"
        );
        assert_eq!(
            init_failure(Errno::INVAL).raw_os_error(),
            Some(libc::EINVAL),
            "other errors as they are"
        );
    }
}
