//! Keeping the gateway's memory honest with glibc's allocator.
//!
//! By default glibc hands free memory at the top of a heap back to the
//! kernel as soon as more than 128 KiB of it is free, and takes it back on
//! the next allocation. russh allocates and frees a zeroed buffer per
//! forwarded packet, so packets page-faulted fresh pages in: 249,000 page
//! faults per 3 GiB forwarded, about a tenth of the gateway's CPU (2,000
//! with the threshold raised). Instead, the heaps
//! keep their free memory while busy, and a trimmer returns all of it —
//! including free pages in the middle of a heap, which the automatic trim
//! never touches — once the gateway has been through connections opening
//! or closing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bumped whenever a burst of memory is likely to have been freed.
static CHURN: AtomicU64 = AtomicU64::new(0);

/// How often the trimmer looks for churn.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Records that memory was probably freed (a connection or forward ended, a
/// handshake finished).
pub fn note_churn() {
    CHURN.fetch_add(1, Ordering::Relaxed);
}

/// Sets the allocator up for the gateway; call once, before the workers
/// start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before the worker threads exist.
    unsafe {
        // Free memory stays in the heap between packets; `trim` returns it.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        // Copy buffers (256 KiB) come from the heap, not one mmap each.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Returns every whole free page to the kernel; true if there were any.
fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it locks each arena in turn.
    unsafe {
        libc::malloc_trim(0) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Returns free memory to the kernel after churn; runs forever.
pub async fn trimmer() {
    let mut seen = CHURN.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        let now = CHURN.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            let started = std::time::Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(released, took = ?started.elapsed(), "heap trimmed");
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn resident_mib() -> f64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: f64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("resident pages");
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        pages * page / (1024.0 * 1024.0)
    }

    #[test]
    fn freed_memory_stays_until_trimmed() {
        tune_allocator();
        // A thread of its own gets an arena of its own, as a worker does.
        let (held, after) = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8 | 1; 32 * 1024]).collect();
            assert!(blocks.iter().all(|b| b[0] != 0));
            let full = resident_mib();
            drop(blocks);
            let held = resident_mib() - (full - 16.0);
            assert!(trim(), "16 MiB freed, yet nothing was left to trim");
            (held, resident_mib() - (full - 16.0))
        })
        .join()
        .expect("allocating thread");
        // Freed buffers stay mapped (no page faults to get them back) and
        // the trimmer does return them.
        assert!(held > 12.0, "only {held:.1} of 16 MiB kept after free");
        assert!(
            after < 4.0,
            "{after:.1} of 16 MiB still resident after trim"
        );
    }
}
