//! Fused element-wise kernels and attention for the encoder and decoder.
//!
//! candle runs GELU, bias adds, residual adds, layer norms and masked softmax as separate passes
//! over memory, and its `exp`/`erf` are scalar libm calls; in the encoder those passes cost more
//! than the matmuls they surround (measured with perf). Each op here is one pass, with an `exp`
//! and `erf` written so the compiler vectorizes them. Every loop is `#[inline(always)]` and each
//! parallel task enters it through a function made by `ragd_core::vectorized_fn!`, so it is
//! compiled for AVX2/FMA when the CPU has them and for baseline x86-64 otherwise.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, bail};
use ragd_core::vectorized_fn;
use rayon::prelude::*;

/// `e^x`, vectorizable: relative error below 5e-7 for |x| < 10 and 1e-5 up to |x| = 87
/// (clamped outside [-87, 88]).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let t = x.clamp(-87.0, 88.0) * std::f32::consts::LOG2_E;
    // Adding 1.5 · 2^23 rounds `t` to the nearest integer n (ties to even) and leaves n in the
    // low mantissa bits, two's complement: shifted by 23 with the bias added, those bits are
    // 2^n's exponent field (|n| <= 127, and the constant's own low 9 bits are zero). A float to
    // int `as` cast would do it too, but Rust's saturating cast costs several vector
    // instructions more, in the hottest loop of softmax and GELU.
    let r = t + ROUNDER;
    let i = r - ROUNDER;
    let f = t - i; // |f| <= 0.5
    // Taylor series of 2^f to degree 6.
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11
                    + f * (0.009_618_129 + f * (0.001_333_355_8 + f * 0.000_154_035_3)))));
    f32::from_bits(r.to_bits().wrapping_add(127) << 23) * p
}

/// 1.5 · 2^23: added to a float of magnitude below 2^22, leaves it rounded to an integer (ties
/// to even, the default rounding) in the low mantissa bits.
pub(crate) const ROUNDER: f32 = 12_582_912.0;

/// erf(x) with absolute error below 2e-7 (Abramowitz & Stegun 7.1.26), vectorizable.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// Exact-form GELU, `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// SiLU gate times up-projection, `g·σ(g)·u`.
#[inline(always)]
pub(crate) fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// Reduces `x` with `op` over eight independent lanes, so the compiler can vectorize a
/// floating-point reduction it may not reorder itself.
/// `op` folds one element into a lane; `combine` merges two lanes.
#[inline(always)]
fn reduce8(
    x: &[f32],
    init: f32,
    op: impl Fn(f32, f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut lanes = [init; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(init, |a, &b| op(a, b));
    for c in chunks {
        for i in 0..8 {
            lanes[i] = op(lanes[i], c[i]);
        }
    }
    lanes.iter().fold(tail, |a, &b| combine(a, b))
}

/// Sum of a slice, vectorized.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    reduce8(x, 0.0, |a, b| a + b, |a, b| a + b)
}

/// Dot product over eight independent lanes (vectorizes; FMA via `mul_add`).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    sum(&acc) + tail
}

vectorized_fn! {
    /// In-place softmax of a row.
    fn softmax<'a>(row: &'a mut [f32]) -> () => softmax_in_place;
}

/// In-place softmax of a row (inlined into the caller's instruction set).
#[inline(always)]
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let max = reduce8(row, f32::NEG_INFINITY, f32::max, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

vectorized_fn! {
    /// Decoder attention for one query row against `t` cached keys and values (rows of
    /// `q.len()`): adds the softmax-weighted sum of the values to `out`. With `softcap` above 0
    /// the scores become `softcap · tanh(score / softcap)` first (Gemma 2).
    pub(crate) fn attend<'a>(
        q: &'a [f32],
        keys: &'a [f32],
        vals: &'a [f32],
        scale: f32,
        softcap: f32,
        out: &'a mut [f32],
    ) -> () => attend_row;
}

