//! Proof that an exported model computes what burn computes.
//!
//! For the tutorial's model_1/2/3, the Fashion-MNIST model_3 (at small input sizes)
//! and two configs that between them use every layer kind (conv same/valid/stride 2
//! with asymmetric pads, batchnorm on maps and vectors, max/avg pools with `same`
//! padding on odd sizes, dropout, global average pool, flatten, dense with every
//! activation): build the burn network, train it a few Adam steps on random data (so
//! weights and BatchNorm running statistics move away from their initial values),
//! export it, and run one batch through burn and through the runtime (tract).
//! Probabilities must agree within 1e-5 with the same argmax.
//!
//! The same models, inputs and burn outputs also go to `tests/check_onnx.py`, which
//! runs `onnx.checker` and onnxruntime on them (skipped with a message when the
//! Python packages are missing, unless `FENNEC_REQUIRE_ONNXRUNTIME=1`, as in CI).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use fennec_runtime::{Classifier, LoadOptions};
use fennec_train::config::{Config, Plan};
use fennec_train::export::{self, Precision};
use fennec_train::model::Net;

/// Agreement required between burn and an f32 export.
const TOLERANCE: f32 = 1e-5;
/// Agreement required between burn and an f16 export (weights rounded to 11 bits).
const F16_TOLERANCE: f32 = 1e-3;
/// Images per comparison batch.
const BATCH: usize = 7;

/// One exported model and the batch that checks it.
struct Case {
    name: String,
    plan: Plan,
    /// Serialised ONNX.
    onnx: Vec<u8>,
    precision: Precision,
    /// `[BATCH, C, H, W]`, NCHW.
    input: Vec<f32>,
    /// burn's probabilities `[BATCH, classes]`.
    expected: Vec<f32>,
    tolerance: f32,
}

fn repo_config(name: &str, size: usize) -> Config {
    let path = fennec_e2e::repo_root()
        .join("configs")
        .join(format!("{name}.yaml"));
    let mut c = Config::load(&path).unwrap();
    (c.preprocess.height, c.preprocess.width) = (size as u32, size as u32);
    c
}

/// Trains `steps` Adam steps on random images and labels; returns the eval network.
fn train_a_little(plan: &Plan, seed: u64, steps: usize) -> Net {
    let ad = Device::flex().autodiff();
    ad.seed(seed);
    let [c, h, w] = match plan.input {
        fennec_train::config::Shape::Map(s) => s,
        _ => unreachable!(),
    };
    let mut net = Net::new(plan, &ad);
    let mut optim = AdamConfig::new().with_epsilon(1e-7).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    for step in 0..steps {
        let b = 8;
        let x = Tensor::<4>::random([b, c, h, w], Distribution::Uniform(0.0, 1.0), &ad);
        let labels: Vec<i64> = (0..b)
            .map(|i| ((i + step) % plan.num_classes) as i64)
            .collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), &ad);
        let loss = loss_fn.forward(net.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(3e-3, net, grads);
    }
    net.valid()
}

fn make_case(name: &str, config: &Config, classes: usize, seed: u64, precision: Precision) -> Case {
    let plan = config
        .resolve(classes)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let net = train_a_little(&plan, seed, 5);
    let dev = Device::flex();
    let [c, h, w] = match plan.input {
        fennec_train::config::Shape::Map(s) => s,
        _ => unreachable!(),
    };
    let x = Tensor::<4>::random([BATCH, c, h, w], Distribution::Uniform(0.0, 1.0), &dev);
    let input: Vec<f32> = x.clone().try_into_vec_as::<f32>().unwrap();
    let expected: Vec<f32> = net.probabilities(x).try_into_vec_as::<f32>().unwrap();
    let labels: Vec<String> = (0..classes).map(|i| format!("class_{i}")).collect();
    let md = export::metadata(
        config,
        &labels,
        serde_json::json!({"epochs": 0, "test": name}),
    );
    let onnx =
        export::to_onnx(&plan, &net, &md, precision).unwrap_or_else(|e| panic!("{name}: {e}"));
    let tolerance = if precision == Precision::F16 {
        F16_TOLERANCE
    } else {
        TOLERANCE
    };
    Case {
        name: name.into(),
        plan,
        onnx,
        precision,
        input,
        expected,
        tolerance,
    }
}

