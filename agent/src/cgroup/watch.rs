//! Knowing whether the cgroup tree changed without walking it again.
//!
//! Walking the kubelet's tree every interval costs a directory read and a stat
//! per cgroup; it rarely changes. Every directory a walk visits gets an inotify
//! watch (added before the directory is listed, so a child made during the walk
//! is either listed or reported); `mkdir` and `rmdir` of a cgroup report an
//! event on its parent. Any event, a lost event queue, or a watch that could not
//! be added (limits) makes [`TreeWatch::changed`] true, and the caller walks the
//! tree again with a fresh watch.
use std::{io, os::fd::OwnedFd, path::Path};

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

/// Watches on every directory of one walk.
pub struct TreeWatch {
    fd: OwnedFd,
    /// A watch could not be added: changes may go unseen, so report a change
    /// every time (the caller then walks every interval, as without a watch).
    incomplete: bool,
    watches: usize,
}

impl TreeWatch {
    /// A watch with no directories yet.
    pub fn new() -> io::Result<Self> {
        let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        Ok(Self {
            fd,
            incomplete: false,
            watches: 0,
        })
    }

    /// Watches `dir` for subdirectories coming and going (and for itself being
    /// removed or moved).
    pub fn add(&mut self, dir: &Path) {
        let flags = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        match inotify::add_watch(&self.fd, dir, flags) {
            Ok(_) => self.watches += 1,
            // Removed before we got to it: its parent's watch reports that.
            Err(rustix::io::Errno::NOENT) => {}
            Err(_) => self.incomplete = true,
        }
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
        let mut buf = [0u8; 4096];
        let mut changed = self.incomplete;
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) => return true,
                Ok(_) => changed = true,
                Err(rustix::io::Errno::AGAIN) => return changed,
                Err(rustix::io::Errno::INTR) => {}
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
}
