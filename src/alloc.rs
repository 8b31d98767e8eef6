//! The global allocator: mimalloc, asked through its plain entry points when
//! the alignment wanted is one every mimalloc block has anyway.
//!
//! Why not the `mimalloc` crate's allocator as it is: it calls
//! `mi_malloc_aligned` for every allocation, and in mimalloc 3.x a block
//! over 1 KiB then takes the generic aligned path (about 490 instructions
//! against about 100 for `mi_malloc`). A proxy allocates such blocks on every
//! request: HTTP/2 request futures are boxed (~3.7 KB), read buffers, frame
//! buffers. Every mimalloc block is aligned to 8 bytes (block sizes are whole
//! words and the first block of a page is 16-byte aligned), so for an
//! alignment of 8 or less the plain calls give the same guarantee.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as ffi;

/// Alignment every block from `mi_malloc` has.
const WORD_ALIGN: usize = 8;

/// mimalloc as the global allocator (see the module doc).
pub struct Allocator;

// SAFETY: every method hands the layout's size (and, where a block might not
// have it otherwise, its alignment) to mimalloc, whose blocks are at least
// `WORD_ALIGN`-aligned, and frees only what mimalloc allocated.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; see above for the alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                ffi::mi_malloc(layout.size()) as *mut u8
            } else {
                ffi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                ffi::mi_zalloc(layout.size()) as *mut u8
            } else {
                ffi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { ffi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new block keeps its alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                ffi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                ffi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for_at_every_size() {
        let allocator = Allocator;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 24, 48, 100, 1000, 1024, 1500, 3700, 4096, 70_000, 1 << 20] {
                let size = size.max(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout.
                unsafe {
                    let block = allocator.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "size {size} align {align}");
                    block.write_bytes(0xa5, size);
                    let grown = allocator.realloc(block, layout, size * 2);
                    assert_eq!(grown as usize % align, 0, "realloc: size {size} align {align}");
                    assert_eq!(*grown.add(size - 1), 0xa5, "realloc keeps the contents");
                    allocator.dealloc(grown, Layout::from_size_align(size * 2, align).unwrap());
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0);
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|&b| b == 0));
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }
}
