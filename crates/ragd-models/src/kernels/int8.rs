//! int8 linear layers for the encoder's `int8` precision.
//!
//! Weights are quantized once, at load, to signed 8 bits with one scale per output channel;
//! activations are quantized on the fly to 8 bits with one scale per block of [`KB`] values of a
//! row (a whole-row scale lets BERT's few large hidden dimensions flatten the others: a
//! one-token query lost 2% of cosine that way). A product is an exact integer dot product per
//! block, scaled and summed in f32, and scaled once by the column:
//! `y[r][c] = sw[c] · Σ_b sa[r][b] · Σ_{k ∈ b} qa[r][k] · qw[c][k]`.
//!
//! Weights are packed in panels of [`NR`] output columns, four consecutive `k` per column
//! (`[panel][k / 4][column][4]`, 64 bytes per group of four `k`): one 512-bit load feeds sixteen
//! columns, and four activation bytes broadcast to every lane complete the product with one
//! `vpdpbusd` (AVX-512 VNNI, [`x86_int8`](super::x86_int8)). No horizontal sums: each lane of an
//! accumulator is one output. `vpdpbusd` multiplies unsigned by signed bytes, so on that path
//! activations are stored offset by 128 and `128 · Σ_{k ∈ b} qw[c][k]` is taken back out of
//! each column's block sum. CPUs with AVX2 but no VNNI run the same layout with `vpmaddubsw` (the activation's
//! sign moved onto the weight: |qw| · ±qa, whose pair sums stay within 16 bits because both
//! sides are at most 127 in magnitude), and others a portable scalar loop. Every path computes
//! the same integers, so they differ only in float rounding.

use super::Isa;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Output columns in a weight panel: one 512-bit vector of `i32` accumulators.
pub(super) const NR: usize = 16;
/// `k` values per column in one packed group (the four bytes `vpdpbusd` sums into a lane).
pub(super) const KG: usize = 4;
/// Bytes of one packed group of a panel.
pub(super) const GROUP_BYTES: usize = NR * KG;
/// Activation values sharing one scale (a multiple of [`KG`]).
pub(super) const KB: usize = 64;
/// Packed groups in one activation block.
pub(super) const GROUPS_PER_BLOCK: usize = KB / KG;
/// Rows of a micro-tile.
pub(super) const MR: usize = 6;
/// Rows per parallel task (several micro-tiles reuse a panel while it is in L1).
const ROWS_PER_TASK: usize = 4 * MR;

/// Which int8 kernels run.
#[derive(Debug, Clone, Copy)]
pub(super) enum Int8Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    #[cfg(target_arch = "x86_64")]
    Vnni(super::x86_int8::Vnni),
}

impl Int8Isa {
    /// The best int8 kernels for `isa` on this CPU (AVX-512 VNNI when the CPU has it).
    pub(super) fn for_isa(isa: Isa) -> Self {
        match isa {
            Isa::Scalar => Int8Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(v3) => {
                super::x86_int8::Vnni::detect().map_or(Int8Isa::Avx2(v3), Int8Isa::Vnni)
            }
        }
    }

    /// `"avx512-vnni"`, `"avx2"` or `"scalar"`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Int8Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Vnni(_) => "avx512-vnni",
        }
    }

    /// Activations are stored offset by 128 (as unsigned bytes) for `vpdpbusd`.
    fn offset_activations(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Int8Isa::Vnni(_) = self {
            return true;
        }
        false
    }
}

/// The int8 kernels chosen for this CPU (logged once).
pub fn int8_kernels() -> &'static str {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    let name = Int8Isa::for_isa(super::isa()).name();
    LOGGED.call_once(|| tracing::info!(kernels = name, "int8 encoder kernels chosen"));
    name
}

/// A linear layer `y = x Wᵀ` (no bias) with `W` of shape (n, k) quantized to int8.
#[derive(Debug)]
pub struct Int8Linear {
    n: usize,
    k: usize,
    /// `k` rounded up to [`KB`].
    kp: usize,
    /// Columns rounded up to whole panels.
    np: usize,
    /// Panels of [`NR`] columns (the last padded with zero columns), see the module docs.
    panels: Vec<i8>,
    /// Per column (padded to whole panels with zeros): the weight scale.
    scale: Vec<f32>,
    /// Per activation block, then per column (padded likewise): `128 · Σ_{k ∈ block} qw`,
    /// taken out of the offset activations' products.
    offset: Vec<i32>,
}

