//! A container's root filesystem, assembled from host files: directories and
//! regular files only (no symlinks, devices or owners other than root), so
//! that it reads the same written as a tar layer or into a directory.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Error, Result};

/// One entry of a [`Rootfs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
}

/// Absolute paths (`/usr/local/bin/x`) to entries; parents are added as
/// `0755` directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rootfs {
    entries: BTreeMap<String, Entry>,
}

/// Every layer entry's modification time: fixed, so that layers are
/// reproducible (the Unix epoch, as `SOURCE_DATE_EPOCH=0` builds use).
pub const MTIME: u64 = 0;

impl Rootfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries, by path.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        match self.entries.get(&path) {
            Some(Entry::File { .. }) => Err(Error::Invalid {
                path,
                reason: "is already a file".into(),
            }),
            _ => {
                self.entries.insert(path, Entry::Dir { mode });
                Ok(())
            }
        }
    }

    /// Adds a regular file (and its parents).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if matches!(self.entries.get(&path), Some(Entry::Dir { .. })) {
            return Err(Error::Invalid {
                path,
                reason: "is already a directory".into(),
            });
        }
        self.entries.insert(path, Entry::File { mode, data });
        Ok(())
    }

    /// Adds `host`'s contents at `path`.
    pub fn host_file(&mut self, path: &str, mode: u32, host: &Path) -> Result<()> {
        let data = fs::read(host).map_err(Error::io("reading", host))?;
        self.file(path, mode, data)
    }

    /// Adds an executable at `path`, without its debug information, and every
    /// shared library it loads, each at the path the host's dynamic loader
    /// finds it (so the program's interpreter and the loader's default
    /// search path find them in the container too). A static executable
    /// brings nothing else.
    pub fn executable(&mut self, path: &str, host: &Path) -> Result<()> {
        self.file(path, 0o755, stripped(host)?)?;
        for lib in shared_libraries(host)? {
            let at = lib.to_str().ok_or_else(|| Error::Invalid {
                path: lib.display().to_string(),
                reason: "not UTF-8".into(),
            })?;
            let at = at.to_string();
            self.host_file(&at, 0o755, &lib)?;
        }
        Ok(())
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            let parent = &path[..at + 1 + i];
            match self.entries.get(parent) {
                Some(Entry::File { .. }) => {
                    return Err(Error::Invalid {
                        path: path.to_string(),
                        reason: format!("{parent} is a file"),
                    });
                }
                Some(Entry::Dir { .. }) => {}
                None => {
                    self.entries
                        .insert(parent.to_string(), Entry::Dir { mode: 0o755 });
                }
            }
            at += 1 + i;
        }
        Ok(())
    }

    /// The filesystem as an uncompressed tar layer: entries in path order,
    /// owned by 0:0, every time [`MTIME`].
    pub fn layer(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let rel = &path[1..];
            let mut h = tar::Header::new_ustar();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME);
            let io = |e| Error::Io {
                what: "writing the layer entry",
                path: path.clone(),
                source: e,
            };
            match entry {
                Entry::Dir { mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{rel}/"), std::io::empty())
                        .map_err(io)?;
                }
                Entry::File { mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, rel, data.as_slice()).map_err(io)?;
                }
            }
        }
        tar.into_inner().map_err(|e| Error::Io {
            what: "finishing",
            path: "the layer".into(),
            source: e,
        })
    }

    /// Writes the filesystem under `dir` (created if missing), modes as
    /// given; what `deploy/Dockerfile.*` copy into their `FROM scratch` stage.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        for (path, entry) in &self.entries {
            let target = dir.join(&path[1..]);
            match entry {
                Entry::Dir { mode } => {
                    fs::create_dir_all(&target).map_err(Error::io("creating", &target))?;
                    fs::set_permissions(&target, fs::Permissions::from_mode(*mode))
                        .map_err(Error::io("setting the mode of", &target))?;
                }
                Entry::File { mode, data } => {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(*mode)
                        .open(&target)
                        .map_err(Error::io("creating", &target))?;
                    f.write_all(data).map_err(Error::io("writing", &target))?;
                    // `mode` at open is masked by the umask.
                    fs::set_permissions(&target, fs::Permissions::from_mode(*mode))
                        .map_err(Error::io("setting the mode of", &target))?;
                }
            }
        }
        Ok(())
    }
}

