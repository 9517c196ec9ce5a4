//! Keeping the gateway's memory honest with glibc's allocator.
//!
//! By default glibc hands free memory at the top of a heap back to the
//! kernel as soon as more than 128 KiB of it is free, and takes it back on
//! the next allocation. russh allocates and frees a zeroed buffer per
//! forwarded packet, so packets page-faulted fresh pages in: 249,000 page
//! faults per 3 GiB forwarded, about a tenth of the gateway's CPU (2,000
//! with the threshold raised). With the threshold at a few MiB, what one
//! busy connection frees and takes back stays mapped, while the end of a
//! burst of sessions still goes back to the kernel by itself.
//!
//! glibc gives back only the top of a heap by itself; free pages between
//! live allocations stay resident. A trimmer returns those once the gateway
//! has been through connections opening or closing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bumped whenever a burst of memory is likely to have been freed.
static CHURN: AtomicU64 = AtomicU64::new(0);

/// How often the trimmer looks for churn.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Free memory a heap keeps at its top before giving it back by itself.
const TRIM_THRESHOLD: usize = 8 << 20;

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
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        // Copy buffers (256 KiB) come from the heap, not one mmap each.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Returns the whole free pages inside every heap to the kernel; true if
/// there were any.
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

    /// The share of the pages under these buffers that are resident. Asks
    /// about these pages only, so other tests allocating at the same time
    /// do not count.
    fn resident(spans: &[(usize, usize)]) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let (mut yes, mut all) = (0usize, 0usize);
        for &(start, len) in spans {
            // Whole pages inside the buffer only: its edges share pages
            // with the allocator's bookkeeping.
            let first = start.div_ceil(page) * page;
            let end = (start + len) / page * page;
            if end <= first {
                continue;
            }
            let mut vec = vec![0u8; (end - first) / page];
            // SAFETY: mincore only reads the page tables of this range,
            // which lies inside the allocator's mapped heap.
            let rc =
                unsafe { libc::mincore(first as *mut libc::c_void, end - first, vec.as_mut_ptr()) };
            // A failure means unmapped altogether: certainly not resident.
            if rc == 0 {
                yes += vec.iter().filter(|v| *v & 1 == 1).count();
            }
            all += vec.len();
        }
        yes as f64 / all.max(1) as f64
    }

    /// In a thread of its own (an arena of its own, as a worker has):
    /// allocates `count` buffers of `size` bytes, frees them, and reports
    /// how much of them is resident after the free and after a trim.
    fn free_then_trim(count: usize, size: usize) -> (f64, f64) {
        std::thread::spawn(move || {
            let blocks: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8 | 1; size]).collect();
            assert!(blocks.iter().all(|b| b[0] != 0));
            let spans: Vec<(usize, usize)> = blocks
                .iter()
                .map(|b| (b.as_ptr() as usize, b.len()))
                .collect();
            drop(blocks);
            let after_free = resident(&spans);
            trim();
            (after_free, resident(&spans))
        })
        .join()
        .expect("allocating thread")
    }

    #[test]
    fn a_busy_connections_buffers_stay_and_a_burst_goes_back() {
        tune_allocator();
        // What one busy connection frees (2 MiB of packet buffers, under
        // the threshold) stays mapped: no page faults to get it back.
        let (kept, _) = free_then_trim(64, 32 * 1024);
        assert!(kept > 0.9, "only {kept:.2} of freed packet buffers kept");
        // The end of a burst (32 MiB) goes back to the kernel, by itself
        // or through the trimmer.
        let (_, left) = free_then_trim(1024, 32 * 1024);
        assert!(left < 0.1, "{left:.2} of 32 MiB still resident after trim");
    }
}