/// Every case, made once (burn's RNG is global: one thread makes them, in order).
fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        // every_layer_gap.yaml and every_layer_flatten.yaml between them use every
        // layer kind (see their comments).
        let fixture = |name: &str| {
            Config::parse(&fennec_e2e::fixture(&format!("{name}.yaml")), name).unwrap()
        };
        let every_gap = fixture("every_layer_gap");
        let every_flat = fixture("every_layer_flatten");
        vec![
            make_case("model_1", &repo_config("model_1", 24), 2, 1, Precision::F32),
            make_case("model_2", &repo_config("model_2", 24), 3, 2, Precision::F32),
            make_case("model_3", &repo_config("model_3", 24), 4, 3, Precision::F32),
            make_case(
                "fashion_model_3",
                &repo_config("fashion_model_3", 28),
                10,
                4,
                Precision::F32,
            ),
            make_case("every_layer_gap", &every_gap, 5, 5, Precision::F32),
            make_case("every_layer_flatten", &every_flat, 3, 6, Precision::F32),
            make_case("every_layer_gap_f16", &every_gap, 5, 5, Precision::F16),
            make_case(
                "model_3_f16",
                &repo_config("model_3", 24),
                4,
                3,
                Precision::F16,
            ),
        ]
    })
}

fn argmax(row: &[f32]) -> usize {
    fennec_runtime::scores::top_k(row, 1)[0]
}

/// Max |a - b| and the rows whose argmax differ.
fn compare(got: &[f32], want: &[f32], classes: usize) -> (f32, Vec<usize>) {
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let flips = got
        .chunks(classes)
        .zip(want.chunks(classes))
        .enumerate()
        .filter(|(_, (g, w))| argmax(g) != argmax(w))
        .map(|(i, _)| i)
        .collect();
    (diff, flips)
}

/// Writes the case's model and runs it with the runtime.
fn run_tract(case: &Case, dir: &Path) -> Vec<f32> {
    let path = dir.join(format!("{}.onnx", case.name));
    std::fs::write(&path, &case.onnx).unwrap();
    let clf = Classifier::load(&path, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    assert_eq!(
        clf.info.output_kind,
        fennec_runtime::OutputKind::Probabilities,
        "{}",
        case.name
    );
    assert_eq!(clf.labels.len(), case.plan.num_classes);
    let rows = clf
        .classify(&case.input, BATCH)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    rows.concat()
}

#[test]
fn tract_matches_burn_on_every_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let got = run_tract(case, dir.path());
        let (diff, flips) = compare(&got, &case.expected, case.plan.num_classes);
        eprintln!(
            "{:<22} {:>4} {:>8} bytes  max |tract - burn| = {diff:.3e}  argmax flips: {}",
            case.name,
            case.precision.to_string(),
            case.onnx.len(),
            flips.len()
        );
        if diff > case.tolerance || !flips.is_empty() {
            failures.push(format!(
                "{}: max diff {diff:e} (tolerance {:e}), argmax differs in rows {flips:?}",
                case.name, case.tolerance
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "exported models disagree with burn:\n{}",
        failures.join("\n")
    );
}

#[test]
fn f16_export_halves_the_file() {
    let all = cases();
    let size = |name: &str| all.iter().find(|c| c.name == name).unwrap().onnx.len();
    let (f32_size, f16_size) = (size("model_3"), size("model_3_f16"));
    // Same weights (same seed), half the bytes each; graph and metadata add a little.
    assert!(
        f16_size < f32_size * 52 / 100,
        "f16 {f16_size} bytes vs f32 {f32_size}"
    );
}

/// The Python interpreter to use: `FENNEC_PYTHON` or `python3`.
fn python() -> String {
    std::env::var("FENNEC_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn onnxruntime_and_onnx_checker_agree() {
    let py = python();
    let required = std::env::var("FENNEC_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1");
    let probe = Command::new(&py)
        .args(["-c", "import onnxruntime, onnx"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            !required,
            "FENNEC_REQUIRE_ONNXRUNTIME=1 but `{py} -c 'import onnxruntime, onnx'` failed: {why}"
        );
        eprintln!(
            "SKIP onnxruntime_and_onnx_checker_agree: `{py}` cannot import onnxruntime and onnx ({why}); \
             pip install -r .ci/requirements.txt, or set FENNEC_PYTHON to a Python that has them"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut list = Vec::new();
    for case in cases() {
        let [c, h, w] = match case.plan.input {
            fennec_train::config::Shape::Map(s) => s,
            _ => unreachable!(),
        };
        let base = dir.path().join(&case.name);
        std::fs::write(base.with_extension("onnx"), &case.onnx).unwrap();
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(base.with_extension("input.bin"), le(&case.input)).unwrap();
        std::fs::write(base.with_extension("expected.bin"), le(&case.expected)).unwrap();
        list.push(serde_json::json!({
            "name": case.name,
            "model": format!("{}.onnx", case.name),
            "input": format!("{}.input.bin", case.name),
            "input_shape": [BATCH, c, h, w],
            "expected": format!("{}.expected.bin", case.name),
            "classes": case.plan.num_classes,
            "tolerance": case.tolerance,
        }));
    }
    std::fs::write(
        dir.path().join("cases.json"),
        serde_json::to_vec_pretty(&list).unwrap(),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("check_onnx.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{} failed:\n{text}", script.display());
}
