//! Keeps freed tensor memory inside the process.
//!
//! A training step allocates and frees the same large buffers (hundreds of MB of
//! activations and gradients at 224x224) over and over. glibc serves allocations
//! above its mmap threshold with fresh `mmap`s and returns them with `munmap`, so
//! every step pays page faults and kernel page zeroing for all of them (measured:
//! a third of the CPU time of a step in `sys`). Turning mmap allocation and heap
//! trimming off makes freed buffers reusable by the next step; the resident size
//! then stays at the step's peak instead of going up and down.

/// Tunes the allocator as described above; call once at the start of `main`. A no-op
/// outside glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        if std::env::var_os("FENNEC_NO_MALLOPT").is_some() {
            return;
        }
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
