//! Run-time choice of the CPU instruction set for ragd's kernels.
//!
//! ragd is built for baseline x86-64 (no `target-cpu` flag), so one binary runs on any x86-64
//! CPU. The first call detects the CPU once (pulp's x86-64-v3 and -v4 checks, over
//! `is_x86_feature_detected!`) and logs the choice. Kernels written as plain Rust that the
//! compiler vectorizes are entered through [`vectorized_fn!`](crate::vectorized_fn), which
//! inlines them into a function compiled with AVX-512 (x86-64-v4: 16 f32 lanes) or AVX2/FMA
//! enabled when the CPU has them (so `mul_add` is one `vfmadd`, not a libm call), or runs the
//! baseline build of the same code otherwise. Inside such a kernel, keep hot loops as plain `for` loops: a closure handed to an
//! iterator adapter is not guaranteed to be inlined, and where it is not it runs as baseline
//! code. Hand-written intrinsics take the [`Isa::Avx2Fma`] token as their proof that the
//! features are there.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fastest this CPU supports (the default).
    Detected,
    /// At most AVX2/FMA, even on a CPU with AVX-512: the 256-bit build of the vectorized
    /// kernels (to compare the two on one machine).
    Avx2,
    /// The portable fallback, whatever the CPU: what a CPU without AVX2/FMA runs.
    Scalar,
}

/// The instruction set a kernel call runs with; the AVX2 variant carries pulp's proof that the
/// CPU has the features (x86-64-v3: AVX2, FMA, BMI1/2, LZCNT, ...). Hand-written intrinsics
/// take it; [`dispatch`] may still run the vectorized kernels with AVX-512 (see [`wide`]).
#[derive(Debug, Clone, Copy)]
pub enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(pulp::x86::V3),
}

impl Isa {
    /// `"avx2+fma"` or `"scalar"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(_) => "avx2+fma",
        }
    }
}

/// What detection found: the AVX2 token, and pulp's AVX-512 one (x86-64-v4: AVX-512
/// F/BW/CD/DQ/VL) when the CPU has it too.
#[derive(Debug, Clone, Copy)]
struct Detected {
    isa: Isa,
    #[cfg(target_arch = "x86_64")]
    v4: Option<pulp::x86::V4>,
}

/// The cap set by [`use_kernels`]: 0 detected, 1 AVX2, 2 scalar.
static CAP: AtomicU8 = AtomicU8::new(0);
static DETECTED: OnceLock<Detected> = OnceLock::new();

fn detected() -> Detected {
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let d = Detected {
            isa: pulp::x86::V3::try_new().map_or(Isa::Scalar, Isa::Avx2Fma),
            v4: pulp::x86::V4::try_new(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let d = Detected { isa: Isa::Scalar };
        tracing::info!(kernels = name(d, 0), "CPU kernels chosen for this machine");
        d
    })
}

fn name(d: Detected, cap: u8) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if cap == 0 && d.v4.is_some() {
        return "avx512";
    }
    if cap == 2 { "scalar" } else { d.isa.name() }
}

/// The instruction set for the next kernel call.
#[inline]
pub fn isa() -> Isa {
    if CAP.load(Ordering::Relaxed) == 2 {
        Isa::Scalar
    } else {
        detected().isa
    }
}

/// The AVX-512 token when the CPU has AVX-512 and no cap is set: [`dispatch`] then compiles
/// the vectorized kernels for 512-bit vectors. Kernels whose blocking depends on the vector
/// width (the attention's score blocks) ask it too.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn wide() -> Option<pulp::x86::V4> {
    if CAP.load(Ordering::Relaxed) == 0 {
        detected().v4
    } else {
        None
    }
}

/// Chooses the kernels for every later call in this process (detection still runs and is
/// logged once). For tests and benchmarks that compare the paths; servers never call it.
pub fn use_kernels(k: Kernels) {
    detected();
    let cap = match k {
        Kernels::Detected => 0,
        Kernels::Avx2 => 1,
        Kernels::Scalar => 2,
    };
    CAP.store(cap, Ordering::Relaxed);
}

/// The kernels in use: `"avx512"`, `"avx2+fma"` or `"scalar"`. Detects (and logs) on first
/// call, so model loading calls it to have the choice logged at start-up.
pub fn active() -> &'static str {
    name(detected(), CAP.load(Ordering::Relaxed))
}

#[doc(hidden)]
pub use pulp;

/// Runs `op` compiled for the instruction set in use: its `#[inline(always)]` `with_simd` is
/// inlined into a function built with AVX-512 or AVX2/FMA enabled when the CPU has them. (A closure would
/// not do: nothing forces a large closure to be inlined into that function, and outside it the
/// code is the baseline build.) [`vectorized_fn!`](crate::vectorized_fn) writes the `op`.
#[inline(always)]
pub fn dispatch<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = wide() {
        return pulp::Simd::vectorize(v4, op);
    }
    dispatch_avx2(op)
}

/// [`dispatch`] without the AVX-512 tier: for short kernels that 512-bit vectors do not
/// speed up (the vector index's 384-wide dot product measured 7% slower with them: a wider
/// horizontal sum per call), and whose floats should not depend on the CPU having AVX-512.
#[inline(always)]
pub fn dispatch_avx2<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    match isa() {
        Isa::Scalar => op.with_simd(pulp::Scalar::new()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(v3) => pulp::Simd::vectorize(v3, op),
    }
}

/// Defines `fn name<'a>(args) -> R` that calls the `#[inline(always)]` function `body` with its
/// arguments through [`dispatch`], so `body` (and everything it inlines) is compiled once per
/// instruction set and the CPU's best one runs. Argument types may borrow for `'a`.
/// `=> avx2 body` goes through [`dispatch_avx2`] instead (no AVX-512 build).
///
/// ```ignore
/// ragd_core::vectorized_fn! {
///     /// `x += y`.
///     pub fn add<'a>(x: &'a mut [f32], y: &'a [f32]) -> () => add_body;
/// }
/// ```
#[macro_export]
macro_rules! vectorized_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident<'a>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $body:path;) => {
        $crate::vectorized_fn! { @with dispatch $(#[$m])* $vis fn $name<'a>($($arg: $ty),*) -> $ret => $body; }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident<'a>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => avx2 $body:path;) => {
        $crate::vectorized_fn! { @with dispatch_avx2 $(#[$m])* $vis fn $name<'a>($($arg: $ty),*) -> $ret => $body; }
    };
    (@with $dispatch:ident $(#[$m:meta])* $vis:vis fn $name:ident<'a>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $body:path;) => {
        $(#[$m])*
        $vis fn $name<'a>($($arg: $ty),*) -> $ret {
            struct Args<'a> {
                $($arg: $ty,)*
                _borrow: ::std::marker::PhantomData<&'a ()>,
            }
            impl<'a> $crate::cpu::pulp::WithSimd for Args<'a> {
                type Output = $ret;
                #[inline(always)]
                fn with_simd<S: $crate::cpu::pulp::Simd>(self, _: S) -> $ret {
                    let Args { $($arg,)* .. } = self;
                    $body($($arg),*)
                }
            }
            $crate::cpu::$dispatch(Args {
                $($arg,)*
                _borrow: ::std::marker::PhantomData,
            })
        }
    };
}
