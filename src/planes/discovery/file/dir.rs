//! The file backend's directory, with blocking I/O (callers run it on the blocking pool).
//!
//! Every change (records, leases, expiry clean-up) happens under an exclusive `flock`
//! on `<dir>/lock`, so check-then-write sequences are atomic across processes: a
//! process cleaning up an expired record can never delete one just rewritten under a
//! live lease. Readers take no lock: files are replaced by rename, so a reader sees
//! the old or the new file, never half of one.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::layout::{
    key_to_name, lease_contents, lease_name, name_to_key, parse_lease, parse_record, record_header,
    unix_millis,
};
use crate::planes::discovery::{DiscoveryError, ENV_FILE_KV, KeyValue, LeaseId};

/// Temp files older than this were left by a process killed mid-write.
const ABANDONED_TEMP_AGE: Duration = Duration::from_secs(60);

pub(super) struct Dir {
    root: PathBuf,
    keys: PathBuf,
    leases: PathBuf,
    temp_counter: AtomicU64,
}

/// What a record file holds.
enum Stored {
    Missing,
    /// Not a record file: removed by the next clean-up.
    Corrupt,
    Record {
        lease: Option<LeaseId>,
        value: Bytes,
    },
}

/// Holds the directory's lock until dropped (closing the file releases the `flock`).
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

impl Dir {
    pub(super) fn open(root: &Path) -> Result<Self, DiscoveryError> {
        let dir = Self {
            root: root.to_owned(),
            keys: root.join("keys"),
            leases: root.join("leases"),
            temp_counter: AtomicU64::new(0),
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
        })
    }

    /// The lease's TTL and expiry; `None` if its file is missing or malformed (any bytes
    /// at all, UTF-8 or not): a lease nobody can read is as good as expired, and one bad
    /// file must not fail the scans and keep-alives of every other lease.
    fn read_lease(&self, lease: LeaseId) -> Result<Option<(Duration, u64)>, DiscoveryError> {
        let path = self.leases.join(lease_name(lease));
        match fs::read(&path) {
            Ok(bytes) => Ok(std::str::from_utf8(&bytes).ok().and_then(parse_lease)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn lease_alive(&self, lease: LeaseId, now_ms: u64) -> Result<bool, DiscoveryError> {
        Ok(self
            .read_lease(lease)?
            .is_some_and(|(_, expires)| expires >= now_ms))
    }

    fn read_stored(&self, name: &str) -> Result<Stored, DiscoveryError> {
        let path = self.keys.join(name);
        match fs::read(&path) {
            Ok(contents) => Ok(match parse_record(Bytes::from(contents)) {
                Some((lease, value)) => Stored::Record { lease, value },
                None => Stored::Corrupt,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Stored::Missing),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn remove(&self, path: &Path) -> Result<bool, DiscoveryError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", path)(e)),
        }
    }

    /// Removes `lease`'s file and every record on it. Call under the lock.
    fn end_lease(&self, lease: LeaseId) -> Result<(), DiscoveryError> {
        for name in self.record_names()? {
            if let Stored::Record { lease: Some(l), .. } = self.read_stored(&name)? {
                if l == lease {
                    self.remove(&self.keys.join(&name))?;
                }
            }
        }
        self.remove(&self.leases.join(lease_name(lease)))?;
        Ok(())
    }

    fn record_names(&self) -> Result<Vec<String>, DiscoveryError> {
        let entries = fs::read_dir(&self.keys).map_err(io_err("list", &self.keys))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.keys))?;
            if let Ok(name) = entry.file_name().into_string() {
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    pub(super) fn grant(&self, ttl: Duration) -> Result<LeaseId, DiscoveryError> {
        let _lock = self.lock()?;
        self.remove_dead_leases()?;
        let lease = loop {
            let candidate = LeaseId(fastrand::i64(1..i64::MAX));
            if self.read_lease(candidate)?.is_none() {
                break candidate;
            }
        };
        let contents = lease_contents(ttl, SystemTime::now());
        self.write_atomic(&self.leases, &lease_name(lease), &[contents.as_bytes()])?;
        Ok(lease)
    }

    /// Lease files whose owners stopped: their records are already treated as gone.
    fn remove_dead_leases(&self) -> Result<(), DiscoveryError> {
        let now = unix_millis(SystemTime::now());
        let entries = fs::read_dir(&self.leases).map_err(io_err("list", &self.leases))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(lease) = name
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .map(|id| LeaseId(id as i64))
            else {
                continue;
            };
            if !self.lease_alive(lease, now)? {
                self.end_lease(lease)?;
            }
        }
        Ok(())
    }

    /// Extends the lease, or reports it gone if its expiry passed: other processes
    /// already treat its records as deleted, so they are removed rather than revived.
    pub(super) fn keep_alive(&self, lease: LeaseId) -> Result<(), DiscoveryError> {
        let _lock = self.lock()?;
        let now = SystemTime::now();
        match self.read_lease(lease)? {
            Some((ttl, expires)) if expires >= unix_millis(now) => {
                let contents = lease_contents(ttl, now);
                self.write_atomic(&self.leases, &lease_name(lease), &[contents.as_bytes()])
            }
            _ => {
                self.end_lease(lease)?;
                Err(DiscoveryError::LeaseExpired { lease })
            }
        }
    }

    pub(super) fn revoke(&self, lease: LeaseId) -> Result<(), DiscoveryError> {
        let _lock = self.lock()?;
        self.end_lease(lease)
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
            if !self.lease_alive(lease, unix_millis(SystemTime::now()))? {
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
        let now = unix_millis(SystemTime::now());
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
            Stored::Record { .. } | Stored::Missing | Stored::Corrupt => {}
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

    /// The value of record `name` if it exists and its lease (if any) is alive.
    /// `leases` caches liveness across calls of one scan.
    fn live_value(
        &self,
        name: &str,
        leases: &mut HashMap<LeaseId, bool>,
    ) -> Result<Option<Bytes>, DiscoveryError> {
        match self.read_stored(name)? {
            Stored::Record { lease, value } => {
                let alive = match lease {
                    None => true,
                    Some(lease) => match leases.get(&lease) {
                        Some(alive) => *alive,
                        None => {
                            let alive = self.lease_alive(lease, unix_millis(SystemTime::now()))?;
                            leases.insert(lease, alive);
                            alive
                        }
                    },
                };
                Ok(alive.then_some(value))
            }
            Stored::Missing | Stored::Corrupt => Ok(None),
        }
    }

    /// The live records under `prefix`, sorted by key. Records found dead (expired
    /// lease, or not a record file) are removed afterwards under the lock, after
    /// checking again that they are still dead.
    pub(super) fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, DiscoveryError> {
        let mut leases = HashMap::new();
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for name in self.record_names()? {
            let Some(key) = name_to_key(&name) else {
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            match self.live_value(&name, &mut leases)? {
                Some(value) => live.push(KeyValue { key, value }),
                None => dead.push(name),
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
            let stored = self.read_stored(name)?;
            if matches!(stored, Stored::Missing) || self.live_value(name, &mut leases)?.is_some() {
                continue;
            }
            if matches!(stored, Stored::Corrupt) {
                tracing::warn!(file = %self.keys.join(name).display(), "removing a file that is not a record");
            } else {
                tracing::debug!(file = %self.keys.join(name).display(), "removing an expired record");
            }
            self.remove(&self.keys.join(name))?;
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
