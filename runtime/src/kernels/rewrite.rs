//! The tract side of fennec's kernels, written once for every fused op: the pass
//! that swaps node chains for fused ops, the graph patterns they share, the thread
//! pool they split work on, and the `Op`/`EvalOp` boilerplate each of them needs.

use std::sync::Arc;

use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::math::Max;
#[cfg(feature = "multithread")]
use tract_nnef::tract_core::tract_linalg::multithread::{Executor, current_tract_executor};

use super::{conv, dense, int8};

/// Replaces every convolution (+ ReLU)(+ max pool) chain the kernels handle by a
/// [`conv::FusedConv`], and every batch-1 dense layer by a [`dense::FusedDense`];
/// returns how many nodes were put in. Needs concrete channel and spatial sizes
/// (the batch may stay symbolic).
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    // The int8 patterns first: they start at the DequantizeLinear before the
    // float Conv/EinSum the f32 ops would otherwise take.
    Ok(fuse(model, "fennec-int8-conv", int8::plan_conv)?
        + fuse(model, "fennec-int8-dense", int8::plan_dense)?
        + fuse(model, "fennec-fused-conv", conv::plan_fusion)?
        + fuse(model, "fennec-fused-dense", dense::plan_fusion)?)
}

/// A run of nodes to replace by one op reading the first node's first input.
pub(super) struct Fusion<O> {
    pub op: O,
    /// The replaced nodes, in order; the last one's output becomes the op's.
    pub nodes: Vec<usize>,
}

/// Applies `plan` to every node in evaluation order and puts in each fusion it
/// returns; returns how many.
fn fuse<O: TypedOp>(
    model: &mut TypedModel,
    patch_name: &str,
    plan: impl Fn(&TypedModel, usize) -> TractResult<Option<Fusion<O>>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(fusion) = plan(model, id)? else {
            continue;
        };
        let mut patch = TypedModelPatch::new(patch_name);
        let x = patch.tap_model(model, model.node(id).inputs[0])?;
        let name = model.node(id).name.clone();
        let wire = patch.wire_node(name, fusion.op, &[x])?[0];
        patch.shunt_outside(model, OutletId::new(*fusion.nodes.last().unwrap(), 0), wire)?;
        for n in &fusion.nodes {
            patch.obliterate(*n)?;
        }
        patch.apply(model)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// The thread pool of tract's current executor when it has one (`--threads` > 1).
pub(super) fn inference_pool() -> Option<Arc<rayon::ThreadPool>> {
    #[cfg(feature = "multithread")]
    if let Executor::MultiThread(pool) = current_tract_executor() {
        return Some(pool);
    }
    None
}

/// The node reading `id`'s output when it is the only reader and the output is
/// not a model output.
pub(super) fn sole_successor(model: &TypedModel, id: usize) -> TractResult<Option<&TypedNode>> {
    if model.output_outlets()?.contains(&OutletId::new(id, 0)) {
        return Ok(None);
    }
    model.single_succ(id)
}

/// The other input of a two-input `node` when one of them is `x`.
pub(super) fn other_input(node: &TypedNode, x: OutletId) -> Option<OutletId> {
    match node.inputs[..] {
        [a, b] if a == x => Some(b),
        [a, b] if b == x => Some(a),
        _ => None,
    }
}

/// `max(x, 0)` with a constant zero, as tract declutters ONNX `Relu`.
pub(super) fn is_relu(model: &TypedModel, node: &TypedNode, x: OutletId) -> TractResult<bool> {
    let (Some(bin), Some(other)) = (node.op_as::<TypedBinOp>(), other_input(node, x)) else {
        return Ok(false);
    };
    let is_zero = |t: &Tensor| {
        t.datum_type() == f32::datum_type()
            && t.len() == 1
            && t.try_as_plain_ram()
                .ok()
                .and_then(|p| p.as_slice::<f32>().ok().map(|s| s[0] == 0.0))
                == Some(true)
    };
    let same_shape = node.outputs[0].fact.shape == model.outlet_fact(x)?.shape;
    Ok(bin.0.is::<Max>()
        && same_shape
        && model
            .outlet_fact(other)?
            .konst
            .as_deref()
            .is_some_and(is_zero))
}

/// Implements tract's `Op` and `EvalOp` for a fused op type from its name and two
/// methods: `describe(&self) -> String`, the one line `fennec bench --profile`
/// shows, and `run(&self, input: &Tensor) -> TractResult<Tensor>`. Validation is
/// `Rounding`: the sums run in another order than tract's. Expanded where
/// `tract_core::internal::*` is in scope.
macro_rules! fused_op {
    ($op:ty, $name:literal) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![self.describe()])
            }

            fn validation(&self) -> Validation {
                Validation::Rounding
            }

            op_as_typed_op!();
        }

        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                let input = args_1!(inputs);
                Ok(tvec!(self.run(&input)?.into_tvalue()))
            }
        }
    };
}
pub(super) use fused_op;
