//! fennec's own kernels for the layers tract is slow at, swapped into a tract
//! graph before it is optimised (see bench/README.md for the measurements).
//!
//! - [`rewrite()`] (`rewrite.rs`): the pass that puts the fused ops in, and the
//!   tract glue every fused op shares (graph patterns, the inference thread pool,
//!   the `Op`/`EvalOp` boilerplate).
//! - [`conv`]: convolution + ReLU + max pool in one op, with direct kernels per
//!   instruction set (`conv/avx512.rs`, `avx2.rs`, `neon.rs`, `portable.rs`).
//! - [`dense`]: batch-1 dense layers, their weight reads split between threads.
//! - [`int8`]: integer convolution and dense ops for QDQ-quantized models.
//! - [`peak`]: this core's measured multiply-add peak, the yardstick
//!   `fennec bench --profile` sets each kernel's GFLOP/s against.
//! - [`simd`]: the instruction-set level, detected once, and
//!   [`simd_fn!`](simd::simd_fn), the one way (shared with the trainer) to
//!   compile a loop for several of them.
//!
//! A new fused op is a file here with a `plan_fusion` (which nodes it replaces)
//! and an op type (`describe`, `run`, tract's `TypedOp`, `fused_op!`), plus one
//! line in [`rewrite()`].

pub mod conv;
pub mod dense;
pub mod int8;
pub mod peak;
mod rewrite;
pub mod simd;
#[cfg(test)]
mod testing;

pub use rewrite::rewrite;
