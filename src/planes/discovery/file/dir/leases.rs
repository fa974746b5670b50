//! The file backend's lease files: granted, kept alive, ended, and cleaned up when
//! their owners stopped.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, SystemTime};

use super::{Dir, OwnLease, io_err, now_ms};
use crate::planes::discovery::file::entry::{self, Contents, Problem};
use crate::planes::discovery::file::layout::{
    lease_contents, lease_name, parse_lease, parse_lease_name, unix_millis,
};
use crate::planes::discovery::{DiscoveryError, LeaseId};
use crate::sync::lock;

/// What a lease file holds.
pub(super) enum LeaseFile {
    Missing,
    /// Not a lease file: the lease counts as expired (already logged). `removable` if
    /// its contents were read, as for a record file that is not a record.
    Malformed {
        removable: bool,
    },
    Valid {
        ttl: Duration,
        expires_ms: u64,
    },
}

impl LeaseFile {
    fn alive_at(&self, now_ms: u64) -> bool {
        matches!(self, Self::Valid { expires_ms, .. } if *expires_ms >= now_ms)
    }
}

impl Dir {
    /// The lease's file. One that is malformed (any bytes at all, UTF-8 or not) or
    /// unreadable is logged and counts as expired: a lease nobody can read is as good as
    /// gone, and one bad file must not fail the scans and keep-alives of every other.
    pub(super) fn read_lease(&self, lease: LeaseId) -> Result<LeaseFile, DiscoveryError> {
        let path = self.leases.join(lease_name(lease));
        let (problem, removable) = match entry::read(&path).map_err(io_err("read", &path))? {
            Contents::Missing => return Ok(LeaseFile::Missing),
            Contents::Bytes(bytes) => {
                match std::str::from_utf8(&bytes).ok().and_then(parse_lease) {
                    Some((ttl, expires_ms)) => return Ok(LeaseFile::Valid { ttl, expires_ms }),
                    None => (Problem::not_a_lease(&bytes), true),
                }
            }
            Contents::Unreadable(problem) => (problem, false),
        };
        self.complaints.about(&path, &problem);
        Ok(LeaseFile::Malformed { removable })
    }

    pub(super) fn lease_alive(&self, lease: LeaseId, now_ms: u64) -> Result<bool, DiscoveryError> {
        Ok(self.read_lease(lease)?.alive_at(now_ms))
    }

    /// Removes `lease`'s file and every record on it. Call under the lock.
    fn end_lease(&self, lease: LeaseId) -> Result<(), DiscoveryError> {
        lock(&self.own_leases).remove(&lease);
        for path in self.records_on(&BTreeSet::from([lease]))? {
            self.remove(&path)?;
        }
        self.remove(&self.leases.join(lease_name(lease)))?;
        Ok(())
    }

    pub(in crate::planes::discovery::file) fn grant(
        &self,
        ttl: Duration,
    ) -> Result<LeaseId, DiscoveryError> {
        let _lock = self.lock()?;
        self.remove_dead_leases()?;
        let lease = loop {
            let candidate = LeaseId(fastrand::i64(1..i64::MAX));
            if matches!(self.read_lease(candidate)?, LeaseFile::Missing) {
                break candidate;
            }
        };
        let now = SystemTime::now();
        self.write_lease(lease, ttl, now)?;
        let mut own = lock(&self.own_leases);
        // Leases this process let expire (lost in a stall) are no longer its own.
        let now_ms = unix_millis(now);
        own.retain(|_, l| l.expires_ms >= now_ms);
        own.insert(
            lease,
            OwnLease {
                ttl,
                expires_ms: now_ms.saturating_add(ttl.as_millis() as u64),
            },
        );
        Ok(lease)
    }

    fn write_lease(
        &self,
        lease: LeaseId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(), DiscoveryError> {
        let contents = lease_contents(ttl, now);
        self.write_atomic(&self.leases, &lease_name(lease), &[contents.as_bytes()])
    }

    /// Lease files whose owners stopped (or that cannot be read): their records already
    /// count as gone. Entries that are not lease files are logged and left alone, as
    /// are dead ones that cannot be read; none of them fails the grant.
    fn remove_dead_leases(&self) -> Result<(), DiscoveryError> {
        let now = now_ms();
        let entries = fs::read_dir(&self.leases).map_err(io_err("list", &self.leases))?;
        let mut dead = BTreeSet::new();
        let mut removable = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let Some(lease) = name.to_str().and_then(parse_lease_name) else {
                self.complaints
                    .about(&entry.path(), &Problem::NotALeaseName);
                continue;
            };
            match self.read_lease(lease)? {
                LeaseFile::Valid { expires_ms, .. } if expires_ms >= now => continue,
                LeaseFile::Malformed { removable: false } => {}
                _ => removable.push(entry.path()),
            }
            dead.insert(lease);
        }
        if dead.is_empty() {
            return Ok(());
        }
        for path in self.records_on(&dead)?.iter().chain(&removable) {
            self.clean_up(path);
        }
        Ok(())
    }

    /// Extends the lease, or reports it gone if its expiry passed: other processes
    /// already treat its records as deleted, so they are removed rather than revived.
    ///
    /// A lease file that someone damaged (it cannot be read as one) is rewritten if this
    /// process granted the lease and, by its own count, kept it alive: the lease keeps
    /// its id and its records. Other processes saw it as expired meanwhile, and may have
    /// removed its records; the caller's check of its registrations writes them again.
    pub(in crate::planes::discovery::file) fn keep_alive(
        &self,
        lease: LeaseId,
    ) -> Result<(), DiscoveryError> {
        let _lock = self.lock()?;
        let now = SystemTime::now();
        let now_ms = unix_millis(now);
        let own = lock(&self.own_leases).get(&lease).copied();
        let ttl = match (self.read_lease(lease)?, own) {
            (LeaseFile::Valid { ttl, expires_ms }, _) if expires_ms >= now_ms => ttl,
            (LeaseFile::Malformed { .. }, Some(own)) if own.expires_ms >= now_ms => {
                tracing::warn!(%lease, "this process's lease file was damaged; rewriting it");
                own.ttl
            }
            _ => {
                self.end_lease(lease)?;
                return Err(DiscoveryError::LeaseExpired { lease });
            }
        };
        self.write_lease(lease, ttl, now)?;
        if let Some(own) = lock(&self.own_leases).get_mut(&lease) {
            own.expires_ms = now_ms.saturating_add(ttl.as_millis() as u64);
        }
        Ok(())
    }

    pub(in crate::planes::discovery::file) fn revoke(
        &self,
        lease: LeaseId,
    ) -> Result<(), DiscoveryError> {
        let _lock = self.lock()?;
        self.end_lease(lease)
    }
}
