//! Which path a call takes — a hand-written kernel or Burn's own op — and proof of it.
//!
//! Every router takes its fast path only through [`crate::flex_tensor`]'s two entry points
//! (a plain Flex primitive, or an autodiff node on Flex), and both ask [`enabled`] first, so
//! [`with_burn_ops`] sends a whole computation (a U-Net forward and backward, say) through
//! Burn's ops for comparison. Each kernel counts its passes per thread ([`calls`]): tests run
//! in parallel, and a process-wide counter could move because of another test. A kernel counts
//! on the thread that called it, before any work is handed to other threads.

use std::cell::Cell;

/// A kernel whose passes [`calls`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Convolution through im2col + `gemm` (or its dispatcher, which may go direct).
    Conv2d,
    /// A direct stride-1 convolution: AVX-512, or relaxed SIMD on WebAssembly.
    Conv2dDirect,
    /// GroupNorm (with or without the SiLU folded in).
    GroupNorm,
    /// SiLU on its own.
    Silu,
    /// Residual sum, FiLM (+ SiLU) and the channel concatenation.
    Elementwise,
    /// Dropout's mask pass (forward and backward are the same pass).
    Dropout,
    /// Self-attention of small maps.
    SelfAttention,
}

/// A kernel's forward or backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// The forward pass.
    Forward,
    /// The backward pass (an autodiff node's gradient).
    Backward,
}

const KERNELS: usize = 7;
// The counters are indexed by `Kernel as usize`: a new variant must grow the table.
const _: () = assert!(Kernel::SelfAttention as usize + 1 == KERNELS);

thread_local! {
    static CALLS: [[Cell<usize>; 2]; KERNELS] = Default::default();
    static BURN_OPS: Cell<bool> = const { Cell::new(false) };
}

/// How often this thread has run `kernel`'s hand-written `pass` (never Burn's fallback).
/// Compare the counts before and after a call to prove the fast path ran.
pub fn calls(kernel: Kernel, pass: Pass) -> usize {
    CALLS.with(|c| c[kernel as usize][pass as usize].get())
}

/// Counts one `pass` of `kernel` on this thread.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn hit(kernel: Kernel, pass: Pass) {
    CALLS.with(|c| {
        let cell = &c[kernel as usize][pass as usize];
        cell.set(cell.get() + 1);
    });
}

/// Whether the routers on this thread may take their fast path (false inside
/// [`with_burn_ops`]).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn enabled() -> bool {
    !BURN_OPS.with(Cell::get)
}

/// Runs `f` with every router on this thread going to Burn's own op, then restores the
/// previous setting (also when `f` panics). Gradients of tensors built inside flow through
/// Burn's backward passes, since no kernel node was recorded.
pub fn with_burn_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BURN_OPS.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BURN_OPS.with(|b| b.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_burn_ops_nests_and_restores() {
        assert!(enabled());
        with_burn_ops(|| {
            assert!(!enabled());
            with_burn_ops(|| assert!(!enabled()));
            assert!(!enabled());
        });
        assert!(enabled());
        let unwound = std::panic::catch_unwind(|| with_burn_ops(|| panic!("inside")));
        assert!(unwound.is_err());
        assert!(enabled());
    }

    #[test]
    fn counts_are_per_thread() {
        let before = calls(Kernel::Silu, Pass::Backward);
        hit(Kernel::Silu, Pass::Backward);
        assert_eq!(calls(Kernel::Silu, Pass::Backward), before + 1);
        std::thread::spawn(|| assert_eq!(calls(Kernel::Silu, Pass::Backward), 0))
            .join()
            .unwrap();
    }
}