// The bodies below are plain loops: a closure handed to an iterator adapter (`map`, `fold`) is
// not guaranteed to be inlined into the AVX2 function, and outside it would be baseline code.
#[inline(always)]
fn attend_row(q: &[f32], keys: &[f32], vals: &[f32], scale: f32, softcap: f32, out: &mut [f32]) {
    let mut scores = vec![0f32; keys.len() / q.len()];
    for (s, k) in scores.iter_mut().zip(keys.chunks_exact(q.len())) {
        *s = dot(q, k) * scale;
    }
    if softcap > 0.0 {
        for s in scores.iter_mut() {
            *s = softcap * tanh(*s / softcap);
        }
    }
    softmax_in_place(&mut scores);
    weighted_rows(&scores, vals, out);
}

vectorized_fn! {
    /// SwiGLU activations: rows of gate|up (each half `ff` wide) to rows of `silu(g)·u`.
    pub(crate) fn swiglu<'a>(gate_up: &'a [f32], ff: usize) -> Vec<f32> => swiglu_rows;
}

#[inline(always)]
fn swiglu_rows(gate_up: &[f32], ff: usize) -> Vec<f32> {
    let mut out = vec![0f32; gate_up.len() / 2];
    for (o, r) in out.chunks_exact_mut(ff).zip(gate_up.chunks_exact(2 * ff)) {
        let (g, u) = r.split_at(ff);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = silu_mul(*g, *u);
        }
    }
    out
}

vectorized_fn! {
    /// GeGLU activations: rows of gate|up (each half `ff` wide) to rows of `gelu_tanh(g)·u`.
    pub(crate) fn geglu<'a>(gate_up: &'a [f32], ff: usize) -> Vec<f32> => geglu_rows;
}

#[inline(always)]
fn geglu_rows(gate_up: &[f32], ff: usize) -> Vec<f32> {
    let mut out = vec![0f32; gate_up.len() / 2];
    for (o, r) in out.chunks_exact_mut(ff).zip(gate_up.chunks_exact(2 * ff)) {
        let (g, u) = r.split_at(ff);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = gelu_tanh(*g) * u;
        }
    }
    out
}

/// `tanh(y) = 1 - 2/(e^{2y} + 1)`, vectorizable.
#[inline(always)]
pub(crate) fn tanh(y: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * y) + 1.0)
}

/// Tanh-approximated GELU, `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with
/// `tanh(y) = 1 - 2/(e^{2y} + 1)`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

vectorized_fn! {
    /// Root-mean-square norm of each row of `x` (rows of `w.len()`), scaled by `w`, into `out`.
    pub(crate) fn rms_norm<'a>(x: &'a [f32], w: &'a [f32], eps: f32, out: &'a mut [f32]) -> ()
        => rms_norm_rows;
}

#[inline(always)]
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let mut ms = 0f32;
        for v in xr {
            ms += v * v;
        }
        ms /= w.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

vectorized_fn! {
    /// `x += y`, element-wise.
    pub(crate) fn add<'a>(x: &'a mut [f32], y: &'a [f32]) -> () => add_rows;
}

#[inline(always)]
fn add_rows(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("fused op needs a contiguous input")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// Rows per parallel task: enough work to amortise scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (16_384 / row_len.max(1)).max(1)
}

/// `gelu(x + bias)` over rows of `bias.len()`.
#[derive(Debug)]
pub(crate) struct BiasGelu<'a> {
    pub bias: &'a [f32],
}

impl CustomOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let w = self.bias.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(w * rows_per_task(w))
            .zip(x.par_chunks(w * rows_per_task(w)))
            .for_each(|(o, x)| bias_gelu(o, x, self.bias));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

vectorized_fn! {
    fn bias_gelu<'a>(out: &'a mut [f32], x: &'a [f32], bias: &'a [f32]) -> () => bias_gelu_rows;
}

#[inline(always)]
fn bias_gelu_rows(out: &mut [f32], x: &[f32], bias: &[f32]) {
    let w = bias.len();
    for (or, xr) in out.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
        for ((o, x), b) in or.iter_mut().zip(xr).zip(bias) {
            *o = gelu(x + b);
        }
    }
}

