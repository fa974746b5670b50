//! Reading one entry of the file backend's directory, and what can be wrong with it.
//!
//! The directory is shared: any process, or a person, may leave anything in it. Each
//! entry is judged alone — a file that cannot be read or parsed is one bad entry, never
//! the failure of a scan — and its problem is logged at its 1st, 2nd, 4th, 8th…
//! sighting (see [`Repeats`]). Only faults of this process (out of file descriptors or
//! memory) fail the operation, since they say nothing about the entry.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::planes::discovery::repeats::Repeats;
use crate::sync::lock;

/// What reading an entry gave.
pub(super) enum Contents {
    Missing,
    Bytes(Vec<u8>),
    /// Present but unreadable: not a regular file, no permission, an I/O error.
    Unreadable(Problem),
}

/// Reads the regular file at `path`. `Err` only for faults of this process.
pub(super) fn read(path: &Path) -> io::Result<Contents> {
    match read_regular(path) {
        Ok(bytes) => Ok(Contents::Bytes(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Contents::Missing),
        Err(e) if is_process_fault(&e) => Err(e),
        Err(e) => Ok(Contents::Unreadable(Problem::Unreadable {
            kind: e.kind(),
            message: e.to_string(),
        })),
    }
}

fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut options = OpenOptions::new();
    options.read(true);
    // A FIFO someone left here would block the open until a writer came.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let mut file: File = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Out of descriptors or memory: this process's trouble, not the entry's, so the
/// operation fails (and is retried) rather than skipping a good entry.
fn is_process_fault(err: &io::Error) -> bool {
    #[cfg(unix)]
    if matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    ) {
        return true;
    }
    err.kind() == io::ErrorKind::OutOfMemory
}

/// What is wrong with an entry; equal problems are the same problem for [`Complaints`].
#[derive(Debug, Hash)]
pub(super) enum Problem {
    /// In `keys/`: a name that no key escapes to.
    NotAKeyName,
    /// In `leases/`: a name that is not a lease id's 16 hex digits.
    NotALeaseName,
    /// In `keys/`: contents without a `<lease>\n` header; `contents` fingerprints them.
    NotARecord { contents: u64 },
    /// In `leases/`: contents that are not `<ttl ms> <expiry ms>`.
    NotALease { contents: u64 },
    Unreadable {
        kind: io::ErrorKind,
        message: String,
    },
    /// A dead entry that clean-up could not remove.
    NotRemoved {
        kind: io::ErrorKind,
        message: String,
    },
}

impl Problem {
    pub(super) fn not_a_record(contents: &[u8]) -> Self {
        Self::NotARecord {
            contents: fingerprint(contents),
        }
    }

    pub(super) fn not_a_lease(contents: &[u8]) -> Self {
        Self::NotALease {
            contents: fingerprint(contents),
        }
    }

    pub(super) fn not_removed(err: &io::Error) -> Self {
        Self::NotRemoved {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

fn fingerprint(value: &(impl Hash + ?Sized)) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAKeyName => f.write_str("its name is not an escaped key; ignored"),
            Self::NotALeaseName => {
                f.write_str("its name is not a lease id of 16 hex digits; ignored")
            }
            Self::NotARecord { .. } => {
                f.write_str("not a record (no lease header); counts as absent, to be removed")
            }
            Self::NotALease { .. } => {
                f.write_str("not a lease file; the lease counts as expired, its records as gone")
            }
            Self::Unreadable { message, .. } => {
                write!(f, "cannot be read ({message}); counts as absent")
            }
            Self::NotRemoved { message, .. } => {
                write!(f, "dead, but could not be removed ({message}); ignored")
            }
        }
    }
}

/// Bad entries seen by this process, each problem of each logged at its 1st, 2nd, 4th…
/// sighting.
#[derive(Default)]
pub(super) struct Complaints {
    seen: Mutex<Repeats<(PathBuf, u64)>>,
}

impl Complaints {
    pub(super) fn about(&self, path: &Path, problem: &Problem) {
        let sighting = lock(&self.seen).sighted((path.to_owned(), fingerprint(problem)));
        if let Some(sighting) = sighting {
            tracing::warn!(
                file = %path.display(),
                %problem,
                sighting,
                "malformed entry in the discovery directory (logged at its 1st, 2nd, 4th, 8th… sighting)"
            );
        }
    }

    /// `path` is gone or fixed: should it turn bad again, that is news.
    pub(super) fn resolved(&self, path: &Path) {
        lock(&self.seen).forget(|(seen, _)| seen == path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_fifos_and_missing_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"\xffbytes").unwrap();
        assert!(matches!(read(&file), Ok(Contents::Bytes(b)) if b == b"\xffbytes"));
        assert!(matches!(
            read(&dir.path().join("none")),
            Ok(Contents::Missing)
        ));
        assert!(matches!(read(dir.path()), Ok(Contents::Unreadable(_))));
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: `name` is a valid C string for the duration of the call.
            assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
            assert!(
                matches!(read(&fifo), Ok(Contents::Unreadable(_))),
                "a FIFO is refused without blocking"
            );
        }
    }

    #[test]
    fn the_same_contents_are_the_same_problem_and_other_contents_another() {
        let same = |a: &Problem, b: &Problem| fingerprint(a) == fingerprint(b);
        assert!(same(
            &Problem::not_a_record(b"x"),
            &Problem::not_a_record(b"x")
        ));
        assert!(!same(
            &Problem::not_a_record(b"x"),
            &Problem::not_a_record(b"y")
        ));
        assert!(!same(
            &Problem::not_a_record(b"x"),
            &Problem::not_a_lease(b"x")
        ));
    }
}
