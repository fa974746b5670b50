use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: a panic elsewhere while holding one of our locks
/// leaves plain data behind (maps, counters), and the process keeps serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
