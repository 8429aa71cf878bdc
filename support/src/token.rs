//! The one reader of bearer-token files: the ServiceAccount token (for
//! kube-apiserver and the aggregators), the kubelet's token, a watch client's.
//!
//! Projected tokens are rotated on disk (the kubelet swaps a symlink), so the
//! file is checked on every use, cheaply: a `stat`, and a read only when the
//! file changed. The content is trimmed, as client-go does (a token written
//! by hand usually ends in a newline). When a file that was read once
//! disappears or cannot be read, the last token is used, as client-go does
//! for clients whose token file is removed after start.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use http::HeaderValue;

/// Tokens are about 1 KiB; anything far larger is not a token.
const MAX_BYTES: u64 = 64 * 1024;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the bearer token file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the bearer token file {} is empty", .path.display())]
    Empty { path: PathBuf },
    /// The token is never quoted: it is a credential.
    #[error(
        "the bearer token file {} does not hold a usable token (not UTF-8, too large, or characters not allowed in a header)",
        .path.display()
    )]
    Invalid { path: PathBuf },
}

/// A token file and what was last read from it.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    last: Mutex<Option<Read>>,
}

#[derive(Debug)]
struct Read {
    /// The file as it was when read: device, inode, modification time, size.
    stamp: (u64, u64, i64, i64, u64),
    header: HeaderValue,
}

impl TokenFile {
    /// Nothing is read yet: the file may appear later.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TokenFile {
            path: path.into(),
            last: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Bearer <token>`, marked sensitive (kept out of debug output and
    /// HPACK tables), read again if the file changed since the last call.
    pub fn header(&self) -> Result<HeaderValue, Error> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
        if let (Ok(stamp), Some(read)) = (&stamp, last.as_ref())
            && read.stamp == *stamp
        {
            return Ok(read.header.clone());
        }
        let read = stamp
            .and_then(|stamp| Ok((stamp, self.read()?)))
            .map_err(|source| Error::Read {
                path: self.path.clone(),
                source,
            })
            .and_then(|(stamp, raw)| {
                Ok(Read {
                    stamp,
                    header: self.parse(&raw)?,
                })
            });
        match (read, last.as_ref()) {
            (Ok(read), _) => {
                let header = read.header.clone();
                *last = Some(read);
                Ok(header)
            }
            // Gone or unreadable after a good read: keep using that one.
            (Err(Error::Read { .. }), Some(read)) => Ok(read.header.clone()),
            (Err(error), _) => Err(error),
        }
    }

    fn read(&self) -> io::Result<Vec<u8>> {
        use io::Read as _;
        let mut raw = Vec::new();
        fs::File::open(&self.path)?
            .take(MAX_BYTES + 1)
            .read_to_end(&mut raw)?;
        Ok(raw)
    }

    fn parse(&self, raw: &[u8]) -> Result<HeaderValue, Error> {
        let invalid = || Error::Invalid {
            path: self.path.clone(),
        };
        if raw.len() as u64 > MAX_BYTES {
            return Err(invalid());
        }
        let token = std::str::from_utf8(raw).map_err(|_| invalid())?.trim();
        if token.is_empty() {
            return Err(Error::Empty {
                path: self.path.clone(),
            });
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid())?;
        value.set_sensitive(true);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_reread_when_changed_and_kept_when_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        let token = TokenFile::new(&path);
        assert!(
            matches!(token.header(), Err(Error::Read { .. })),
            "not there yet"
        );

        fs::write(&path, "token-one\n").expect("write");
        let header = token.header().expect("token");
        assert_eq!(header, "Bearer token-one");
        assert!(header.is_sensitive());

        // Rotated as the kubelet does it: a new file renamed over the old.
        let next = dir.path().join("next");
        fs::write(&next, "token-two").expect("write");
        fs::rename(&next, &path).expect("rename");
        assert_eq!(token.header().expect("token"), "Bearer token-two");

        fs::remove_file(&path).expect("remove");
        assert_eq!(token.header().expect("the last token"), "Bearer token-two");
    }

    #[test]
    fn empty_and_unusable_tokens_are_errors_that_do_not_quote_them() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        fs::write(&path, " \n").expect("write");
        assert!(matches!(
            TokenFile::new(&path).header(),
            Err(Error::Empty { .. })
        ));
        fs::write(&path, "secret\u{7}value").expect("write");
        let error = TokenFile::new(&path).header().expect_err("invalid");
        assert!(matches!(error, Error::Invalid { .. }));
        assert!(!error.to_string().contains("secret"), "{error}");
        fs::write(&path, vec![b'a'; 65 * 1024]).expect("write");
        assert!(matches!(
            TokenFile::new(&path).header(),
            Err(Error::Invalid { .. })
        ));
    }
}
