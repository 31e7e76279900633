//! Run-time choice of the CPU instruction set for ragd's kernels.
//!
//! ragd is built for baseline x86-64 (no `target-cpu` flag), so one binary runs on any x86-64
//! CPU. The first call detects the CPU once (pulp's x86-64-v3 check, over
//! `is_x86_feature_detected!`) and logs the choice. Kernels written as plain Rust that the
//! compiler vectorizes are entered through [`vectorized_fn!`](crate::vectorized_fn), which
//! inlines them into a function compiled with AVX2/FMA enabled when the CPU has them (so
//! `mul_add` is one `vfmadd`, not a libm call), or runs the baseline build of the same code
//! otherwise. Inside such a kernel, keep hot loops as plain `for` loops: a closure handed to an
//! iterator adapter is not guaranteed to be inlined, and where it is not it runs as baseline
//! code. Hand-written intrinsics take the [`Isa::Avx2Fma`] token as their proof that the
//! features are there.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fastest this CPU supports (the default).
    Detected,
    /// The portable fallback, whatever the CPU: what a CPU without AVX2/FMA runs.
    Scalar,
}

/// The instruction set a kernel call runs with; the AVX2 variant carries pulp's proof that the
/// CPU has the features (x86-64-v3: AVX2, FMA, BMI1/2, LZCNT, ...).
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

static FORCE_SCALAR: AtomicBool = AtomicBool::new(false);
static DETECTED: OnceLock<Isa> = OnceLock::new();

fn detected() -> Isa {
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let isa = pulp::x86::V3::try_new().map_or(Isa::Scalar, Isa::Avx2Fma);
        #[cfg(not(target_arch = "x86_64"))]
        let isa = Isa::Scalar;
        tracing::info!(kernels = isa.name(), "CPU kernels chosen for this machine");
        isa
    })
}

/// The instruction set for the next kernel call.
#[inline]
pub fn isa() -> Isa {
    if FORCE_SCALAR.load(Ordering::Relaxed) {
        Isa::Scalar
    } else {
        detected()
    }
}

/// Chooses the kernels for every later call in this process (detection still runs and is
/// logged once). For tests and benchmarks that compare the paths; servers never call it.
pub fn use_kernels(k: Kernels) {
    detected();
    FORCE_SCALAR.store(k == Kernels::Scalar, Ordering::Relaxed);
}

/// The kernels in use: `"avx2+fma"` or `"scalar"`. Detects (and logs) on first call, so model
/// loading calls it to have the choice logged at start-up.
pub fn active() -> &'static str {
    isa().name()
}

#[doc(hidden)]
pub use pulp;

/// Runs `op` compiled for the instruction set in use: its `#[inline(always)]` `with_simd` is
/// inlined into a function built with AVX2/FMA enabled when the CPU has them. (A closure would
/// not do: nothing forces a large closure to be inlined into that function, and outside it the
/// code is the baseline build.) [`vectorized_fn!`](crate::vectorized_fn) writes the `op`.
#[inline(always)]
pub fn dispatch<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    match isa() {
        Isa::Scalar => op.with_simd(pulp::Scalar::new()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(v3) => pulp::Simd::vectorize(v3, op),
    }
}

/// Defines `fn name<'a>(args) -> R` that calls the `#[inline(always)]` function `body` with its
/// arguments through [`dispatch`], so `body` (and everything it inlines) is compiled once per
/// instruction set and the CPU's best one runs. Argument types may borrow for `'a`.
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
            $crate::cpu::dispatch(Args {
                $($arg,)*
                _borrow: ::std::marker::PhantomData,
            })
        }
    };
}
