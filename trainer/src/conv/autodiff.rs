//! The fused operation as one node of burn's autodiff graph on the flex backend:
//! the forward pass records what the backward pass needs, and the backward pass
//! hands burn the three gradients.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, BackendTypes, Flex};
use burn::tensor::TensorData;

use super::{Op, backward, forward};

type AutodiffFlexTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// Records the operation as one autodiff node with [`OpBackward`] as its backward step.
pub(super) fn autodiff_op(
    x: AutodiffFlexTensor,
    w: AutodiffFlexTensor,
    b: AutodiffFlexTensor,
    op: Op,
) -> AutodiffFlexTensor {
    let (xp, xg) = x.into_parts();
    let (wp, wg) = w.into_parts();
    let (bp, bg) = b.into_parts();
    let (xp, wp, bp) = (contiguous(xp), contiguous(wp), contiguous(bp));
    let y = forward(f32s(&xp), f32s(&wp), f32s(&bp), &op);
    let out = flex_tensor(y.out, op.out_shape());
    match OpBackward
        .prepare::<NoCheckpointing>([xg, wg, bg])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = OpState {
                x: xp,
                w: wp,
                out: op.relu.then(|| out.clone()),
                argmax: Arc::new(y.argmax),
                op,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// What the backward step needs: the input, the weights, the output when a ReLU
/// is fused (its mask), the pool's arg-max, and the shapes. Tensors are shared, not
/// copied.
#[derive(Debug, Clone)]
struct OpState {
    x: FlexTensor,
    w: FlexTensor,
    out: Option<FlexTensor>,
    argmax: Arc<Vec<u8>>,
    op: Op,
}

#[derive(Debug)]
struct OpBackward;

impl Backward<Flex, 3> for OpBackward {
    type State = OpState;

    fn backward(self, ops: Ops<OpState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let g = &s.op.g;
        let out = backward(
            f32s(&s.x),
            f32s(&s.w),
            s.out.as_ref().map(f32s),
            &s.argmax,
            f32s(&dy),
            &s.op,
            node_x.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, out.dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.batch, g.cin, g.h, g.w]));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, flex_tensor(out.dw, [g.cout, g.cin, g.kh, g.kw]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex_tensor(out.db, [g.cout]));
        }
    }
}

pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

pub(super) fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

pub(super) fn flex_tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}
