//! Test helpers shared by the kernels' unit tests: deterministic data, and running
//! an ONNX model with tract alone and with fennec's rewrite.

/// `n` deterministic pseudo-random values in [-0.5, 0.5) (xorshift).
pub(crate) fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Runs an ONNX model on a random `input` (from `seed`) with tract alone and with
/// the rewrite, on each of `threads` inference threads, and checks that the rewrite
/// put in `fused` nodes and that the outputs agree within float rounding.
#[cfg(feature = "onnx")]
pub(crate) fn assert_rewrite_matches_tract(
    bytes: &[u8],
    input: &[usize],
    seed: u64,
    threads: &[usize],
    fused: usize,
) {
    for &threads in threads {
        let (want, got, replaced) = run_onnx_both(bytes, input, seed, threads);
        assert_eq!(replaced, fused, "replaced nodes, threads {threads}");
        assert_eq!(want.len(), got.len());
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                "threads {threads} at {i}: {g} vs tract {w}"
            );
        }
    }
}

/// Both outputs of [`assert_rewrite_matches_tract`] and how many nodes the rewrite
/// put in.
#[cfg(feature = "onnx")]
pub(crate) fn run_onnx_both(
    bytes: &[u8],
    input: &[usize],
    seed: u64,
    threads: usize,
) -> (Vec<f32>, Vec<f32>, usize) {
    use tract_nnef::tract_core::internal::*;
    use tract_nnef::tract_core::tract_linalg::multithread::{Executor, multithread_tract_scope};
    use tract_onnx::prelude::{Framework, InferenceModelExt};

    let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap();
    m.set_input_fact(0, f32::fact(input).into()).unwrap();
    let typed = m.into_typed().unwrap().into_decluttered().unwrap();
    let x = Tensor::from_shape(input, &rnd(input.iter().product(), seed + 2)).unwrap();
    let run = |model: TypedModel| -> Vec<f32> {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let exec = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        let out =
            multithread_tract_scope(exec, || plan.run(tvec!(x.clone().into_tvalue()))).unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    };
    let want = run(typed.clone());
    let mut fast = typed;
    let replaced = super::rewrite(&mut fast).unwrap();
    (want, run(fast), replaced)
}
