//! The file backend's directory, with blocking I/O (callers run it on the blocking pool).
//!
//! Every change (records, leases, expiry clean-up) happens under an exclusive `flock`
//! on `<dir>/lock`, so check-then-write sequences are atomic across processes: a
//! process cleaning up an expired record can never delete one just rewritten under a
//! live lease. Readers take no lock: files are replaced by rename, so a reader sees
//! the old or the new file, never half of one.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::entry::{self, Complaints, Contents, Problem};
use super::layout::{key_to_name, name_to_key, parse_record, record_header, unix_millis};
use crate::planes::discovery::{DiscoveryError, ENV_FILE_KV, KeyValue, LeaseId};

mod leases;

/// Temp files older than this were left by a process killed mid-write.
const ABANDONED_TEMP_AGE: Duration = Duration::from_secs(60);

pub(super) struct Dir {
    root: PathBuf,
    keys: PathBuf,
    leases: PathBuf,
    temp_counter: AtomicU64,
    /// The leases this process granted, with their TTL and the expiry last written, so
    /// keep-alive can rewrite a lease file someone damaged (see [`keep_alive`](Self::keep_alive)).
    own_leases: Mutex<HashMap<LeaseId, OwnLease>>,
    complaints: Complaints,
}

/// What a record file holds.
enum Stored {
    Missing,
    /// Not a record: counts as absent, and anyone may write the key. `removable` if its
    /// contents were read (so it is a file the next clean-up removes); an entry that
    /// cannot even be read (a directory, no permission) is left alone.
    Corrupt {
        problem: Problem,
        removable: bool,
    },
    Record {
        lease: Option<LeaseId>,
        value: Bytes,
    },
}

/// Holds the directory's lock until dropped (closing the file releases the `flock`).
/// A lease this process granted: its TTL, and the expiry it last wrote (kept here, not
/// in `leases`, so that this file needs nothing of its child).
#[derive(Clone, Copy)]
struct OwnLease {
    ttl: Duration,
    expires_ms: u64,
}

struct DirLock {
    _file: File,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiscoveryError {
    let path = path.to_owned();
    move |source| DiscoveryError::Io {
        action,
        path,
        setting: ENV_FILE_KV,
        source,
    }
}

fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}

impl Dir {
    pub(super) fn open(root: &Path) -> Result<Self, DiscoveryError> {
        let dir = Self {
            root: root.to_owned(),
            keys: root.join("keys"),
            leases: root.join("leases"),
            temp_counter: AtomicU64::new(0),
            own_leases: Mutex::default(),
            complaints: Complaints::default(),
        };
        for path in [&dir.keys, &dir.leases] {
            fs::create_dir_all(path).map_err(io_err("create directory", path))?;
        }
        let _lock = dir.lock()?;
        for path in [&dir.keys, &dir.leases] {
            remove_abandoned_temp_files(path);
        }
        Ok(dir)
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<DirLock, DiscoveryError> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        flock_exclusive(&file).map_err(io_err("lock", &path))?;
        Ok(DirLock { _file: file })
    }

    /// Writes `name` in `dir` by writing a temp file and renaming it over the old one.
    fn write_atomic(&self, dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(), DiscoveryError> {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut file = File::create(&temp)?;
            for part in parts {
                file.write_all(part)?;
            }
            fs::rename(&temp, dir.join(name))
        };
        write().map_err(|err| {
            let _ = fs::remove_file(&temp);
            io_err("write", &dir.join(name))(err)
        })?;
        self.complaints.resolved(&dir.join(name));
        Ok(())
    }

    /// Whether a record on `lease` is alive; `leases` caches the answer across one scan.
    fn record_alive(
        &self,
        lease: Option<LeaseId>,
        leases: &mut HashMap<LeaseId, bool>,
    ) -> Result<bool, DiscoveryError> {
        let Some(lease) = lease else { return Ok(true) };
        if let Some(alive) = leases.get(&lease) {
            return Ok(*alive);
        }
        let alive = self.lease_alive(lease, now_ms())?;
        leases.insert(lease, alive);
        Ok(alive)
    }

