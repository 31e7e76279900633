//! Quantized linear layers with our own CPU kernels for the GGUF formats we ship.
//!
//! candle has no SIMD dot product for Q4_1 (the default decoder's format), so its matmul falls
//! back to scalar code. Here weights are repacked at load into blocks with `f32` scales, each
//! activation row is quantized once to 8-bit blocks, and dot products run with AVX2 integer
//! multiply-adds (`avx2.rs`, when the CPU has them: see the parent module) or the portable
//! scalar code below. Work is split over rayon's pool: by output columns for a single row
//! (decode, memory-bound), by tiles of rows for many rows (prefill, compute-bound), where a
//! 4-row micro-kernel unpacks each weight block once for four activation rows.
//! Other GGUF formats fall back to candle's `QMatMul`.

use super::Isa;
use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use rayon::prelude::*;

/// Elements per block, for every format here.
const QK: usize = 32;
/// Bytes of one GGUF block: Q4_1 is f16 d, f16 m, 16 bytes of nibbles; Q8_0 is f16 d, 32 bytes.
const Q4_1_BYTES: usize = 2 + 2 + QK / 2;
const Q8_0_BYTES: usize = 2 + QK;

// The kernels read whole blocks as fixed-size arrays (a 256-bit load of 32 quants, 16 bytes of
// nibbles): these layouts are what they assume.
const _: () = {
    assert!(QK == 32);
    assert!(Q4_1_BYTES == 20 && Q8_0_BYTES == 34);
    assert!(size_of::<Q4Block>() == 4 + 4 + QK / 2);
    assert!(size_of::<Q8Block>() == 4 + QK);
    assert!(size_of::<ActBlock>() == 4 + 4 + QK);
};

/// Q4_1 weights: `x = d * q + m`, q in 0..16; low nibbles hold elements 0..16, high 16..32.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q4Block {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; 16],
}

/// Q8_0 weights: `x = d * q`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Q8Block {
    pub(super) d: f32,
    pub(super) qs: [i8; 32],
}

/// A quantized activation block: `x ≈ d * q`, with `s = d * Σq` for Q4_1's offset term.
#[derive(Debug, Clone, Copy)]
pub(super) struct ActBlock {
    pub(super) d: f32,
    pub(super) s: f32,
    pub(super) qs: [i8; 32],
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
                    raw.chunks_exact(Q4_1_BYTES)
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
                    raw.chunks_exact(Q8_0_BYTES)
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
        self.matmul_on(super::isa(), xs, m)
    }

    fn matmul_on(&self, isa: Isa, xs: &[f32], m: usize) -> Result<Vec<f32>> {
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
                .for_each(|(a, x)| quantize_row(x, a));
            acts
        };
        let dots = Dots::for_isa(isa);
        let mut out = vec![0f32; m * n];
        match &self.weights {
            Weights::Q4_1(w) => run(w, &quantize(), &mut out, m, n, kb, dots.q4, dots.q4_x4),
            Weights::Q8_0(w) => run(w, &quantize(), &mut out, m, n, kb, dots.q8, dots.q8_x4),
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

ragd_core::vectorized_fn! {
    /// Quantizes one row to 8-bit blocks (round to nearest, scale = max|x| / 127).
    fn quantize_row<'a>(x: &'a [f32], out: &'a mut [ActBlock]) -> () => quantize_blocks;
}

#[inline(always)]
fn quantize_blocks(x: &[f32], out: &mut [ActBlock]) {
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

/// The dot products one matmul runs with: a weight column against one activation row, or
/// against four rows at once (each weight block unpacked once for the four).
#[derive(Clone, Copy)]
pub(super) struct Dots {
    pub(super) q4: fn(&[Q4Block], &[ActBlock]) -> f32,
    pub(super) q4_x4: fn(&[Q4Block], [&[ActBlock]; 4]) -> [f32; 4],
    pub(super) q8: fn(&[Q8Block], &[ActBlock]) -> f32,
    pub(super) q8_x4: fn(&[Q8Block], [&[ActBlock]; 4]) -> [f32; 4],
}

impl Dots {
    const SCALAR: Dots = Dots {
        q4: scalar::dot_q4,
        q4_x4: scalar::dot_q4_x4,
        q8: scalar::dot_q8,
        q8_x4: scalar::dot_q8_x4,
    };

    fn for_isa(isa: Isa) -> Dots {
        match isa {
            Isa::Scalar => Self::SCALAR,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(v3) => super::avx2::dots(v3),
        }
    }
}

/// Portable kernels: the reference the SIMD ones are tested against, and the fallback.
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

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

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
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        // Both paths, whatever the CPU running the test: the detected one and the fallback.
        for isa in [super::super::isa(), Isa::Scalar] {
            let got = lin.matmul_on(isa, &x, m).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // Activations are quantized to 8 bits: allow ~1% of the output range.
                assert!(
                    (g - w).abs() <= 0.01 * scale,
                    "{dtype:?} {} m={m} [{i}]: {g} vs {w}",
                    isa.name()
                );
            }
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

    /// The detected kernels against the scalar ones on the same blocks (on a CPU without
    /// AVX2/FMA both sides are the scalar ones).
    #[test]
    fn simd_and_scalar_kernels_agree() {
        let fast = Dots::for_isa(super::super::isa());
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
                        ((fast.q4_x4)(wc, rows), scalar::dot_q4_x4(wc, rows))
                    }
                    Weights::Q8_0(b) => {
                        let wc = &b[col * 4..col * 4 + 4];
                        ((fast.q8_x4)(wc, rows), scalar::dot_q8_x4(wc, rows))
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
