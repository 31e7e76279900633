//! Quantized linear layers with our own CPU kernels for the GGUF formats we ship.
//!
//! candle has no SIMD dot product for Q4_1 (the default decoder's format), so its matmul falls
//! back to scalar code. Here weights are repacked at load into blocks with `f32` scales, each
//! activation row is quantized once to 8-bit blocks, and dot products run with AVX2 integer
//! multiply-adds (when the build targets AVX2/FMA, as `.cargo/config.toml` does) or portable
//! scalar code otherwise. Work is split over rayon's pool: by output columns for a single row
//! (decode, memory-bound), by tiles of rows for many rows (prefill, compute-bound), where a
//! 4-row micro-kernel unpacks each weight block once for four activation rows.
//! Other GGUF formats fall back to candle's `QMatMul`.

use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use rayon::prelude::*;

/// Elements per block, for every format here.
const QK: usize = 32;

/// Q4_1 weights: `x = d * q + m`, q in 0..16; low nibbles hold elements 0..16, high 16..32.
#[derive(Debug, Clone, Copy)]
struct Q4Block {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

/// Q8_0 weights: `x = d * q`.
#[derive(Debug, Clone, Copy)]
struct Q8Block {
    d: f32,
    qs: [i8; 32],
}

/// A quantized activation block: `x ≈ d * q`, with `s = d * Σq` for Q4_1's offset term.
#[derive(Debug, Clone, Copy)]
struct ActBlock {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

#[derive(Debug)]
enum Weights {
    Q4_1(Vec<Q4Block>),
    Q8_0(Vec<Q8Block>),
    /// Any other GGUF type: candle's own kernels.
    Candle(QMatMul),
}

/// A bias-free linear layer `y = x Wᵀ` with `W` of shape (n, k), stored quantized.
#[derive(Debug)]
pub struct QLinear {
    weights: Weights,
    n: usize,
    k: usize,
}

impl QLinear {
    /// Takes a GGUF tensor of shape (n, k). Q4_1 and Q8_0 get our kernels.
    pub fn from_qtensor(t: QTensor) -> Result<Self> {
        let (n, k) = t.shape().dims2()?;
        let weights = match t.dtype() {
            GgmlDType::Q4_1 if k % QK == 0 => {
                let raw = t.data()?;
                Weights::Q4_1(
                    raw.chunks_exact(20)
                        .map(|b| Q4Block {
                            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                            m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                            qs: b[4..20].try_into().unwrap_or([0; 16]),
                        })
                        .collect(),
                )
            }
            GgmlDType::Q8_0 if k % QK == 0 => {
                let raw = t.data()?;
                Weights::Q8_0(
                    raw.chunks_exact(34)
                        .map(|b| Q8Block {
                            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                            qs: std::array::from_fn(|i| b[2 + i] as i8),
                        })
                        .collect(),
                )
            }
            _ => Weights::Candle(QMatMul::from_qtensor(t)?),
        };
        let lin = Self { weights, n, k };
        let expected = n * (k / QK);
        let got = match &lin.weights {
            Weights::Q4_1(b) => b.len(),
            Weights::Q8_0(b) => b.len(),
            Weights::Candle(_) => expected,
        };
        if got != expected {
            return Err(Error::InvalidInput(format!(
                "quantized tensor ({n}, {k}) holds {got} blocks, expected {expected}"
            )));
        }
        Ok(lin)
    }

    /// Stacks layers with the same input size and format along the output dimension, so that
    /// e.g. the Q, K and V projections run as one matmul. Hands the parts back when they cannot
    /// be stacked (different input sizes, or a format without our kernels).
    pub fn stack(parts: Vec<QLinear>) -> std::result::Result<QLinear, Vec<QLinear>> {
        let Some(first) = parts.first() else {
            return Err(parts);
        };
        let k = first.k;
        let same = |p: &QLinear| {
            p.k == k
                && matches!(
                    (&p.weights, &first.weights),
                    (Weights::Q4_1(_), Weights::Q4_1(_)) | (Weights::Q8_0(_), Weights::Q8_0(_))
                )
        };
        if !parts.iter().all(same) {
            return Err(parts);
        }
        let n = parts.iter().map(|p| p.n).sum();
        let mut q4 = Vec::new();
        let mut q8 = Vec::new();
        for p in parts {
            match p.weights {
                Weights::Q4_1(b) => q4.extend(b),
                Weights::Q8_0(b) => q8.extend(b),
                Weights::Candle(_) => {}
            }
        }
        let weights = if q8.is_empty() {
            Weights::Q4_1(q4)
        } else {
            Weights::Q8_0(q8)
        };
        Ok(Self { weights, n, k })
    }

