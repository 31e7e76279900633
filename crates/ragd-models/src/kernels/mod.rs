//! The CPU kernels under the models, with the instruction set chosen at run time.
//!
//! The binary is built for baseline x86-64 (no `target-cpu` flag), so it runs on any x86-64 CPU.
//! The first model load detects the CPU's features once (`ragd_core::cpu`) and logs the choice:
//!
//! - [`quant`]: quantized linear layers. Dot products are hand-written AVX2 intrinsics
//!   ([`avx2`]) or portable scalar code, picked per call from a table of function pointers.
//! - [`fused`]: fused element-wise ops and attention, plain Rust written so the compiler
//!   vectorizes it. Each hot loop is entered through a function made by
//!   `ragd_core::vectorized_fn!`, which inlines it into a function compiled with AVX2/FMA enabled
//!   when the CPU has them (so `mul_add` is one `vfmadd`, not a libm call), or runs the baseline
//!   build of the same code otherwise.
//!
//! - [`int8`]: int8 linear layers for the encoder's `int8` precision: exact integer products
//!   with AVX-512 VNNI or AVX2 ([`x86_int8`]), or portable scalar code.
//!
//! f32 matrix products go to candle, whose `gemm` backend does its own run-time detection.
//! [`use_kernels`] forces the scalar path (tests compare the two paths with it). Detection and
//! the choice live in `ragd_core::cpu`, shared with the vector index's distance.

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2;
pub(crate) mod fused;
pub(crate) mod int8;
pub(crate) mod quant;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86_int8;

pub use int8::int8_kernels;

/// Deterministic values in [-0.5, 0.5) for the kernels' tests (an LCG: no dependency, the same
/// data on every run).
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}
pub(crate) use ragd_core::cpu::{Isa, isa};
pub use ragd_core::cpu::{Kernels, active, use_kernels};
