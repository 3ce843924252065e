//! End-to-end tests of `fennec convert` and of loading its NNEF archives, the
//! models the lite (Raspberry Pi) build reads: same answers as the ONNX file,
//! metadata kept, bad archives rejected with one line.

use std::fs;

use fennec_e2e::*;
use fennec_runtime::metadata::ModelMetadata;
use fennec_runtime::onnx_writer::{Attr, GraphBuilder};
use predicates::str::contains;
use serde_json::Value;

fn predictions(out: &str, model_name: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(&l.replace(model_name, "MODEL")).unwrap())
        .collect()
}

fn assert_close(a: &[Value], b: &[Value]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["file"], y["file"]);
        let (px, py) = (
            x["predictions"].as_array().unwrap(),
            y["predictions"].as_array().unwrap(),
        );
        assert_eq!(px.len(), py.len());
        for (p, q) in px.iter().zip(py) {
            assert_eq!(p["label"], q["label"], "{x} vs {y}");
            let d = (p["probability"].as_f64().unwrap() - q["probability"].as_f64().unwrap()).abs();
            assert!(d < 1e-6, "{x} vs {y}");
        }
    }
}

#[test]
fn converted_models_give_the_onnx_answers() {
    let d = tempdir();
    let imgs = d.path().join("imgs");
    one_of_each(&imgs, 13, 9, 1);
    let variants = [
        TinyModel::default(),
        TinyModel::default().nhwc().logits(),
        TinyModel::default().fixed_batch(2),
    ];
    for (i, v) in variants.iter().enumerate() {
        let onnx = color_model_file(d.path(), &format!("m{i}.onnx"), v);
        let nnef = d.path().join(format!("m{i}.nnef.tgz"));
        fennec!("convert", onnx, nnef)
            .success()
            .stdout(contains("3 classes"));
        let a = fennec!("predict", onnx, imgs, "--json", "-k", "3").ok();
        let b = fennec!("predict", nnef, imgs, "--json", "-k", "3", "--batch", "3").ok();
        assert_close(
            &predictions(&a, &format!("m{i}.onnx")),
            &predictions(&b, &format!("m{i}.nnef.tgz")),
        );

        // What `info` knows survives the conversion.
        let ia: Value = serde_json::from_str(&fennec!("info", onnx, "--json").ok()).unwrap();
        let ib: Value = serde_json::from_str(&fennec!("info", nnef, "--json").ok()).unwrap();
        for key in [
            "layout",
            "num_classes",
            "output_kind",
            "parameters",
            "flops_per_image",
            "fixed_batch",
            "metadata",
        ] {
            assert_eq!(ia["model"][key], ib["model"][key], "{key}");
        }
        assert_eq!(ia["labels"], ib["labels"]);
        assert_eq!(ia["preprocess"], ib["preprocess"]);
    }
}

#[test]
fn labels_and_overrides_given_at_conversion_are_kept() {
    let d = tempdir();
    let onnx = color_model_file(d.path(), "bare.onnx", &TinyModel::default().bare());
    // Characters NNEF string literals cannot carry must survive.
    let labels = d.path().join("labels.txt");
    fs::write(&labels, "l'azur \"bleu\"\nvert\\n\nrouge é\n").unwrap();
    let nnef = d.path().join("bare.nnef.tgz");
    fennec!(
        "convert", onnx, nnef, "--labels", labels, "--filter", "lanczos3"
    )
    .ok();
    let info: Value = serde_json::from_str(&fennec!("info", nnef, "--json").ok()).unwrap();
    assert_eq!(
        info["labels"],
        serde_json::json!(["l'azur \"bleu\"", "vert\\n", "rouge é"])
    );
    assert_eq!(info["preprocess"]["filter"], "lanczos3");
    assert_eq!(info["model"]["labels_source"], "user");

    // A spec that does not fit the converted input is refused, naming the file.
    let img = d.path().join("x.png");
    save(&color_image(8, 8, RED, 0), &img);
    fennec!("predict", nnef, img, "--size", "16x16").fails(1, &["bare.nnef.tgz", "convert again"]);
}

#[test]
fn bad_archives_fail_with_one_line() {
    let d = tempdir();
    let onnx = color_model_file(d.path(), "m.onnx", &TinyModel::default());
    let nnef = d.path().join("m.nnef.tgz");
    fennec!("convert", onnx, nnef).ok();
    let bytes = fs::read(&nnef).unwrap();
    let img = d.path().join("x.png");
    save(&color_image(8, 8, RED, 0), &img);

    let truncated = d.path().join("truncated.nnef.tgz");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fennec!("predict", truncated, img).fails(1, &["truncated.nnef.tgz"]);

    let garbage = d.path().join("garbage.nnef.tgz");
    let mut g = bytes[..10].to_vec();
    g.extend(std::iter::repeat_n(0xa5u8, 500));
    fs::write(&garbage, g).unwrap();
    fennec!("predict", garbage, img).fails(1, &["garbage.nnef.tgz"]);

    // Converting something that is not a classifier fails like loading it does,
    // and leaves no file behind.
    let vector = d.path().join("vector.onnx");
    fs::write(&vector, vector_model()).unwrap();
    let out = d.path().join("vector.nnef.tgz");
    fennec!("convert", vector, out).fails(1, &["vector.onnx", "rank 2"]);
    assert!(!out.exists());
}

#[test]
fn ops_outside_tract_core_are_refused_at_conversion() {
    // A model the full build runs but whose NNEF needs a non-core operator would
    // not load in the lite build: `convert` must say so rather than write it.
    // LRN is decluttered into tract-onnx-opl's own operator.
    let d = tempdir();
    let mut g = GraphBuilder::new("lrn");
    g.input("image", &[None, Some(3), Some(8), Some(8)]);
    let x = g.node("LRN", &["image"], vec![("size", Attr::Int(3))], None);
    pool_and_flatten(&mut g, &x, Some("scores"));
    g.output("scores", &[None, Some(3)]);
    let onnx = d.path().join("lrn.onnx");
    fs::write(&onnx, g.finish(&ModelMetadata::default())).unwrap();
    let img = d.path().join("x.png");
    save(&color_image(8, 8, RED, 0), &img);
    fennec!("predict", onnx, img).ok();
    let out = d.path().join("lrn.nnef.tgz");
    fennec!("convert", onnx, out).fails(1, &["lrn.onnx", "cannot be written as NNEF", "Lrn"]);
    assert!(!out.exists());
}
