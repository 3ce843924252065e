//! Golden test of the preprocessing contract: fennec's tensors for the committed
//! images must match what Pillow/numpy computed (tests/golden/make_preprocess_golden.py),
//! within each case's declared tolerance.

use std::path::PathBuf;

use fennec_runtime::{DecodeLimits, Preprocess};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/preprocess")
}

#[test]
fn preprocessing_matches_pillow() {
    let dir = golden_dir();
    let cases: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "golden set shrank to {}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let spec: Preprocess = serde_json::from_value(case["spec"].clone()).unwrap();
        spec.validate().unwrap();
        let tolerance = case["tolerance"].as_f64().unwrap() as f32;
        let bytes = std::fs::read(
            dir.join("expected")
                .join(case["expected"].as_str().unwrap()),
        )
        .unwrap();
        let expected: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let image = dir.join("images").join(case["image"].as_str().unwrap());
        let got = match spec.load(&image, &DecodeLimits::default()) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert_eq!(got.len(), expected.len(), "{name}: tensor length");
        let (worst, at) = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0f32, 0),
                |(m, i), (j, d)| if d > m { (d, j) } else { (m, i) },
            );
        if worst > tolerance {
            failures.push(format!(
                "{name}: max |diff| {worst:.6} ({:.2} levels) at {at} > tolerance {tolerance:.6} ({})",
                worst * 255.0,
                case["why"].as_str().unwrap_or("")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden preprocessing mismatches:\n{}",
        failures.join("\n")
    );
}
