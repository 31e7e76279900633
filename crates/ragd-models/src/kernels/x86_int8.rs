//! x86 kernels for [`int8`](super::int8)'s micro-tile: AVX-512 VNNI (`vpdpbusd`) and AVX2
//! (`vpmaddubsw`). Each computes, for up to [`MR`] activation rows and one panel of [`NR`]
//! columns, the exact `i32` dot products over the whole row. Loads are unaligned loads of
//! bounds-checked slices; the `unsafe` is the pointer loads and calling `#[target_feature]`
//! functions, reachable only with a token that proves the CPU has the features.

use super::int8::{GROUP_BYTES, KG, MR, NR};
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

/// Activations are offset by 128 (unsigned bytes).
pub(super) fn vnni_tile(
    _: Vnni,
    a: &[u8],
    kp: usize,
    mr: usize,
    panel: &[i8],
    acc: &mut [[i32; NR]; MR],
) {
    check(a, kp, mr, panel);
    // SAFETY: the token proves AVX-512 F/BW/VNNI; `check` bounds every load.
    unsafe {
        match mr {
            1 => vnni::<1>(a, kp, panel, acc),
            2 => vnni::<2>(a, kp, panel, acc),
            3 => vnni::<3>(a, kp, panel, acc),
            4 => vnni::<4>(a, kp, panel, acc),
            5 => vnni::<5>(a, kp, panel, acc),
            _ => vnni::<MR>(a, kp, panel, acc),
        }
    }
}

/// Activations are signed bytes.
pub(super) fn avx2_tile(
    _: V3,
    a: &[u8],
    kp: usize,
    mr: usize,
    panel: &[i8],
    acc: &mut [[i32; NR]; MR],
) {
    check(a, kp, mr, panel);
    // SAFETY: pulp's `V3` token proves AVX2; `check` bounds every load.
    unsafe {
        match mr {
            1 => avx2::<1>(a, kp, panel, acc),
            2 => avx2::<2>(a, kp, panel, acc),
            3 => avx2::<3>(a, kp, panel, acc),
            4 => avx2::<4>(a, kp, panel, acc),
            5 => avx2::<5>(a, kp, panel, acc),
            _ => avx2::<MR>(a, kp, panel, acc),
        }
    }
}

/// The loads below read `a[r * kp + 4g ..][..4]` for `r < mr`, and `panel[g * 64 ..][..64]`,
/// for `g < kp / 4`.
fn check(a: &[u8], kp: usize, mr: usize, panel: &[i8]) {
    assert!((1..=MR).contains(&mr) && kp.is_multiple_of(KG));
    assert!(a.len() >= mr * kp && panel.len() >= kp / KG * GROUP_BYTES);
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
fn vnni<const R: usize>(a: &[u8], kp: usize, panel: &[i8], out: &mut [[i32; NR]; MR]) {
    let mut acc = [_mm512_setzero_si512(); R];
    for g in 0..kp / KG {
        // SAFETY: within `panel` and `a` (see `check`).
        let w = unsafe { _mm512_loadu_si512(panel.as_ptr().add(g * GROUP_BYTES).cast()) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_epi32(unsafe { four(a, r * kp + g * KG) });
            *acc = _mm512_dpbusd_epi32(*acc, x, w);
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 i32s.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), acc) };
    }
}

#[target_feature(enable = "avx2,fma")]
fn avx2<const R: usize>(a: &[u8], kp: usize, panel: &[i8], out: &mut [[i32; NR]; MR]) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..kp / KG {
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
            // SAFETY: within `a` (see `check`).
            let x = _mm256_set1_epi32(unsafe { four(a, r * kp + g * KG) });
            for h in 0..2 {
                // |w| · (x with w's sign): exact, pair sums ≤ 2 · 127 · 127.
                let p16 = _mm256_maddubs_epi16(aw[h], _mm256_sign_epi8(x, w[h]));
                acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(p16, ones));
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 i32s: two stores of 8.
        unsafe {
            _mm256_storeu_si256(o.as_mut_ptr().cast(), acc[0]);
            _mm256_storeu_si256(o.as_mut_ptr().add(8).cast(), acc[1]);
        }
    }
}