impl Int8Linear {
    /// Quantizes `w`, `n` rows of `k` values (PyTorch's `(out, in)` layout), per row.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k || n == 0 || k == 0 {
            return Err(Error::InvalidInput(format!(
                "int8 linear: {} weights is not {n} × {k}",
                w.len()
            )));
        }
        let kp = k.div_ceil(KB) * KB;
        let np = n.div_ceil(NR) * NR;
        let groups = kp / KG;
        let mut panels = vec![0i8; np * kp];
        let mut scale = vec![0f32; np];
        let mut offset = vec![0i32; kp / KB * np];
        for (c, row) in w.chunks_exact(k).enumerate() {
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = amax / 127.0;
            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
            let (p, col) = (c / NR, c % NR);
            for (i, v) in row.iter().enumerate() {
                let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
                let (g, t) = (i / KG, i % KG);
                panels[p * groups * GROUP_BYTES + g * GROUP_BYTES + col * KG + t] = q;
                offset[i / KB * np + c] += 128 * q as i32;
            }
            scale[c] = s;
        }
        Ok(Self {
            n,
            k,
            kp,
            np,
            panels,
            scale,
            offset,
        })
    }

    /// `xs` holds `m` rows of `k` values; returns `m` rows of `n`.
    pub fn matmul(&self, xs: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_on(Int8Isa::for_isa(super::isa()), xs, m)
    }

    pub(super) fn matmul_on(&self, isa: Int8Isa, xs: &[f32], m: usize) -> Result<Vec<f32>> {
        let (n, k, kp) = (self.n, self.k, self.kp);
        if xs.len() != m * k {
            return Err(Error::InvalidInput(format!(
                "int8 linear expects {m} rows of {k} inputs, got {} values",
                xs.len()
            )));
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        let offset = isa.offset_activations();
        let nb = kp / KB;
        let mut qa = vec![0u8; m * kp];
        let mut sa = vec![0f32; m * nb];
        qa.par_chunks_mut(kp)
            .zip(sa.par_chunks_mut(nb))
            .zip(xs.par_chunks(k))
            .with_min_len(16)
            .for_each(|((q, s), x)| quantize_row(x, q, s, offset));
        let mut out = vec![0f32; m * n];
        let panels = n.div_ceil(NR);
        let run = |rows: std::ops::Range<usize>,
                   cols: std::ops::Range<usize>,
                   out: &mut [f32],
                   ld: usize,
                   col0: usize| {
            let mut acc = [[0f32; NR]; MR];
            let mut r = rows.start;
            while r < rows.end {
                let mr = (rows.end - r).min(MR);
                let a = Tile {
                    q: &qa[r * kp..(r + mr) * kp],
                    scales: &sa[r * nb..(r + mr) * nb],
                    rows: mr,
                    kp,
                };
                for p in cols.clone() {
                    let panel = &self.panels[p * kp * NR..(p + 1) * kp * NR];
                    let off = &self.offset[p * NR..];
                    self.tile(isa, &a, panel, off, &mut acc);
                    let c0 = p * NR;
                    let width = (n - c0).min(NR);
                    let sw: &[f32; NR] = self.scale[c0..c0 + NR].try_into().unwrap_or(&[0.0; NR]);
                    for (i, acc_row) in acc.iter().take(mr).enumerate() {
                        let at = (r - rows.start + i) * ld + c0 - col0;
                        // Stored in place: a 64-byte `copy_from_slice` of a runtime width is
                        // a `memmove` call per row (9% of the int8 encoder's time, perf).
                        for ((o, a), s) in out[at..at + width].iter_mut().zip(acc_row).zip(sw) {
                            *o = a * s;
                        }
                    }
                }
                r += mr;
            }
        };
        if m >= 2 * ROWS_PER_TASK {
            out.par_chunks_mut(ROWS_PER_TASK * n)
                .enumerate()
                .for_each(|(t, tile)| {
                    let r0 = t * ROWS_PER_TASK;
                    run(r0..r0 + tile.len() / n, 0..panels, tile, n, 0);
                });
        } else {
            // Few rows (a query): split the columns instead.
            let parts: Vec<(usize, Vec<f32>)> = (0..panels)
                .into_par_iter()
                .map(|p| {
                    let width = (n - p * NR).min(NR);
                    let mut part = vec![0f32; m * width];
                    run(0..m, p..p + 1, &mut part, width, p * NR);
                    (p, part)
                })
                .collect();
            for (p, part) in parts {
                let width = part.len() / m.max(1);
                for (r, src) in part.chunks_exact(width).enumerate() {
                    out[r * n + p * NR..r * n + p * NR + width].copy_from_slice(src);
                }
            }
        }
        Ok(out)
    }

    /// Products of a tile of activation rows with one panel, before the column scales; `off`
    /// is the offset table from the panel's first column on (rows of `np`).
    fn tile(&self, isa: Int8Isa, a: &Tile, panel: &[i8], off: &[i32], acc: &mut [[f32; NR]; MR]) {
        match isa {
            Int8Isa::Scalar => scalar_tile(a, panel, acc),
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Avx2(v3) => super::x86_int8::avx2_tile(v3, a, panel, acc),
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Vnni(t) => super::x86_int8::vnni_tile(t, a, panel, off, self.np, acc),
        }
    }
}

