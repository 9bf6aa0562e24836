//! Returning freed heap to the kernel.
//!
//! glibc's allocator keeps memory a process has freed for its next allocations. An
//! agent's start-up decodes the whole store snapshot once (hundreds of MB at cluster
//! scale) and keeps a small part of it: without a trim its RSS stays at the peak.
#![allow(unsafe_code)]

/// Asks the allocator to give free heap pages back to the kernel (`malloc_trim(0)`).
/// Returns whether any memory was released. A no-op where the C library has no
/// `malloc_trim`.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a padding size and only walks the allocator's
        // own free lists under its locks; it has no preconditions on the caller.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
