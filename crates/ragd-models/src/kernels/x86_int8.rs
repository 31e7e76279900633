//! x86 kernels for [`int8`](super::int8)'s micro-tile: AVX-512 VNNI (`vpdpbusd`) and AVX2
//! (`vpmaddubsw`). Each computes, for up to [`MR`] activation rows and one panel of [`NR`]
//! columns, the exact `i32` dot product of each activation block, then adds it times the
//! block's scale to an f32 sum. Loads are unaligned loads of slices whose bounds are asserted
//! first; the `unsafe` is the pointer loads and calling `#[target_feature]` functions, reachable
//! only with a token that proves the CPU has the features.

use super::int8::{GROUP_BYTES, GROUPS_PER_BLOCK, KB, KG, MR, NR, Tile};
use pulp::x86::V3;
use std::arch::x86_64::*;

/// Proof that this CPU has AVX-512 F/BW and VNNI: only [`Vnni::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Vnni(());

impl Vnni {
    pub(super) fn detect() -> Option<Self> {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let has = *HAS.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        });
        has.then_some(Vnni(()))
    }
}

/// Activations are offset by 128 (unsigned bytes); `off` holds each block's `128 · Σ qw` from
/// the panel's first column, in rows of `np`.
pub(super) fn vnni_tile(
    _: Vnni,
    a: &Tile,
    panel: &[i8],
    off: &[i32],
    np: usize,
    acc: &mut [[f32; NR]; MR],
) {
    check(a, panel);
    let nb = a.kp / KB;
    assert!(nb == 0 || off.len() >= (nb - 1) * np + NR);
    // SAFETY: the token proves AVX-512 F/BW/VNNI; the asserts bound every load.
    unsafe {
        match a.rows {
            1 => vnni::<1>(a, panel, off, np, acc),
            2 => vnni::<2>(a, panel, off, np, acc),
            3 => vnni::<3>(a, panel, off, np, acc),
            4 => vnni::<4>(a, panel, off, np, acc),
            5 => vnni::<5>(a, panel, off, np, acc),
            _ => vnni::<MR>(a, panel, off, np, acc),
        }
    }
}

/// Activations are signed bytes.
pub(super) fn avx2_tile(_: V3, a: &Tile, panel: &[i8], acc: &mut [[f32; NR]; MR]) {
    check(a, panel);
    // SAFETY: pulp's `V3` token proves AVX2 and FMA; `check` bounds every load.
    unsafe {
        match a.rows {
            1 => avx2::<1>(a, panel, acc),
            2 => avx2::<2>(a, panel, acc),
            3 => avx2::<3>(a, panel, acc),
            4 => avx2::<4>(a, panel, acc),
            5 => avx2::<5>(a, panel, acc),
            _ => avx2::<MR>(a, panel, acc),
        }
    }
}

/// The loads below read `a.q[r * kp + 4g ..][..4]` and `a.scales[r * nb + b]` for `r < rows`,
/// and `panel[g * 64 ..][..64]`, for `g < kp / 4`.
fn check(a: &Tile, panel: &[i8]) {
    assert!((1..=MR).contains(&a.rows) && a.kp.is_multiple_of(KB));
    assert!(a.q.len() >= a.rows * a.kp && a.scales.len() >= a.rows * (a.kp / KB));
    assert!(panel.len() >= a.kp / KG * GROUP_BYTES);
}

/// Four activation bytes as one `i32`, to broadcast.
///
/// # Safety
/// `at + 4 <= a.len()` (see `check`).
#[inline(always)]
unsafe fn four(a: &[u8], at: usize) -> i32 {
    debug_assert!(at + KG <= a.len());
    // SAFETY: the caller's bound.
    unsafe { a.as_ptr().add(at).cast::<i32>().read_unaligned() }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn vnni<const R: usize>(a: &Tile, panel: &[i8], off: &[i32], np: usize, out: &mut [[f32; NR]; MR]) {
    let (kp, nb) = (a.kp, a.kp / KB);
    let mut sum = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let mut acc = [_mm512_setzero_si512(); R];
        for g in b * GROUPS_PER_BLOCK..(b + 1) * GROUPS_PER_BLOCK {
            // SAFETY: within `panel` and `a.q` (see `check`).
            let w = unsafe { _mm512_loadu_si512(panel.as_ptr().add(g * GROUP_BYTES).cast()) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(unsafe { four(a.q, r * kp + g * KG) });
                *acc = _mm512_dpbusd_epi32(*acc, x, w);
            }
        }
        // SAFETY: within `off` (asserted by the caller).
        let o = unsafe { _mm512_loadu_si512(off.as_ptr().add(b * np).cast()) };
        for (r, (sum, acc)) in sum.iter_mut().zip(acc).enumerate() {
            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, o));
            *sum = _mm512_fmadd_ps(exact, _mm512_set1_ps(a.scales[r * nb + b]), *sum);
        }
    }
    for (o, sum) in out.iter_mut().zip(sum) {
        // SAFETY: `o` is 16 f32s.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), sum) };
    }
}

#[target_feature(enable = "avx2,fma")]
fn avx2<const R: usize>(a: &Tile, panel: &[i8], out: &mut [[f32; NR]; MR]) {
    let (kp, nb) = (a.kp, a.kp / KB);
    let ones = _mm256_set1_epi16(1);
    let mut sum = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..nb {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in b * GROUPS_PER_BLOCK..(b + 1) * GROUPS_PER_BLOCK {
            let p = g * GROUP_BYTES;
            // SAFETY: within `panel` (see `check`).
            let w = unsafe {
                [
                    _mm256_loadu_si256(panel.as_ptr().add(p).cast()),
                    _mm256_loadu_si256(panel.as_ptr().add(p + 32).cast()),
                ]
            };
            let aw = [_mm256_sign_epi8(w[0], w[0]), _mm256_sign_epi8(w[1], w[1])];
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: within `a.q` (see `check`).
                let x = _mm256_set1_epi32(unsafe { four(a.q, r * kp + g * KG) });
                for h in 0..2 {
                    // |w| · (x with w's sign): exact, pair sums ≤ 2 · 127 · 127.
                    let p16 = _mm256_maddubs_epi16(aw[h], _mm256_sign_epi8(x, w[h]));
                    acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(p16, ones));
                }
            }
        }
        for (r, (sum, acc)) in sum.iter_mut().zip(acc).enumerate() {
            let s = _mm256_set1_ps(a.scales[r * nb + b]);
            for h in 0..2 {
                sum[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[h]), s, sum[h]);
            }
        }
    }
    for (o, sum) in out.iter_mut().zip(sum) {
        // SAFETY: `o` is 16 f32s: two stores of 8.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), sum[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), sum[1]);
        }
    }
}
