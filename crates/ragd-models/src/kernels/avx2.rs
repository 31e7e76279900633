//! AVX2/FMA kernels for the quantized dot products. Loads go through `bytemuck::cast` of
//! fixed-size arrays, so the only `unsafe` is calling the `#[target_feature]` functions, in the
//! four wrappers that [`dots`] hands out.

use super::quant::{ActBlock, Dots, Q4Block, Q8Block};
use pulp::x86::V3;
use std::arch::x86_64::*;

/// The AVX2 kernels. Taking pulp's `V3` token (which pulp creates only after detecting AVX2, FMA
/// and the rest of x86-64-v3 on this CPU) is what makes the wrappers below sound.
pub(super) fn dots(_: V3) -> Dots {
    Dots {
        q4,
        q4_x4,
        q8,
        q8_x4,
    }
}

// SAFETY (all four): private, reachable only through `dots`, i.e. on a CPU with AVX2 and FMA.
fn q4(w: &[Q4Block], a: &[ActBlock]) -> f32 {
    unsafe { dot_q4(w, a) }
}
fn q4_x4(w: &[Q4Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
    unsafe { dot_q4_x4(w, a) }
}
fn q8(w: &[Q8Block], a: &[ActBlock]) -> f32 {
    unsafe { dot_q8(w, a) }
}
fn q8_x4(w: &[Q8Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
    unsafe { dot_q8_x4(w, a) }
}

#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
fn unpack_q4(qs: &[u8; 16]) -> __m256i {
    let lo: __m128i = bytemuck::cast(*qs);
    let hi = _mm_srli_epi16(lo, 4);
    _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
}

/// Σ u8 × i8 over 32 lanes, as 8 f32 partial sums.
#[target_feature(enable = "avx2,fma")]
fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

#[target_feature(enable = "avx2,fma")]
fn dot_q4(w: &[Q4Block], a: &[ActBlock]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let p = dot_u8_i8(unpack_q4(&wb.qs), bytemuck::cast(ab.qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), p, acc);
        mins += wb.m * ab.s;
    }
    hsum(acc) + mins
}

#[target_feature(enable = "avx2,fma")]
fn dot_q4_x4(w: &[Q4Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = _mm_setzero_ps();
    for (b, wb) in w.iter().enumerate() {
        let qx = unpack_q4(&wb.qs);
        let d = _mm256_set1_ps(wb.d);
        let rows = [&a[0][b], &a[1][b], &a[2][b], &a[3][b]];
        for (acc, ab) in acc.iter_mut().zip(rows) {
            let p = dot_u8_i8(qx, bytemuck::cast(ab.qs));
            *acc = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(ab.d)), p, *acc);
        }
        let s = _mm_set_ps(rows[3].s, rows[2].s, rows[1].s, rows[0].s);
        // Multiply, then add, as `dot_q4` does: a row's result must not depend on whether it
        // was computed alone or with three others (batched sessions write what they write
        // alone).
        mins = _mm_add_ps(_mm_mul_ps(_mm_set1_ps(wb.m), s), mins);
    }
    let m: [f32; 4] = bytemuck::cast(mins);
    [
        hsum(acc[0]) + m[0],
        hsum(acc[1]) + m[1],
        hsum(acc[2]) + m[2],
        hsum(acc[3]) + m[3],
    ]
}

#[target_feature(enable = "avx2,fma")]
fn dot_q8(w: &[Q8Block], a: &[ActBlock]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (wb, ab) in w.iter().zip(a) {
        let qx: __m256i = bytemuck::cast(wb.qs);
        // maddubs needs an unsigned operand: move x's sign onto y.
        let p = dot_u8_i8(
            _mm256_sign_epi8(qx, qx),
            _mm256_sign_epi8(bytemuck::cast(ab.qs), qx),
        );
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), p, acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma")]
fn dot_q8_x4(w: &[Q8Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, wb) in w.iter().enumerate() {
        let qx: __m256i = bytemuck::cast(wb.qs);
        let ax = _mm256_sign_epi8(qx, qx);
        let d = _mm256_set1_ps(wb.d);
        for (acc, rows) in acc.iter_mut().zip(a) {
            let ab = &rows[b];
            let p = dot_u8_i8(ax, _mm256_sign_epi8(bytemuck::cast(ab.qs), qx));
            *acc = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(ab.d)), p, *acc);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}
