//! What a `no_std` component needs from its runtime — and nothing that would
//! import from the host: memory comes from `memory.grow`, a panic is a trap, and
//! the few libc symbols the compiler emits calls to are defined here. A guest that
//! links `std` (feature `std`) brings its own allocator, panic handler and libc.

#[cfg(not(feature = "std"))]
use core::ffi::c_void;

#[cfg(not(feature = "std"))]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(not(feature = "std"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocator: the host calls it to place lists and strings
/// in the guest's memory.
///
/// # Safety
/// Called by the host per the canonical ABI: `old` was returned by this
/// function with `old_len` and `align`, or `old_len` is 0.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        return align as *mut u8;
    }
    let ptr = if old_len == 0 {
        match Layout::from_size_align(new_len, align) {
            // SAFETY: non-zero size.
            Ok(layout) => unsafe { alloc(layout) },
            Err(_) => core::ptr::null_mut(),
        }
    } else {
        match Layout::from_size_align(old_len, align) {
            // SAFETY: `old` was allocated with this layout (caller contract).
            Ok(layout) => unsafe { realloc(old, layout, new_len) },
            Err(_) => core::ptr::null_mut(),
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable()
    }
    ptr
}

/// `memcmp`, which slice comparisons lower to. On `wasm32-wasip2` it normally
/// comes from wasi-libc; a zero-import component links no libc.
///
/// # Safety
/// `a` and `b` must be valid for reads of `n` bytes.
#[cfg(not(feature = "std"))]
#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32 {
    let (a, b) = (a.cast::<u8>(), b.cast::<u8>());
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes at a and b.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp`: the equality-only `memcmp` LLVM may emit instead.
///
/// # Safety
/// As [`memcmp`].
#[cfg(not(feature = "std"))]
#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const c_void, b: *const c_void, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