    /// Output size.
    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// `xs` holds `m` rows of `k` values; returns `m` rows of `n`.
    pub fn matmul(&self, xs: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        if xs.len() != m * k {
            return Err(Error::InvalidInput(format!(
                "linear expects {m} rows of {k} inputs, got {} values",
                xs.len()
            )));
        }
        let kb = k / QK;
        let quantize = || {
            let mut acts = vec![
                ActBlock {
                    d: 0.0,
                    s: 0.0,
                    qs: [0; 32]
                };
                m * kb
            ];
            acts.par_chunks_mut(kb)
                .zip(xs.par_chunks(k))
                .with_min_len(16)
                .for_each(|(a, x)| {
                    quantize_row(x, a);
                });
            acts
        };
        let mut out = vec![0f32; m * n];
        match &self.weights {
            Weights::Q4_1(w) => run(w, &quantize(), &mut out, m, n, kb, dot_q4, dot_q4_x4),
            Weights::Q8_0(w) => run(w, &quantize(), &mut out, m, n, kb, dot_q8, dot_q8_x4),
            Weights::Candle(q) => {
                let x = Tensor::from_slice(xs, (m, k), &Device::Cpu)?;
                return Ok(q.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok(out)
    }
}

/// Output columns per task for single-row products.
const COLS_PER_TASK: usize = 64;
/// Activation rows per task for multi-row products.
const ROWS_PER_TASK: usize = 16;

#[allow(clippy::too_many_arguments)]
fn run<B: Sync>(
    w: &[B],
    acts: &[ActBlock],
    out: &mut [f32],
    m: usize,
    n: usize,
    kb: usize,
    dot: fn(&[B], &[ActBlock]) -> f32,
    dot4: fn(&[B], [&[ActBlock]; 4]) -> [f32; 4],
) {
    if m < 4 {
        for (row, out_row) in out.chunks_mut(n).enumerate() {
            let a = &acts[row * kb..(row + 1) * kb];
            out_row
                .par_chunks_mut(COLS_PER_TASK)
                .enumerate()
                .for_each(|(t, chunk)| {
                    for (j, o) in chunk.iter_mut().enumerate() {
                        let col = t * COLS_PER_TASK + j;
                        *o = dot(&w[col * kb..(col + 1) * kb], a);
                    }
                });
        }
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(t, tile)| {
            let row0 = t * ROWS_PER_TASK;
            let rows = tile.len() / n;
            let arow = |r: usize| &acts[(row0 + r) * kb..(row0 + r + 1) * kb];
            for col in 0..n {
                let wc = &w[col * kb..(col + 1) * kb];
                let mut r = 0;
                while r + 4 <= rows {
                    let d = dot4(wc, [arow(r), arow(r + 1), arow(r + 2), arow(r + 3)]);
                    for (i, v) in d.into_iter().enumerate() {
                        tile[(r + i) * n + col] = v;
                    }
                    r += 4;
                }
                while r < rows {
                    tile[r * n + col] = dot(wc, arow(r));
                    r += 1;
                }
            }
        });
}

/// Quantizes one row to 8-bit blocks (round to nearest, scale = max|x| / 127).
fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    for (src, dst) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in dst.qs.iter_mut().zip(src) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        dst.d = d;
        dst.s = d * sum as f32;
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[allow(unsafe_code)]
mod simd {
    //! AVX2 kernels. Loads go through `bytemuck::cast` of fixed-size arrays, so the only
    //! `unsafe` is calling `#[target_feature]` functions, in the four safe wrappers below.
    use super::{ActBlock, Q4Block, Q8Block};
    use std::arch::x86_64::*;

    // SAFETY (all four wrappers): this module is compiled only when the build itself enables
    // AVX2 and FMA (see the `cfg` above and `.cargo/config.toml`), so any CPU able to run this
    // binary has both features.
    pub(super) fn dot_q4(w: &[Q4Block], a: &[ActBlock]) -> f32 {
        unsafe { imp::dot_q4(w, a) }
    }
    pub(super) fn dot_q4_x4(w: &[Q4Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
        unsafe { imp::dot_q4_x4(w, a) }
    }
    pub(super) fn dot_q8(w: &[Q8Block], a: &[ActBlock]) -> f32 {
        unsafe { imp::dot_q8(w, a) }
    }
    pub(super) fn dot_q8_x4(w: &[Q8Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
        unsafe { imp::dot_q8_x4(w, a) }
    }

    mod imp {
        use super::*;

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
        pub(super) fn dot_q4(w: &[Q4Block], a: &[ActBlock]) -> f32 {
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
        pub(super) fn dot_q4_x4(w: &[Q4Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
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
                mins = _mm_fmadd_ps(_mm_set1_ps(wb.m), s, mins);
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
        pub(super) fn dot_q8(w: &[Q8Block], a: &[ActBlock]) -> f32 {
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
        pub(super) fn dot_q8_x4(w: &[Q8Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
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
    }
}

/// Portable kernels: the reference the SIMD ones are tested against, and the fallback.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    allow(dead_code)
)]
mod scalar {
    use super::{ActBlock, Q4Block, Q8Block};

    pub(super) fn dot_q4(w: &[Q4Block], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(wb, ab)| {
                let mut s = 0i32;
                for j in 0..16 {
                    s += (wb.qs[j] & 0x0F) as i32 * ab.qs[j] as i32;
                    s += (wb.qs[j] >> 4) as i32 * ab.qs[j + 16] as i32;
                }
                wb.d * ab.d * s as f32 + wb.m * ab.s
            })
            .sum()
    }

    pub(super) fn dot_q8(w: &[Q8Block], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(wb, ab)| {
                let s: i32 = wb
                    .qs
                    .iter()
                    .zip(&ab.qs)
                    .map(|(x, y)| *x as i32 * *y as i32)
                    .sum();
                wb.d * ab.d * s as f32
            })
            .sum()
    }

    pub(super) fn dot_q4_x4(w: &[Q4Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
        a.map(|r| dot_q4(w, r))
    }

    pub(super) fn dot_q8_x4(w: &[Q8Block], a: [&[ActBlock]; 4]) -> [f32; 4] {
        a.map(|r| dot_q8(w, r))
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
use simd::{dot_q4, dot_q4_x4, dot_q8, dot_q8_x4};

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
use scalar::{dot_q4, dot_q4_x4, dot_q8, dot_q8_x4};

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len).map(|_| lcg(&mut s)).collect()
    }

    /// Reference: dequantize the weights and multiply in f32.
    fn reference(w: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = w.shape().dims2().unwrap();
        let wf = w
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] * wf[c][i]).sum();
            }
        }
        out
    }

    fn check(dtype: GgmlDType, m: usize, n: usize, k: usize) {
        let w = Tensor::from_vec(data(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let x = data(m * k, 2);
        let want = reference(&q, &x, m);
        let lin = QLinear::from_qtensor(q).unwrap();
        let got = lin.matmul(&x, m).unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Activations are quantized to 8 bits: allow ~1% of the output range.
            assert!(
                (g - w).abs() <= 0.01 * scale,
                "{dtype:?} m={m} [{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn q4_1_matches_dequantized_reference() {
        for m in [1, 3, 4, 7, 33] {
            check(GgmlDType::Q4_1, m, 70, 96);
        }
    }

    #[test]
    fn q8_0_matches_dequantized_reference() {
        for m in [1, 5, 16, 21] {
            check(GgmlDType::Q8_0, m, 130, 64);
        }
    }

    #[test]
    fn simd_and_scalar_kernels_agree() {
        let w = Tensor::from_vec(data(8 * 128, 3), (8, 128), &Device::Cpu).unwrap();
        let x = data(4 * 128, 4);
        let mut acts = vec![
            ActBlock {
                d: 0.0,
                s: 0.0,
                qs: [0; 32]
            };
            16
        ];
        for (a, xr) in acts.chunks_mut(4).zip(x.chunks(128)) {
            quantize_row(xr, a);
        }
        let rows = [&acts[0..4], &acts[4..8], &acts[8..12], &acts[12..16]];
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let lin = QLinear::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            for col in 0..8 {
                let (fast, slow) = match &lin.weights {
                    Weights::Q4_1(b) => {
                        let wc = &b[col * 4..col * 4 + 4];
                        (dot_q4_x4(wc, rows), scalar::dot_q4_x4(wc, rows))
                    }
                    Weights::Q8_0(b) => {
                        let wc = &b[col * 4..col * 4 + 4];
                        (dot_q8_x4(wc, rows), scalar::dot_q8_x4(wc, rows))
                    }
                    Weights::Candle(_) => unreachable!(),
                };
                for (f, s) in fast.iter().zip(slow) {
                    assert!(
                        (f - s).abs() <= 1e-4 * s.abs().max(1.0),
                        "{dtype:?}: {f} vs {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn stacking_concatenates_outputs() {
        let a = Tensor::from_vec(data(6 * 64, 5), (6, 64), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(data(10 * 64, 6), (10, 64), &Device::Cpu).unwrap();
        let q = |t: &Tensor| {
            QLinear::from_qtensor(QTensor::quantize(t, GgmlDType::Q4_1).unwrap()).unwrap()
        };
        let x = data(5 * 64, 7);
        let (ya, yb) = (q(&a).matmul(&x, 5).unwrap(), q(&b).matmul(&x, 5).unwrap());
        let stacked = QLinear::stack(vec![q(&a), q(&b)])
            .map_err(|_| "not stacked")
            .unwrap();
        assert_eq!(stacked.out_dim(), 16);
        let y = stacked.matmul(&x, 5).unwrap();
        for r in 0..5 {
            assert_eq!(&y[r * 16..r * 16 + 6], &ya[r * 6..r * 6 + 6]);
            assert_eq!(&y[r * 16 + 6..r * 16 + 16], &yb[r * 10..r * 10 + 10]);
        }
    }
}
