//! Golden exported model: tests/golden/model/ holds a tiny trained network (its
//! config and burn weights), the ONNX file the exporter made from them, an input
//! batch and burn's probabilities for it. A change in the exporter, the runtime or
//! the model code that alters numbers or bytes fails here loudly:
//!
//! - the runtime (tract) on the committed model.onnx reproduces the expected output;
//! - burn on the committed weights reproduces it;
//! - re-exporting the committed weights gives model.onnx byte for byte.
//!
//! Regenerate (only after a deliberate change, and say why in the commit):
//! `cargo test -p fennec-e2e --test export_golden -- --ignored regenerate`

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use fennec_runtime::metadata::ModelMetadata;
use fennec_runtime::{Classifier, LoadOptions};
use fennec_train::config::{Config, Plan, Shape};
use fennec_train::export::{self, Precision};
use fennec_train::model::Net;
use serde_json::{Value, json};

const TOLERANCE: f32 = 1e-6;
const LABELS: [&str; 3] = ["circle", "square", "triangle"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/model")
}

fn config() -> (Config, Plan) {
    let config = Config::load(&dir().join("config.yaml")).unwrap();
    let plan = config.resolve(LABELS.len()).unwrap();
    (config, plan)
}

/// Fixed metadata (no fennec version, so a version bump does not change the bytes).
fn metadata(config: &Config) -> ModelMetadata {
    let labels: Vec<String> = LABELS.map(String::from).to_vec();
    let mut md = export::metadata(
        config,
        &labels,
        json!({"note": "golden fixture, 6 Adam steps on random data"}),
    );
    md.fennec_version = None;
    md
}

fn input_shape(plan: &Plan, n: usize) -> [usize; 4] {
    let Shape::Map([c, h, w]) = plan.input else {
        unreachable!()
    };
    [n, c, h, w]
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

struct Expected {
    n: usize,
    input: Vec<f32>,
    probabilities: Vec<Vec<f32>>,
    argmax: Vec<usize>,
}

fn expected() -> Expected {
    let e: Value =
        serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap();
    let probabilities: Vec<Vec<f32>> = serde_json::from_value(e["probabilities"].clone()).unwrap();
    let argmax: Vec<usize> = serde_json::from_value(e["argmax"].clone()).unwrap();
    let input = read_f32(&dir().join("input.bin"));
    Expected {
        n: probabilities.len(),
        input,
        probabilities,
        argmax,
    }
}

fn check(what: &str, got: &[Vec<f32>], want: &Expected) {
    assert_eq!(got.len(), want.n, "{what}: rows");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(&want.probabilities).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i} length");
        worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
        assert_eq!(
            fennec_runtime::scores::top_k(g, 1)[0],
            want.argmax[i],
            "{what}: argmax of row {i}"
        );
    }
    assert!(
        worst <= TOLERANCE,
        "{what}: max |got - expected| = {worst:e} > {TOLERANCE:e}"
    );
}

fn burn_net(plan: &Plan) -> Net {
    Net::new(plan, &Device::flex())
        .try_load_file(dir().join("weights.bpk"))
        .expect("golden weights load")
}

#[test]
fn runtime_reproduces_the_golden_output() {
    let want = expected();
    let clf = Classifier::load(&dir().join("model.onnx"), &LoadOptions::default()).unwrap();
    assert_eq!(clf.labels, LABELS);
    let got = clf.classify(&want.input, want.n).unwrap();
    check("fennec runtime on model.onnx", &got, &want);
}

#[test]
fn burn_reproduces_the_golden_output() {
    let (_, plan) = config();
    let want = expected();
    let net = burn_net(&plan);
    let x = Tensor::<4>::from_data(
        TensorData::new(want.input.clone(), input_shape(&plan, want.n)),
        &Device::flex(),
    );
    let p: Vec<f32> = net.probabilities(x).try_into_vec_as::<f32>().unwrap();
    let rows: Vec<Vec<f32>> = p.chunks(LABELS.len()).map(<[f32]>::to_vec).collect();
    check("burn on weights.bpk", &rows, &want);
}

#[test]
fn reexport_is_byte_identical() {
    let (config, plan) = config();
    let bytes =
        export::to_onnx(&plan, &burn_net(&plan), &metadata(&config), Precision::F32).unwrap();
    let committed = std::fs::read(dir().join("model.onnx")).unwrap();
    assert!(
        bytes == committed,
        "re-exporting tests/golden/model/weights.bpk gives {} bytes that differ from the committed model.onnx \
         ({} bytes): the exporter's output changed",
        bytes.len(),
        committed.len()
    );
}

/// Writes the fixture: trains the config a few steps from a fixed seed, saves the
/// weights, the export, an input batch and burn's probabilities.
#[test]
#[ignore = "regenerates tests/golden/model; run deliberately"]
fn regenerate() {
    let (config, plan) = config();
    let ad = Device::flex().autodiff();
    ad.seed(7);
    let mut net = Net::new(&plan, &ad);
    let mut optim = AdamConfig::new().with_epsilon(1e-7).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    for step in 0..6 {
        let x = Tensor::<4>::random(input_shape(&plan, 8), Distribution::Uniform(0.0, 1.0), &ad);
        let y: Vec<i64> = (0..8)
            .map(|i| ((i * 7 + step) % LABELS.len()) as i64)
            .collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [8]), &ad);
        let loss = loss_fn.forward(net.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-2, net, grads);
    }
    let net = net.valid();
    net.clone().save_file(dir().join("weights.bpk")).unwrap();
    // Reload so the export and the expected output come from exactly the stored weights.
    let net = burn_net(&plan);
    let onnx = export::to_onnx(&plan, &net, &metadata(&config), Precision::F32).unwrap();
    std::fs::write(dir().join("model.onnx"), &onnx).unwrap();

    let n = 4;
    let dev = Device::flex();
    let x = Tensor::<4>::random(input_shape(&plan, n), Distribution::Uniform(0.0, 1.0), &dev);
    let input: Vec<f32> = x.clone().try_into_vec_as::<f32>().unwrap();
    std::fs::write(
        dir().join("input.bin"),
        input
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let p: Vec<f32> = net.probabilities(x).try_into_vec_as::<f32>().unwrap();
    let rows: Vec<Vec<f32>> = p.chunks(LABELS.len()).map(<[f32]>::to_vec).collect();
    let argmax: Vec<usize> = rows
        .iter()
        .map(|r| fennec_runtime::scores::top_k(r, 1)[0])
        .collect();
    let expected = json!({
        "about": "burn's probabilities for input.bin (little-endian f32, NCHW) through weights.bpk; \
                  made by `cargo test -p fennec-e2e --test export_golden -- --ignored regenerate`",
        "input_shape": input_shape(&plan, n),
        "labels": LABELS,
        "probabilities": rows,
        "argmax": argmax,
    });
    std::fs::write(
        dir().join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}
