//! A reusable buffer aligned for O_DIRECT writes.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// Alignment of O_DIRECT records: start offset, length and memory address.
/// 4 KiB covers every logical block size a disk reports.
pub const ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Heap memory aligned to [`ALIGN`], grown on demand and reused.
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the buffer owns its allocation; nothing else points into it.
unsafe impl Send for AlignedBuf {}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf {
            ptr: std::ptr::null_mut(),
            cap: 0,
        }
    }
}

impl AlignedBuf {
    /// The first `len` bytes (a multiple of [`ALIGN`]), holding whatever
    /// was written there before: the caller fills all of them.
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        debug_assert_eq!(len % ALIGN, 0);
        if len > self.cap {
            self.free();
            let cap = len.next_power_of_two();
            let layout = Layout::from_size_align(cap, ALIGN).expect("aligned buffer layout");
            // SAFETY: `layout` has a non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            self.ptr = ptr;
            self.cap = cap;
        }
        // SAFETY: `ptr` points at `cap >= len` initialised bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            let layout = Layout::from_size_align(self.cap, ALIGN).expect("aligned buffer layout");
            // SAFETY: allocated in `get` with this very layout.
            unsafe { dealloc(self.ptr, layout) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_grow() {
        let mut b = AlignedBuf::default();
        let small = b.get(ALIGN);
        assert_eq!(small.as_ptr() as usize % ALIGN, 0);
        small.fill(7);
        let big = b.get(5 * ALIGN);
        assert_eq!(big.len(), 5 * ALIGN);
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
        assert_eq!((align_up(0), align_up(1), align_up(4096)), (0, 4096, 4096));
    }
}