/// `LayerNorm(x + bias + residual)` over rows of `bias.len()`: the end of every BERT sub-layer.
#[derive(Debug)]
pub(crate) struct BiasResidualNorm<'a> {
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl CustomOp2 for BiasResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "bias-residual-layernorm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, r) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if x.len() != r.len() {
            bail!("residual shape mismatch")
        }
        let w = self.bias.len();
        let chunk = w * rows_per_task(w);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(r.par_chunks(chunk)))
            .for_each(|(o, (x, r))| bias_residual_norm(self, o, x, r));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

vectorized_fn! {
    /// Rows of `LayerNorm(x + r + bias)`.
    fn bias_residual_norm<'a>(
        op: &'a BiasResidualNorm<'a>,
        out: &'a mut [f32],
        x: &'a [f32],
        r: &'a [f32],
    ) -> () => bias_residual_norm_rows;
}

#[inline(always)]
fn bias_residual_norm_rows(op: &BiasResidualNorm<'_>, out: &mut [f32], x: &[f32], r: &[f32]) {
    let w = op.bias.len();
    for ((or, xr), rr) in out
        .chunks_exact_mut(w)
        .zip(x.chunks_exact(w))
        .zip(r.chunks_exact(w))
    {
        for (((o, x), r), b) in or.iter_mut().zip(xr).zip(rr).zip(op.bias) {
            *o = x + r + b;
        }
        let mean = sum(or) / w as f32;
        for o in or.iter_mut() {
            *o -= mean;
        }
        let var = reduce8(or, 0.0, |a, v| a + v * v, |a, b| a + b) / w as f32;
        let inv = 1.0 / (var + op.eps).sqrt();
        for ((o, g), b) in or.iter_mut().zip(op.gamma).zip(op.beta) {
            *o = *o * inv * g + b;
        }
    }
}

