//! What Linux's `/proc` tells of this process or of the benchmark's server process: peak
//! resident memory and CPU time.

use std::time::Duration;

/// A process the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Process {
    This,
    Other(u32),
}

impl Process {
    #[cfg(target_os = "linux")]
    fn file(self, name: &str) -> String {
        match self {
            Self::This => format!("/proc/self/{name}"),
            Self::Other(pid) => format!("/proc/{pid}/{name}"),
        }
    }

    /// Resets the kernel's peak-RSS mark (`VmHWM`) to the current RSS; false when that is
    /// not possible, in which case no peak should be reported, since it would include
    /// earlier work.
    #[cfg(target_os = "linux")]
    pub fn reset_peak(self) -> bool {
        std::fs::write(self.file("clear_refs"), "5").is_ok()
    }

    /// Peak RSS in bytes since the last reset.
    #[cfg(target_os = "linux")]
    pub fn peak(self) -> Option<u64> {
        let status = std::fs::read_to_string(self.file("status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// User plus system CPU time of all the process's threads so far, in clock ticks'
    /// resolution (10 ms on most kernels).
    #[cfg(target_os = "linux")]
    pub fn cpu_time(self) -> Option<Duration> {
        let stat = std::fs::read_to_string(self.file("stat")).ok()?;
        // The command name in parentheses may hold spaces: count fields after its end.
        // utime and stime are the 14th and 15th fields, the 12th and 13th after it.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let mut fields = rest.split(' ').skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
        Some(Duration::from_nanos(
            (user + system).saturating_mul(1_000_000_000) / per_second,
        ))
    }

    #[cfg(not(target_os = "linux"))]
    pub fn reset_peak(self) -> bool {
        false
    }

    #[cfg(not(target_os = "linux"))]
    pub fn peak(self) -> Option<u64> {
        None
    }

    #[cfg(not(target_os = "linux"))]
    pub fn cpu_time(self) -> Option<Duration> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::Process;

    #[test]
    fn peak_follows_an_allocation_after_a_reset() {
        if !Process::This.reset_peak() {
            // Some sandboxes refuse writes to /proc; the benchmark then reports "n/a".
            return;
        }
        let before = Process::This.peak().unwrap();
        let touched = vec![1u8; 64 << 20];
        let after = Process::This.peak().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(std::hint::black_box(touched));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let before = Process::This.cpu_time().unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = Process::This.cpu_time().unwrap();
        assert!(after > before, "{before:?} -> {after:?}");
        let pid = std::process::id();
        assert!(Process::Other(pid).cpu_time().unwrap() >= after);
    }
}
