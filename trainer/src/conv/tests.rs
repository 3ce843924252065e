//! The fused operation against burn's own modules: forward and all three
//! gradients, with and without autodiff, and determinism.

use super::*;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::tensor::{Device, Distribution};

/// Max |a - b| within 2e-5 of the largest |b| (at least 1).
fn assert_close<const D: usize>(a: &Tensor<D>, b: &Tensor<D>, what: &str) {
    let a: Vec<f32> = a.clone().try_into_vec_as::<f32>().unwrap();
    let b: Vec<f32> = b.clone().try_into_vec_as::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "{what}: sizes");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= 2e-5 * scale,
        "{what}: max error {err} (scale {scale})"
    );
}

struct Case {
    input: [usize; 4],
    cout: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: PaddingConfig2d,
    relu: bool,
    pool: Option<([usize; 2], PaddingConfig2d)>,
}

/// Forward and all three gradients equal burn's modules on random data.
fn check(c: Case) {
    let device = Device::flex().autodiff();
    device.seed(7);
    let conv = Conv2dConfig::new([c.input[1], c.cout], c.kernel)
        .with_stride(c.stride)
        .with_padding(c.padding.clone())
        .init(&device);
    // A non-zero bias, so that its gradient and the ReLU mask both matter.
    let bias = Tensor::random([c.cout], Distribution::Uniform(-0.5, 0.5), &device);
    let conv = Conv2d {
        bias: Some(Param::from_tensor(bias)),
        ..conv
    };
    let pool = c.pool.clone().map(|(k, pad)| {
        MaxPool2dConfig::new(k)
            .with_strides(k)
            .with_padding(pad)
            .init()
    });
    let what = format!(
        "{:?} -> {} k{:?} s{:?} {:?} relu={} pool={:?}",
        c.input, c.cout, c.kernel, c.stride, c.padding, c.relu, c.pool
    );
    let ours_fn = |x: Tensor<4>, conv: &Conv2d| match &pool {
        Some(p) => conv2d_maxpool(x, conv, c.relu, p),
        None => conv2d(x, conv, c.relu),
    };
    let burn_fn = |x: Tensor<4>, conv: &Conv2d| {
        let mut y = conv.forward(x);
        if c.relu {
            y = relu(y);
        }
        match &pool {
            Some(p) => p.forward(y),
            None => y,
        }
    };
    let x0 = Tensor::<4>::random(c.input, Distribution::Normal(0.0, 1.0), &device);

    let x = x0.clone().require_grad();
    let ours = ours_fn(x.clone(), &conv);
    let dy = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
    let grads = (ours.clone() * dy.clone()).sum().backward();
    let (dx, dw, db) = (
        x.grad(&grads).unwrap(),
        conv.weight.grad(&grads).unwrap(),
        conv.bias.as_ref().unwrap().grad(&grads).unwrap(),
    );

    let x = x0.clone().require_grad();
    let theirs = burn_fn(x.clone(), &conv);
    let grads = (theirs.clone() * dy).sum().backward();
    assert_close(&ours, &theirs, &format!("{what}: forward"));
    assert_close(&dx, &x.grad(&grads).unwrap(), &format!("{what}: dx"));
    assert_close(
        &dw,
        &conv.weight.grad(&grads).unwrap(),
        &format!("{what}: dw"),
    );
    assert_close(
        &db,
        &conv.bias.as_ref().unwrap().grad(&grads).unwrap(),
        &format!("{what}: db"),
    );

    // Inference (no autodiff) takes the same kernels.
    let plain = conv.valid();
    let x = x0.inner();
    assert_close(
        &ours_fn(x.clone(), &plain),
        &burn_fn(x, &plain),
        &format!("{what}: inference"),
    );
}

#[test]
fn conv_matches_burn() {
    use PaddingConfig2d::{Explicit, Same, Valid};
    let case = |input, cout, kernel, stride, padding, relu| Case {
        input,
        cout,
        kernel,
        stride,
        padding,
        relu,
        pool: None,
    };
    check(case([2, 3, 9, 11], 4, [3, 3], [1, 1], Valid, true));
    check(case([3, 5, 8, 7], 6, [3, 3], [1, 1], Same, false));
    check(case([2, 4, 9, 9], 5, [3, 3], [2, 2], Same, true));
    check(case([2, 4, 10, 9], 3, [2, 2], [2, 2], Valid, false));
    check(case(
        [2, 3, 7, 8],
        4,
        [5, 3],
        [2, 1],
        Explicit(2, 1, 0, 3),
        true,
    ));
    check(case([2, 6, 5, 5], 3, [1, 1], [1, 1], Valid, true));
    check(case([1, 2, 6, 6], 2, [4, 4], [1, 1], Same, false));
    // Tall enough for several row tiles per image.
    check(case([2, 32, 40, 40], 8, [3, 3], [1, 1], Valid, true));
}

#[test]
fn conv_relu_maxpool_matches_burn() {
    use PaddingConfig2d::{Same, Valid};
    let case = |input, kernel, padding, relu, pool| Case {
        input,
        cout: 4,
        kernel,
        stride: [1, 1],
        padding,
        relu,
        pool: Some(pool),
    };
    // model_3's pattern: valid 3x3 conv + relu, then pool 2 'same' on an odd (11 -> 6) and even map.
    check(case([2, 3, 13, 13], [3, 3], Valid, true, ([2, 2], Same)));
    check(case([2, 3, 12, 14], [3, 3], Valid, true, ([2, 2], Same)));
    // Valid pool dropping the last row/column, no ReLU (negative maxima pass).
    check(case([2, 3, 12, 12], [3, 3], Valid, false, ([2, 2], Valid)));
    check(case([3, 2, 11, 10], [3, 3], Same, true, ([3, 3], Same)));
    check(case([2, 3, 9, 9], [1, 1], Valid, false, ([2, 2], Same)));
    // Several pooled-row tiles per image.
    check(case([2, 32, 41, 41], [3, 3], Valid, true, ([2, 2], Same)));
}

#[test]
fn first_layer_input_gets_no_gradient_and_results_are_deterministic() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let conv = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
    let pool = MaxPool2dConfig::new([2, 2])
        .with_padding(PaddingConfig2d::Same)
        .init();
    let x = Tensor::<4>::random([4, 3, 12, 12], Distribution::Uniform(0.0, 1.0), &device);
    let run = || {
        let y = conv2d_maxpool(x.clone(), &conv, true, &pool);
        let grads = y.sum().backward();
        assert!(x.grad(&grads).is_none());
        conv.weight
            .grad(&grads)
            .unwrap()
            .try_into_vec_as::<f32>()
            .unwrap()
    };
    assert_eq!(run(), run());
}
