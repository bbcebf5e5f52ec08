//! glibc `malloc` settings for tensor workloads on the CPU.
//!
//! The Flex backend allocates a fresh buffer for nearly every tensor operation, most of them
//! between a few hundred KiB and a few MiB. glibc serves allocations above its mmap threshold
//! (128 KiB at start, raised on the fly up to 32 MiB) with `mmap` and returns them with
//! `munmap`, and trims the heap top above 128 KiB, so every training step maps, page-faults,
//! zeroes and unmaps the same memory again: about a tenth of a step of the `mnist` preset
//! (measured with `perf`: page faults, kernel zeroing and cgroup accounting). Keeping the
//! buffers in the heap instead is what `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…` does;
//! [`retain_freed_memory`] sets the same from inside the process.

/// Serves allocations up to 32 MiB from the heap and keeps up to 1 GiB of freed memory for
/// reuse instead of returning it to the OS. Call once at start-up, before the first tensor.
/// Does nothing on other platforms and C libraries.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // allocate (at start-up), and invalid values are rejected by returning 0.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
