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
        debug_assert!(len.is_multiple_of(ALIGN));
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

/// Bytes read with O_DIRECT into an aligned allocation of their own, to be
/// handed on without a copy (`bytes::Bytes::from_owner`).
pub struct AlignedBytes {
    ptr: *mut u8,
    cap: usize,
    /// Bytes the read filled; only these are ever exposed.
    len: usize,
}

// SAFETY: the allocation is owned and never written after the read.
unsafe impl Send for AlignedBytes {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// Reads up to `len` bytes at `offset` (both multiples of [`ALIGN`])
    /// from `file`, opened with O_DIRECT; fewer at the end of the file.
    pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        debug_assert!(offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && len > 0);
        let layout = Layout::from_size_align(len, ALIGN)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `layout` has a non-zero size. The memory is handed to the
        // kernel only; no reference to it exists before the kernel fills it.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let mut out = AlignedBytes {
            ptr,
            cap: len,
            len: 0,
        };
        while out.len < len {
            // SAFETY: `ptr + out.len .. ptr + len` is ours and unaliased.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    ptr.add(out.len).cast(),
                    len - out.len,
                    (offset + out.len as u64) as libc::off_t,
                )
            };
            match n {
                0 => break,
                // Short: the end of the file. Asking again at an unaligned
                // offset would be refused.
                n if n > 0 && (n as usize) < len - out.len => {
                    out.len += n as usize;
                    break;
                }
                n if n > 0 => out.len += n as usize,
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were filled by the read.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("aligned bytes layout");
        // SAFETY: allocated in `read_at` with this very layout.
        unsafe { dealloc(self.ptr, layout) };
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

    #[test]
    fn a_direct_read_is_short_at_the_end_of_the_file() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * ALIGN + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => f,
            // A file system without O_DIRECT: nothing to test here.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("{e}"),
        };
        let got = AlignedBytes::read_at(&f, ALIGN as u64, 8 * ALIGN).unwrap();
        assert_eq!(got.as_ref(), &data[ALIGN..]);
        assert_eq!(got.as_ref().as_ptr() as usize % ALIGN, 0);
    }
}