/// Causal softmax over attention scores `(.., rows, t)` whose rows are `n` new tokens (repeated
/// for every head folded into the row dimension) after `past` cached ones: row `i mod n` sees
/// keys `0..=past + i mod n`; later keys get probability 0.
#[derive(Debug)]
pub(crate) struct CausalSoftmax {
    pub n: usize,
    pub past: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let t = *l.shape().dims().last().unwrap_or(&0);
        if t != self.past + self.n || self.n == 0 {
            bail!(
                "causal softmax: {t} keys for {} new after {} cached",
                self.n,
                self.past
            )
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(t)
            .enumerate()
            .with_min_len(16)
            .for_each(|(row, o)| {
                let visible = self.past + row % self.n + 1;
                softmax(&mut o[..visible]);
                o[visible..].fill(0.0);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Bidirectional multi-head attention straight from the fused Q|K|V projection.
///
/// Input: `(batch * seq, 3 * hidden)` rows of Q|K|V without their bias; output: `(batch * seq,
/// hidden)` context rows, heads side by side, ready for the output projection. Row `b` of the
/// batch has `lens[b]` real tokens: padded keys get no weight and padded queries produce zeros,
/// and neither costs any work. One task per sequence; each head's K is transposed into a small
/// buffer so scores are computed as vectorized row updates.
#[derive(Debug)]
pub(crate) struct Attention<'a> {
    pub bias: &'a [f32],
    pub lens: &'a [usize],
    pub heads: usize,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "bert-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let (rows, width) = l.shape().dims2()?;
        let hidden = width / 3;
        let batch = self.lens.len();
        if width != self.bias.len() || batch == 0 || rows % batch != 0 || hidden % self.heads != 0 {
            bail!("attention: bad input shape ({rows}, {width}) for batch {batch}")
        }
        let seq = rows / batch;
        // With 512-bit vectors, blocks twice as wide keep eight FMA chains in flight.
        #[cfg(target_arch = "x86_64")]
        let wide = ragd_core::cpu::wide().is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let wide = false;
        let mut out = vec![0f32; rows * hidden];
        out.par_chunks_mut(seq * hidden)
            .enumerate()
            .for_each(|(b, out)| {
                let len = self.lens[b].min(seq);
                let x = &x[b * seq * width..(b * seq + len) * width];
                attention_sequence(self, x, len, wide, out);
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }
}

vectorized_fn! {
    /// One sequence: `x` holds its `len` real Q|K|V rows; writes `len` context rows to `out`.
    fn attention_sequence<'a>(
        op: &'a Attention<'a>,
        x: &'a [f32],
        len: usize,
        wide: bool,
        out: &'a mut [f32],
    ) -> () => Attention::sequence;
}

impl Attention<'_> {
    #[inline(always)]
    fn sequence(&self, x: &[f32], len: usize, wide: bool, out: &mut [f32]) {
        let width = self.bias.len();
        let hidden = width / 3;
        let d = hidden / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        // Keys padded to a multiple of 8 (zeros, masked out below) so kernels run on full lanes.
        let lp = len.div_ceil(8) * 8;
        // Query rows padded to a multiple of 4 for the 4-row score kernel.
        let mut q = vec![0f32; len.div_ceil(4) * 4 * d];
        let mut kt = vec![0f32; d * lp];
        let mut v = vec![0f32; len * d];
        let mut scores = vec![0f32; 4 * lp];
        let mut ctx = vec![0f32; 4 * d];
        for h in 0..self.heads {
            let (qo, ko, vo) = (h * d, hidden + h * d, 2 * hidden + h * d);
            // Q and V rows are copies (vectorized); K's transpose is a scatter, in a loop of
            // its own so that it does not keep the copies scalar.
            for ((row, qr), vr) in x
                .chunks_exact(width)
                .zip(q.chunks_exact_mut(d))
                .zip(v.chunks_exact_mut(d))
            {
                let (qx, qb) = (&row[qo..qo + d], &self.bias[qo..qo + d]);
                for e in 0..d {
                    qr[e] = (qx[e] + qb[e]) * scale;
                }
                let (vx, vb) = (&row[vo..vo + d], &self.bias[vo..vo + d]);
                for e in 0..d {
                    vr[e] = vx[e] + vb[e];
                }
            }
            let kb = &self.bias[ko..ko + d];
            for (j, row) in x.chunks_exact(width).enumerate() {
                let kx = &row[ko..ko + d];
                for e in 0..d {
                    kt[e * lp + j] = kx[e] + kb[e];
                }
            }
            for i0 in (0..len).step_by(4) {
                if wide {
                    scores_x4::<32>(&q[i0 * d..(i0 + 4) * d], &kt, lp, &mut scores);
                } else {
                    scores_x4::<16>(&q[i0 * d..(i0 + 4) * d], &kt, lp, &mut scores);
                }
                let rows = (len - i0).min(4);
                for s in scores.chunks_exact_mut(lp).take(rows) {
                    softmax_in_place(&mut s[..len]);
                }
                // Padding rows (past `len`) hold finite scores of zero queries: computed with
                // the others, never written out.
                if wide {
                    weighted_rows_x4::<32>(&scores, lp, len, &v, &mut ctx);
                } else {
                    weighted_rows_x4::<16>(&scores, lp, len, &v, &mut ctx);
                }
                for (r, c) in ctx.chunks_exact(d).take(rows).enumerate() {
                    out[(i0 + r) * hidden + h * d..(i0 + r) * hidden + (h + 1) * d]
                        .copy_from_slice(c);
                }
            }
        }
    }
}

/// Scores of four query rows (`q`: 4 × d) against all keys: `scores[r][j] = q[r] · kt[.., j]`,
/// where `kt` is K transposed, `(d, lp)`. `W` keys at a time (16 for 256-bit vectors, 32 for
/// 512-bit ones): two register accumulators per row, eight independent FMA chains, so each
/// loaded key vector serves four queries.
#[inline(always)]
fn scores_x4<const W: usize>(q: &[f32], kt: &[f32], lp: usize, scores: &mut [f32]) {
    // `lp` is a multiple of 8: `W` keys at a time (two vectors per query row), then sixteen,
    // then eight.
    let mut jc = 0;
    while jc + W <= lp {
        score_block::<W>(q, kt, lp, jc, scores);
        jc += W;
    }
    while jc + 16 <= lp {
        score_block::<16>(q, kt, lp, jc, scores);
        jc += 16;
    }
    while jc < lp {
        score_block::<8>(q, kt, lp, jc, scores);
        jc += 8;
    }
}

/// [`scores_x4`] for keys `jc..jc + W`.
#[inline(always)]
fn score_block<const W: usize>(q: &[f32], kt: &[f32], lp: usize, jc: usize, scores: &mut [f32]) {
    let d = q.len() / 4;
    let mut acc = [[0f32; W]; 4];
    for e in 0..d {
        let k = &kt[e * lp + jc..e * lp + jc + W];
        for r in 0..4 {
            let qv = q[r * d + e];
            for l in 0..W {
                acc[r][l] = qv.mul_add(k[l], acc[r][l]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        scores[r * lp + jc..r * lp + jc + W].copy_from_slice(acc);
    }
}

/// Context rows of four queries: `ctx[r] = Σ_{j < len} p[r][j] · v[j]`, with `p` four rows of
/// `lp` probabilities and `v` `len` rows of `d = ctx.len() / 4`. `W` output lanes of the four rows
/// at a time (two vectors per row: eight independent FMA chains; one chain per lane group would
/// wait on the FMA latency at every key), each loaded value row serving four queries.
#[inline(always)]
fn weighted_rows_x4<const W: usize>(p: &[f32], lp: usize, len: usize, v: &[f32], ctx: &mut [f32]) {
    let d = ctx.len() / 4;
    let mut c = 0;
    while c + W <= d {
        weighted_block::<W>(p, lp, len, v, ctx, c);
        c += W;
    }
    while c + 16 <= d {
        weighted_block::<16>(p, lp, len, v, ctx, c);
        c += 16;
    }
    // Head sizes that are not a multiple of 16: the rest one lane at a time.
    for e in c..d {
        for r in 0..4 {
            let mut a = 0f32;
            for j in 0..len {
                a = p[r * lp + j].mul_add(v[j * d + e], a);
            }
            ctx[r * d + e] = a;
        }
    }
}

/// [`weighted_rows_x4`] for output lanes `c..c + W`.
#[inline(always)]
fn weighted_block<const W: usize>(
    p: &[f32],
    lp: usize,
    len: usize,
    v: &[f32],
    ctx: &mut [f32],
    c: usize,
) {
    let d = ctx.len() / 4;
    let mut acc = [[0f32; W]; 4];
    for j in 0..len {
        let vr = &v[j * d + c..j * d + c + W];
        for r in 0..4 {
            let pj = p[r * lp + j];
            for l in 0..W {
                acc[r][l] = pj.mul_add(vr[l], acc[r][l]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        ctx[r * d + c..r * d + c + W].copy_from_slice(acc);
    }
}

/// `out += Σ_j p[j] · v[j]` over rows of `v` (len × out.len()), eight output lanes at a time
/// held in registers.
#[inline(always)]
pub(crate) fn weighted_rows(p: &[f32], v: &[f32], out: &mut [f32]) {
    let d = out.len();
    for (c, o) in out.chunks_exact_mut(8).enumerate() {
        let mut acc = [0f32; 8];
        for (j, &pj) in p.iter().enumerate() {
            let vr = &v[j * d + c * 8..j * d + c * 8 + 8];
            for l in 0..8 {
                acc[l] = pj.mul_add(vr[l], acc[l]);
            }
        }
        for (o, a) in o.iter_mut().zip(acc) {
            *o += a;
        }
    }
    // Head sizes that are not a multiple of 8: the last lanes one by one.
    let done = d / 8 * 8;
    for (e, o) in out.iter_mut().enumerate().skip(done) {
        *o += p
            .iter()
            .enumerate()
            .map(|(j, pj)| pj * v[j * d + e])
            .sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_useful_range() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (got, want) = (exp(x), x.exp());
            // Range reduction in f32 loses ~|x|·ε; softmax and GELU only need this near 0.
            let tol = if x.abs() < 10.0 { 5e-7 } else { 1e-5 };
            assert!(
                ((got - want) / want).abs() < tol,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.173;
        }
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
    }

    #[test]
    fn erf_and_gelu_match_the_reference() {
        // erf reference values (from tables) at a few points.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x})");
            assert!((erf(-x) + want).abs() < 3e-7, "erf(-{x})");
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-3.0) - (-0.004_049_7)).abs() < 1e-6);
    }

    #[test]
    fn lane_reductions_match_sequential_ones() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        assert!((sum(&x) - x.iter().sum::<f32>()).abs() < 1e-5);
        assert!((dot(&x, &x) - x.iter().map(|v| v * v).sum::<f32>()).abs() < 1e-5);
        let sq = reduce8(&x, 0.0, |a, v| a + v * v, |a, b| a + b);
        assert!((sq - x.iter().map(|v| v * v).sum::<f32>()).abs() < 1e-5);
        let mx = reduce8(&x, f32::NEG_INFINITY, f32::max, f32::max);
        assert_eq!(mx, x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }

    /// Plain attention for one sequence, the reference for the fused op.
    fn naive_attention(x: &[f32], bias: &[f32], len: usize, heads: usize) -> Vec<f32> {
        let width = bias.len();
        let hidden = width / 3;
        let d = hidden / heads;
        let at = |j: usize, c: usize| x[j * width + c] + bias[c];
        let mut out = vec![0f32; len * hidden];
        for h in 0..heads {
            for i in 0..len {
                let mut s: Vec<f32> = (0..len)
                    .map(|j| {
                        (0..d)
                            .map(|e| at(i, h * d + e) * at(j, hidden + h * d + e))
                            .sum::<f32>()
                            / (d as f32).sqrt()
                    })
                    .collect();
                softmax_in_place(&mut s);
                for e in 0..d {
                    out[i * hidden + h * d + e] =
                        (0..len).map(|j| s[j] * at(j, 2 * hidden + h * d + e)).sum();
                }
            }
        }
        out
    }

    #[test]
    fn fused_attention_matches_naive_and_ignores_padding() {
        use candle_core::{Device, Tensor};
        // Seven tokens: partial blocks only; 37 tokens and 40-wide heads: a 32-key block and
        // 32 output lanes (the 512-bit blocking), then 8 keys, and 8 lanes one at a time.
        for (heads, d, seq) in [(2, 8, 7), (3, 12, 7), (2, 40, 37)] {
            let hidden = heads * d;
            let lens = [seq, 4];
            let vals: Vec<f32> = (0..2 * seq * 3 * hidden)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let bias: Vec<f32> = (0..3 * hidden).map(|i| (i % 5) as f32 * 0.1).collect();
            let t = Tensor::from_vec(vals.clone(), (2 * seq, 3 * hidden), &Device::Cpu).unwrap();
            let op = Attention {
                bias: &bias,
                lens: &lens,
                heads,
            };
            let got = t.apply_op1_no_bwd(&op).unwrap().to_vec2::<f32>().unwrap();
            for (b, &len) in lens.iter().enumerate() {
                let x = &vals[b * seq * 3 * hidden..(b * seq + len) * 3 * hidden];
                let want = naive_attention(x, &bias, len, heads);
                // The op (this CPU's blocking), then each blocking whatever the CPU.
                let mut blocked = [vec![0f32; seq * hidden], vec![0f32; seq * hidden]];
                for (wide, out) in [false, true].into_iter().zip(&mut blocked) {
                    attention_sequence(&op, x, len, wide, out);
                }
                for i in 0..seq {
                    for c in 0..hidden {
                        let w = if i < len { want[i * hidden + c] } else { 0.0 };
                        for g in [
                            got[b * seq + i][c],
                            blocked[0][i * hidden + c],
                            blocked[1][i * hidden + c],
                        ] {
                            assert!((g - w).abs() < 1e-4, "b{b} row{i} col{c}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn causal_softmax_hides_the_future_per_row() {
        use candle_core::{DType, Device, Tensor};
        // Two heads folded into rows, n = 2 new tokens after 1 cached: t = 3.
        let x = Tensor::zeros((1, 4, 3), DType::F32, &Device::Cpu).unwrap();
        let p = x
            .apply_op1_no_bwd(&CausalSoftmax { n: 2, past: 1 })
            .unwrap();
        let p = p.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for row in [0, 2] {
            assert_eq!(p[row], [0.5, 0.5, 0.0]);
        }
        for row in [1, 3] {
            assert!(p[row].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut r = vec![1.0, 2.0, 3.0, -50.0];
        softmax_in_place(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(r[2] > r[1] && r[1] > r[0]);
    }
}
