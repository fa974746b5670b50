//! Peak resident memory of this process, from Linux's `/proc`.

/// Resets the kernel's peak-RSS mark (`VmHWM`) to the current RSS; false when that is not
/// possible, in which case no peak should be reported, since it would include earlier work.
#[cfg(target_os = "linux")]
pub(crate) fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak RSS in bytes since the last reset.
#[cfg(target_os = "linux")]
pub(crate) fn peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reset_peak() -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn peak() -> Option<u64> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn peak_follows_an_allocation_after_a_reset() {
        if !super::reset_peak() {
            // Some sandboxes refuse writes to /proc; the benchmark then reports "n/a".
            return;
        }
        let before = super::peak().unwrap();
        let touched = vec![1u8; 64 << 20];
        let after = super::peak().unwrap();
        assert!(after >= before + (60 << 20), "{before} -> {after}");
        drop(std::hint::black_box(touched));
    }
}
