//! The export issue's end-to-end check: a tiny generated dataset → `fennec-train fit`
//! → `fennec-train export` → `fennec eval` on the test folder. The runtime's accuracy
//! on the exported model must equal `fennec-train evaluate`'s (burn, same checkpoint,
//! same folder) exactly, image count included; and the file must describe itself
//! (labels, preprocessing, training summary) so `fennec predict` needs no flags.

use std::path::Path;

use fennec_e2e::{
    Outcome, color_folders, color_image, config, fennec, fennec_train, fixture, save, tempdir,
};
use predicates::str::contains;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn runtime_accuracy_equals_trainer_accuracy() {
    let d = tempdir();
    let data = d.path().join("data");
    for split in ["train", "validation", "test"] {
        color_folders(&data.join(split), 6);
    }
    // Test images whose colour is between two classes, so predictions depend on the
    // fine detail of the weights and accuracy is not trivially 0 or 1.
    for (i, (class, rgb)) in [
        ("blue", [90, 60, 170]),
        ("green", [60, 150, 120]),
        ("red", [170, 120, 60]),
        ("blue", [120, 40, 120]),
    ]
    .into_iter()
    .enumerate()
    {
        for j in 0..3 {
            let img = color_image(9 + j, 10, rgb, 100 + i as u32 * 3 + j);
            save(
                &img,
                &data
                    .join("test")
                    .join(class)
                    .join(format!("mixed_{i}_{j}.png")),
            );
        }
    }
    let cfg = config(d.path(), "tiny.yaml", &fixture("tiny_export.yaml"));
    let run = d.path().join("run");
    fennec_train!(
        "fit",
        cfg,
        "--data",
        data,
        "--out",
        run,
        "--threads",
        "1",
        "--quiet"
    )
    .ok();
    assert!(run.join("model.onnx").is_file(), "fit exports model.onnx");

    let onnx = d.path().join("exported.onnx");
    let report =
        json(&fennec_train!("export", run, "--checkpoint", "last", "-o", onnx, "--json").ok());
    assert_eq!(report["epoch"], 4);
    let md = &report["metadata"];
    assert_eq!(md["labels"], serde_json::json!(["blue", "green", "red"]));
    assert_eq!(md["model_name"], "tiny_export");
    assert_eq!(md["training"]["epoch"], 4);
    assert_eq!(md["training"]["optimizer"]["adam"]["beta_1"], 0.9);
    assert_eq!(md["training"]["dataset"]["train"], 18);
    assert_eq!(md["training"]["dataset"]["validation"], 18);
    assert!(md["training"]["val_accuracy"].is_number(), "{md}");
    assert!(md["weights_hash"].as_str().unwrap().starts_with("sha256:"));

    let test = data.join("test");
    let runtime = json(&fennec!("eval", onnx, test, "--json", "-", "-q").ok());
    let trainer =
        json(&fennec_train!("evaluate", run, test, "--checkpoint", "last", "--json").ok());
    assert_eq!(runtime["images"], 30);
    assert_eq!(trainer["images"], 30);
    let (a_rt, a_tr) = (
        runtime["accuracy"].as_f64().unwrap(),
        trainer["accuracy"].as_f64().unwrap(),
    );
    eprintln!(
        "accuracy on {}: fennec eval {a_rt}, fennec-train evaluate {a_tr}",
        test.display()
    );
    assert_eq!(
        a_rt, a_tr,
        "runtime and trainer disagree on the same checkpoint and folder"
    );

    // Self-describing: labels and preprocessing come from the file.
    let info = json(&fennec!("info", onnx, "--json").ok());
    assert_eq!(info["model"]["labels_source"], "metadata", "{info}");
    assert_eq!(info["model"]["preprocess_source"], "metadata", "{info}");
    let one = test.join("red").join("0.png");
    fennec!("predict", onnx, one)
        .success()
        .stdout(contains("red"));
    assert_same_prediction_file(&run.join("model.onnx"), &onnx, &run);

    // Bad input: one error line naming the problem, exit 1, nothing half-written.
    fennec_train!("export", d.path().join("nope"), "-o", onnx)
        .fails(1, &["nope", "not a fennec run"]);
    fennec_train!("export", run, "--checkpoint", "99").fails(1, &["epoch 99", "kept"]);
    let missing = d.path().join("no/such/dir/m.onnx");
    fennec_train!("export", run, "-o", missing).fails(1, &["no/such/dir/m.onnx"]);
    assert!(!d.path().join("no").exists());
    fennec_train!("export", run, "--checkpoint", "soon").code(2);
    fennec_train!("export", run, "--precision", "f8").code(2);
    let before = std::fs::read(&onnx).unwrap();
    let f16 = d.path().join("half.onnx");
    fennec_train!(
        "export",
        run,
        "--checkpoint",
        "last",
        "--precision",
        "f16",
        "-o",
        f16
    )
    .ok();
    let rt16 = json(&fennec!("eval", f16, test, "--json", "-", "-q").ok());
    eprintln!("f16 export: accuracy {}", rt16["accuracy"]);
    assert_eq!(
        std::fs::read(&onnx).unwrap(),
        before,
        "other files untouched"
    );
}

/// fit's own model.onnx is the export of its result epoch (the last one here: no
/// early stopping), so it carries the same weights hash.
fn assert_same_prediction_file(fit_model: &Path, exported: &Path, run: &Path) {
    let a = json(&fennec!("info", fit_model, "--json").ok());
    let b = json(&fennec!("info", exported, "--json").ok());
    let hash = |v: &Value| {
        v["model"]["metadata"]["weights_hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(hash(&a), hash(&b), "{}", run.display());
}