/// Up to [`MR`] quantized activation rows.
pub(super) struct Tile<'a> {
    /// `rows` rows of `kp` bytes.
    pub(super) q: &'a [u8],
    /// `rows` rows of `kp / KB` block scales.
    pub(super) scales: &'a [f32],
    pub(super) rows: usize,
    pub(super) kp: usize,
}

/// As a candle op, so that the product reads the input tensor's storage in place and hands its
/// output over without copies.
impl candle_core::CustomOp1 for Int8Linear {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (m, _) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("int8 linear needs a contiguous input")
        };
        let y = self
            .matmul(&s.as_slice::<f32>()?[start..end], m)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((candle_core::CpuStorage::F32(y), (m, self.n).into()))
    }
}

ragd_core::vectorized_fn! {
    /// Quantizes one row to signed 8 bits per block of [`KB`] values (scale = max|x| / 127,
    /// round half to even), stored as bytes, offset by 128 when `offset`; the tail up to `kp`
    /// is the encoding of 0. Writes each block's scale.
    fn quantize_row<'a>(x: &'a [f32], out: &'a mut [u8], scales: &'a mut [f32], offset: bool) -> () => quantize_body;
}

#[inline(always)]
fn quantize_body(x: &[f32], out: &mut [u8], scales: &mut [f32], offset: bool) {
    let flip = if offset { 0x80 } else { 0 };
    for (b, (q, s)) in out.chunks_mut(KB).zip(scales.iter_mut()).enumerate() {
        let x = &x[(b * KB).min(x.len())..((b + 1) * KB).min(x.len())];
        *s = quantize_block(x, q, flip);
    }
}

/// One block: returns its scale.
#[inline(always)]
fn quantize_block(x: &[f32], out: &mut [u8], flip: u8) -> f32 {
    // Eight running maxima (a plain `f32::max` fold is a serial chain of scalar compares).
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let a = c[l].abs();
            lanes[l] = if a > lanes[l] { a } else { lanes[l] };
        }
    }
    for v in chunks.remainder() {
        lanes[0] = lanes[0].max(v.abs());
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let s = amax / 127.0;
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    for (q, v) in out.iter_mut().zip(x) {
        // Clamped: a block of subnormals can round to 128, which AVX2's sign trick cannot negate.
        // Rounded (ties to even) by adding `ROUNDER`: the integer's low byte is then the low
        // byte of the sum's bits (a saturating `as` cast would cost more than the rest).
        let r = (v * inv).clamp(-127.0, 127.0) + super::fused::ROUNDER;
        *q = (r.to_bits() as u8) ^ flip;
    }
    for q in out.iter_mut().skip(x.len()) {
        *q = flip;
    }
    s
}