/// `/a/b/` → `/a/b`; refuses relative paths, `.`/`..` and empty components.
fn normalize(path: &str) -> Result<String> {
    let invalid = |reason: &str| Error::Invalid {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| invalid("not absolute"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(invalid("is the root"));
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid("has an empty, `.` or `..` component"));
    }
    Ok(format!("/{rest}"))
}

/// `host`'s bytes without debug sections (`strip --strip-debug`, binutils).
fn stripped(host: &Path) -> Result<Vec<u8>> {
    let out =
        tempfile::NamedTempFile::new().map_err(Error::io("creating a temp file for", host))?;
    let o = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(out.path())
        .arg(host)
        .output()
        .map_err(|e| Error::Command {
            command: "strip (binutils)".into(),
            detail: e.to_string(),
        })?;
    if !o.status.success() {
        return Err(Error::Command {
            command: format!("strip --strip-debug {}", host.display()),
            detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    fs::read(out.path()).map_err(Error::io("reading", out.path()))
}

/// The shared libraries the dynamic loader maps for `host`, as `ldd` lists
/// them (the loader itself included); empty for a static executable.
pub fn shared_libraries(host: &Path) -> Result<Vec<PathBuf>> {
    let o = Command::new("ldd")
        .arg(host)
        .output()
        .map_err(|e| Error::Command {
            command: "ldd (libc-bin)".into(),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(Error::Command {
            command: format!("ldd {}", host.display()),
            detail: stderr.trim().to_string(),
        });
    }
    parse_ldd(&stdout).map_err(|reason| Error::Invalid {
        path: host.display().to_string(),
        reason,
    })
}

fn parse_ldd(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "statically linked" {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("needs {} which the host lacks", name.trim()));
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or(target).trim();
        // linux-vdso.so.1 and the like live in the kernel, not in a file.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_files_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc5b1e4000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2c)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f2d)\n";
        assert_eq!(
            parse_ldd(out).expect("parse_ldd"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            parse_ldd("\tstatically linked\n").expect("parse_ldd"),
            Vec::<PathBuf>::new()
        );
        let missing = parse_ldd("\tlibfoo.so.1 => not found\n").expect_err("refused");
        assert!(missing.contains("libfoo.so.1"), "{missing}");
    }

    #[test]
    fn parents_are_added_and_clashes_refused() {
        let mut fs = Rootfs::new();
        fs.file("/usr/local/bin/x", 0o755, b"x".to_vec())
            .expect("to_vec");
        fs.dir("/tmp/", 0o1777).expect("dir");
        let paths: Vec<&str> = fs.entries().keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "/tmp",
                "/usr",
                "/usr/local",
                "/usr/local/bin",
                "/usr/local/bin/x"
            ]
        );
        assert!(fs.dir("/usr/local/bin/x", 0o755).is_err());
        assert!(fs.file("/usr/local/bin/x/y", 0o644, vec![]).is_err());
        assert!(fs.file("/tmp", 0o644, vec![]).is_err());
        for bad in ["relative", "/", "/a/../b", "/a//b", "/a/./b"] {
            assert!(fs.file(bad, 0o644, vec![]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_layer_is_deterministic_and_reads_back() {
        let build = || {
            let mut fs = Rootfs::new();
            fs.file("/etc/passwd", 0o644, b"root:x:0:0::/:/x\n".to_vec())
                .expect("to_vec");
            fs.dir("/tmp", 0o1777).expect("dir");
            fs.layer().expect("layer")
        };
        let layer = build();
        assert_eq!(layer, build());
        let mut archive = tar::Archive::new(layer.as_slice());
        let seen: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("value");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.mode().expect("mode"),
                    h.uid().expect("uid"),
                    h.mtime().expect("mtime"),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("etc/".to_string(), 0o755, 0, MTIME),
                ("etc/passwd".to_string(), 0o644, 0, MTIME),
                ("tmp/".to_string(), 0o1777, 0, MTIME),
            ]
        );
    }

    #[test]
    fn written_to_a_directory_with_its_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fs = Rootfs::new();
        fs.file("/usr/local/bin/x", 0o755, b"#".to_vec())
            .expect("to_vec");
        fs.dir("/tmp", 0o1777).expect("dir");
        fs.write_to(dir.path()).expect("path");
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join(p))
                .expect("join")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("usr/local/bin/x"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(
            std::fs::read(dir.path().join("usr/local/bin/x")).expect("join"),
            b"#"
        );
    }
}