    fn read_stored(&self, name: &str) -> Result<Stored, DiscoveryError> {
        let path = self.keys.join(name);
        Ok(match entry::read(&path).map_err(io_err("read", &path))? {
            Contents::Missing => Stored::Missing,
            Contents::Bytes(bytes) => {
                let problem = Problem::not_a_record(&bytes);
                match parse_record(Bytes::from(bytes)) {
                    Some((lease, value)) => Stored::Record { lease, value },
                    None => Stored::Corrupt {
                        problem,
                        removable: true,
                    },
                }
            }
            Contents::Unreadable(problem) => Stored::Corrupt {
                problem,
                removable: false,
            },
        })
    }

    fn remove(&self, path: &Path) -> Result<bool, DiscoveryError> {
        match fs::remove_file(path) {
            Ok(()) => {
                self.complaints.resolved(path);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }

    /// Removes another process's dead entry; failing to is logged, never an error, so
    /// one stuck entry cannot fail the scan or the grant that found it.
    fn clean_up(&self, path: &Path) {
        if let Err(DiscoveryError::Io { source, .. }) = self.remove(path) {
            self.complaints.about(path, &Problem::not_removed(&source));
        }
    }

    /// The record files on any of `leases`.
    fn records_on(&self, leases: &BTreeSet<LeaseId>) -> Result<Vec<PathBuf>, DiscoveryError> {
        let mut paths = Vec::new();
        for name in self.record_names()? {
            if let Stored::Record { lease: Some(l), .. } = self.read_stored(&name)? {
                if leases.contains(&l) {
                    paths.push(self.keys.join(&name));
                }
            }
        }
        Ok(paths)
    }

    /// The names in `keys/`, but for temp files. A name that is not UTF-8 cannot be a
    /// key's: it is logged and left out.
    fn record_names(&self) -> Result<Vec<String>, DiscoveryError> {
        let entries = fs::read_dir(&self.keys).map_err(io_err("list", &self.keys))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.keys))?;
            match entry.file_name().into_string() {
                Ok(name) if name.starts_with('.') => {}
                Ok(name) => names.push(name),
                Err(_) => self.complaints.about(&entry.path(), &Problem::NotAKeyName),
            }
        }
        Ok(names)
    }

    fn name(key: &str) -> Result<String, DiscoveryError> {
        key_to_name(key).ok_or_else(|| DiscoveryError::InvalidKey {
            key: key.to_owned(),
            reason: "longer than the file backend's 255-byte file names once escaped".to_owned(),
        })
    }

    fn write_record(
        &self,
        name: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<(), DiscoveryError> {
        if let Some(lease) = lease {
            if !self.lease_alive(lease, now_ms())? {
                return Err(DiscoveryError::LeaseExpired { lease });
            }
        }
        let header = record_header(lease);
        self.write_atomic(&self.keys, name, &[header.as_bytes(), value])
    }

    pub(super) fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<(), DiscoveryError> {
        let name = Self::name(key)?;
        let _lock = self.lock()?;
        self.write_record(&name, value, lease)
    }

    pub(super) fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<bool, DiscoveryError> {
        let name = Self::name(key)?;
        let _lock = self.lock()?;
        if self.live_value(&name, &mut HashMap::new())?.is_some() {
            return Ok(false);
        }
        self.write_record(&name, value, lease)?;
        Ok(true)
    }

    /// See [`KvStore::claim`](crate::planes::discovery::KvStore::claim): under the lock,
    /// a record that is missing, not a record, or on an expired lease is absent.
    pub(super) fn claim(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<bool, DiscoveryError> {
        let name = Self::name(key)?;
        let _lock = self.lock()?;
        let now = now_ms();
        if !self.lease_alive(lease, now)? {
            return Err(DiscoveryError::LeaseExpired { lease });
        }
        let held = |holder| DiscoveryError::KeyHeld {
            key: key.to_owned(),
            holder,
        };
        match self.read_stored(&name)? {
            Stored::Record {
                lease: Some(l),
                value: stored,
            } if l == lease => {
                if stored == value {
                    return Ok(false);
                }
            }
            Stored::Record { lease: None, .. } => return Err(held(None)),
            Stored::Record {
                lease: Some(other), ..
            } if self.lease_alive(other, now)? => return Err(held(Some(other))),
            Stored::Record { .. } | Stored::Missing | Stored::Corrupt { .. } => {}
        }
        self.write_record(&name, value, Some(lease))?;
        Ok(true)
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<Bytes>, DiscoveryError> {
        self.live_value(&Self::name(key)?, &mut HashMap::new())
    }

    pub(super) fn delete(&self, key: &str) -> Result<bool, DiscoveryError> {
        let name = Self::name(key)?;
        let _lock = self.lock()?;
        let existed = self.live_value(&name, &mut HashMap::new())?.is_some();
        self.remove(&self.keys.join(&name))?;
        Ok(existed)
    }

    pub(super) fn release(&self, key: &str, lease: LeaseId) -> Result<bool, DiscoveryError> {
        let name = Self::name(key)?;
        let _lock = self.lock()?;
        match self.read_stored(&name)? {
            Stored::Record { lease: Some(l), .. } if l == lease => {
                self.remove(&self.keys.join(&name))
            }
            _ => Ok(false),
        }
    }

    /// The value of record `name` if it exists and its lease (if any) is alive; a file
    /// that is not a record is logged. `leases` caches liveness across one scan.
    fn live_value(
        &self,
        name: &str,
        leases: &mut HashMap<LeaseId, bool>,
    ) -> Result<Option<Bytes>, DiscoveryError> {
        match self.read_stored(name)? {
            Stored::Record { lease, value } => {
                Ok(self.record_alive(lease, leases)?.then_some(value))
            }
            Stored::Corrupt { problem, .. } => {
                self.complaints.about(&self.keys.join(name), &problem);
                Ok(None)
            }
            Stored::Missing => Ok(None),
        }
    }

    /// The live records under `prefix`, sorted by key. Records found dead (expired
    /// lease, or not a record file) are removed afterwards under the lock, after
    /// checking again that they are still dead. Entries that are not records are
    /// logged and skipped: they never fail the scan.
    pub(super) fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, DiscoveryError> {
        let mut leases = HashMap::new();
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for name in self.record_names()? {
            let Some(key) = name_to_key(&name) else {
                self.complaints
                    .about(&self.keys.join(&name), &Problem::NotAKeyName);
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            match self.read_stored(&name)? {
                Stored::Record { lease, value } => {
                    if self.record_alive(lease, &mut leases)? {
                        live.push(KeyValue { key, value });
                    } else {
                        dead.push(name);
                    }
                }
                Stored::Corrupt { problem, removable } => {
                    self.complaints.about(&self.keys.join(&name), &problem);
                    if removable {
                        dead.push(name);
                    }
                }
                Stored::Missing => {}
            }
        }
        if !dead.is_empty() {
            self.remove_dead_records(&dead)?;
        }
        live.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(live)
    }

    fn remove_dead_records(&self, names: &[String]) -> Result<(), DiscoveryError> {
        let _lock = self.lock()?;
        let mut leases = HashMap::new();
        for name in names {
            let path = self.keys.join(name);
            let still_dead = match self.read_stored(name)? {
                Stored::Record { lease, .. } => !self.record_alive(lease, &mut leases)?,
                Stored::Corrupt { removable, .. } => removable,
                Stored::Missing => false,
            };
            if still_dead {
                tracing::debug!(file = %path.display(), "removing a dead record");
                self.clean_up(&path);
            }
        }
        Ok(())
    }
}

fn remove_abandoned_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_temp = entry.file_name().to_string_lossy().starts_with(".tmp-");
        let abandoned = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_TEMP_AGE);
        if is_temp && abandoned {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(unix)]
fn flock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Other platforms get no lock: there, let only one process write a directory.
#[cfg(not(unix))]
fn flock_exclusive(_file: &File) -> io::Result<()> {
    Ok(())
}