/// The portable kernel: signed activations, the reference for the SIMD ones.
fn scalar_tile(a: &Tile, panel: &[i8], acc: &mut [[f32; NR]; MR]) {
    let nb = a.kp / KB;
    for (i, acc_row) in acc.iter_mut().take(a.rows).enumerate() {
        let row = &a.q[i * a.kp..(i + 1) * a.kp];
        *acc_row = [0.0; NR];
        for b in 0..nb {
            let mut sums = [0i32; NR];
            let groups = &panel
                [b * GROUPS_PER_BLOCK * GROUP_BYTES..(b + 1) * GROUPS_PER_BLOCK * GROUP_BYTES];
            for (g, group) in groups.chunks_exact(GROUP_BYTES).enumerate() {
                let at = (b * GROUPS_PER_BLOCK + g) * KG;
                let x = &row[at..at + KG];
                for (j, w) in group.chunks_exact(KG).enumerate() {
                    for t in 0..KG {
                        sums[j] += x[t] as i8 as i32 * w[t] as i32;
                    }
                }
            }
            let s = a.scales[i * nb + b];
            for j in 0..NR {
                // Fused, as the SIMD kernels' `vfmadd`, so every path rounds alike.
                acc_row[j] = (sums[j] as f32).mul_add(s, acc_row[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    fn reference(w: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
            }
        }
        out
    }

    fn isas() -> Vec<Int8Isa> {
        let mut v = vec![Int8Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx2Fma(v3) = super::super::isa() {
            v.push(Int8Isa::Avx2(v3));
            if let Some(t) = super::super::x86_int8::Vnni::detect() {
                v.push(Int8Isa::Vnni(t));
            }
        }
        v
    }

    /// Every path against f32 on shapes that leave partial panels, groups and tiles, both the
    /// row-parallel and the column-parallel split.
    #[test]
    fn int8_products_match_f32_on_every_path() {
        for (m, n, k) in [
            (1, 20, 7),
            (5, 33, 64),
            (13, 16, 130),
            (50, 40, 96),
            (61, 17, 384),
        ] {
            let w = data(n * k, 1 + m as u64);
            let x = data(m * k, 2 + n as u64);
            let want = reference(&w, &x, m, n, k);
            let lin = Int8Linear::quantize(&w, n, k).unwrap();
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let mut first: Option<Vec<f32>> = None;
            for isa in isas() {
                let got = lin.matmul_on(isa, &x, m).unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 0.02 * scale,
                        "{} m={m} n={n} k={k} [{i}]: {g} vs {w}",
                        isa.name()
                    );
                }
                // The integer products are exact: every path gives the same floats.
                match &first {
                    None => first = Some(got),
                    Some(f) => assert_eq!(f, &got, "{} differs from scalar", isa.name()),
                }
            }
        }
    }

    /// The rounding by addition against the plain cast: ties to even, both signs, the clamp,
    /// zero, the offset encoding and the zero-filled tail.
    #[test]
    fn activations_round_half_to_even_and_clamp() {
        // Block maximum 127 (scale 1): the values are their own quantized values.
        let mut x = vec![
            127.0f32, -127.0, 0.0, -0.0, 2.5, 3.5, -2.5, -3.5, 0.49, -126.6,
        ];
        x.extend(data(KB + 9 - x.len(), 7).iter().map(|v| v * 254.0));
        let kp = (x.len()).div_ceil(KB) * KB;
        for offset in [false, true] {
            let mut q = vec![0u8; kp];
            let mut scales = vec![0f32; kp / KB];
            quantize_row(&x, &mut q, &mut scales, offset);
            let flip = if offset { 0x80 } else { 0 };
            for (b, block) in x.chunks(KB).enumerate() {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(scales[b], amax / 127.0);
                let inv = 1.0 / (amax / 127.0);
                for (i, v) in block.iter().enumerate() {
                    let want = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8;
                    assert_eq!(
                        q[b * KB + i],
                        want ^ flip,
                        "{v} (block {b}, offset {offset})"
                    );
                }
            }
            assert!(q[x.len()..].iter().all(|&t| t == flip));
            assert_eq!(
                &q[4..8],
                &[
                    2u8 ^ flip,
                    4 ^ flip,
                    (-2i8) as u8 ^ flip,
                    (-4i8) as u8 ^ flip
                ]
            );
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert!(Int8Linear::quantize(&[1.0; 6], 2, 4).is_err());
        let lin = Int8Linear::quantize(&[1.0; 8], 2, 4).unwrap();
        assert!(lin.matmul(&[1.0; 7], 2).is_err());
        assert!(lin.matmul(&[], 0).unwrap().is_empty());
        assert_eq!(lin.matmul(&[0.5; 4], 1).unwrap(), vec![2.0, 2.0]);
    }
}
