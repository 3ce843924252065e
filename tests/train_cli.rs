//! End-to-end tests of `fennec-train fit` and `fennec-train evaluate` on tiny
//! generated colour-class folders: the run directory, exact resume, early stopping,
//! Ctrl-C, and every bad input of the trainer issue.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::assert::OutputAssertExt;
use fennec_e2e::{
    BLUE, Outcome, bin, color_folders, color_image, config, fennec_train, fixture, fixture_with,
    save,
};
use predicates::prelude::*;
use predicates::str::contains;
use serde_json::Value;
use tempfile::TempDir;

/// `root/{train,validation,test}/{blue,green,red}/*` with `n` images per class.
fn data(root: &Path, n: u32) -> PathBuf {
    let d = root.join("data");
    for split in ["train", "validation", "test"] {
        color_folders(&d.join(split), n);
    }
    d
}

/// A temporary folder holding `data/` ([`data`], `n` images per class) and the tiny
/// fixture config, with `edits` applied, as `<name>`: (folder, data, config).
fn setup(n: u32, name: &str, edits: &[(&str, &str)]) -> (TempDir, PathBuf, PathBuf) {
    let dir = fennec_e2e::tempdir();
    let d = data(dir.path(), n);
    let cfg = config(dir.path(), name, &fixture_with("tiny.yaml", edits));
    (dir, d, cfg)
}

fn json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn checkpoints(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The highest epoch with a complete checkpoint (one whose state.json is written), or 0;
/// safe to call while training adds and prunes checkpoints.
fn newest_checkpoint(run: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else {
        return 0;
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("epoch-")?
                .parse()
                .ok()?;
            e.path().join("state.json").exists().then_some(n)
        })
        .max()
        .unwrap_or(0)
}

/// History without the timing columns, which differ between runs.
fn metrics(run: &Path) -> Vec<Value> {
    json(&run.join("history.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let o = r.as_object_mut().unwrap();
            o.remove("train_seconds");
            o.remove("images_per_second");
            r
        })
        .collect()
}

fn weights(run: &Path, epoch: usize) -> String {
    let state = json(&run.join(format!("checkpoints/epoch-{epoch:03}/state.json")));
    state["weights_sha256"].as_str().unwrap().to_string()
}

#[test]
fn fit_writes_a_complete_run_and_evaluate_reads_it() {
    let (dir, d, cfg) = setup(6, "tiny.yaml", &[]);
    let run = dir.path().join("run");
    fennec_train!("fit", cfg, "--data", d, "--out", run, "--threads", "1")
        .success()
        .stdout(contains("model.onnx"));

    assert_eq!(
        json(&run.join("classes.json")),
        serde_json::json!(["blue", "green", "red"])
    );
    let resolved = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        resolved.contains("name: tiny") && resolved.contains("epochs: 3"),
        "{resolved}"
    );
    let history = json(&run.join("history.json"));
    assert_eq!(history.as_array().unwrap().len(), 3);
    for r in history.as_array().unwrap() {
        for k in ["train_loss", "val_loss"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{r}");
        }
        for k in ["train_accuracy", "val_accuracy", "val_binary_accuracy"] {
            assert!((0.0..=1.0).contains(&r[k].as_f64().unwrap()), "{r}");
        }
    }
    let csv = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let best = json(&run.join("best.json"));
    let best_epoch = best["epoch"].as_u64().unwrap() as usize;
    // The last and the best checkpoints are kept, each complete.
    let mut want = vec![format!("epoch-{best_epoch:03}"), "epoch-003".to_string()];
    want.dedup();
    assert_eq!(checkpoints(&run), want);
    for c in &want {
        for f in ["model.bpk", "optim.bpk", "state.json"] {
            assert!(run.join("checkpoints").join(c).join(f).is_file(), "{c}/{f}");
        }
    }
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["data"]["train"]["images"], 18);
    assert_eq!(summary["data"]["validation"]["per_class"]["red"], 6);
    assert_eq!(summary["threads"], 1);
    assert_eq!(summary["seed"], 7);
    assert_eq!(summary["epochs_done"], 3);
    assert!(std::fs::metadata(run.join("model.onnx")).unwrap().len() > 100);

    let eval = fennec_train!(
        "evaluate",
        run,
        d.join("test"),
        "--checkpoint",
        "last",
        "--json"
    )
    .ok();
    let eval: Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["images"], 18);
    assert_eq!(eval["epoch"], 3);
    assert!((0.0..=1.0).contains(&eval["accuracy"].as_f64().unwrap()));
    fennec_train!("evaluate", run, d.join("test"))
        .success()
        .stdout(contains("accuracy").and(contains(format!("epoch {best_epoch} (best)"))));

    // An explicit --out holding a run is refused (no accidental overwrite).
    fennec_train!("fit", cfg, "--data", d, "--out", run)
        .fails(1, &["holds another run", "--resume"]);
}

#[test]
fn resume_gives_the_same_weights_and_history_as_an_uninterrupted_run() {
    let (dir, d, cfg) = setup(6, "tiny.yaml", &[]);
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    fennec_train!(
        "fit",
        cfg,
        "--data",
        d,
        "--out",
        straight,
        "--threads",
        "1",
        "-q"
    )
    .ok();
    fennec_train!(
        "fit",
        cfg,
        "--data",
        d,
        "--out",
        resumed,
        "--threads",
        "1",
        "-q",
        "--epochs",
        "1"
    )
    .ok();
    assert_eq!(checkpoints(&resumed), vec!["epoch-001"]);
    fennec_train!(
        "fit",
        "--resume",
        resumed,
        "--epochs",
        "3",
        "--threads",
        "1",
        "-q"
    )
    .ok();
    assert_eq!(
        weights(&straight, 3),
        weights(&resumed, 3),
        "weights differ after resume"
    );
    assert_eq!(metrics(&straight), metrics(&resumed));
    // And a second uninterrupted run is identical too (determinism).
    let again = dir.path().join("again");
    fennec_train!(
        "fit",
        cfg,
        "--data",
        d,
        "--out",
        again,
        "--threads",
        "1",
        "-q"
    )
    .ok();
    assert_eq!(weights(&straight, 3), weights(&again, 3));
}

#[test]
fn early_stopping_stops_and_exports_the_best_epoch() {
    // min_delta so large that no epoch after the first counts as an improvement.
    let stop_early = "epochs: 20\n  early_stopping: {patience: 2, min_delta: 100.0}";
    let (dir, d, cfg) = setup(4, "es.yaml", &[("epochs: 3", stop_early)]);
    let run = dir.path().join("run");
    fennec_train!("fit", cfg, "--data", d, "--out", run, "--threads", "1")
        .success()
        .stderr(contains("early stopping after epoch 3"))
        .stdout(contains("model.onnx from epoch 1"));
    assert_eq!(json(&run.join("history.json")).as_array().unwrap().len(), 3);
    assert_eq!(json(&run.join("best.json"))["epoch"], 1);
    assert_eq!(checkpoints(&run), vec!["epoch-001", "epoch-003"]);
    let summary = json(&run.join("summary.json"));
    assert_eq!(summary["stopped_early"], true);
    // Resuming a run that stopped early has nothing left to do.
    fennec_train!("fit", "--resume", run, "-q")
        .success()
        .stdout(contains("trained 0 epoch(s)"));
}

#[test]
fn ctrl_c_stops_keeps_the_last_checkpoint_and_resume_continues() {
    let (dir, d, cfg) = setup(6, "long.yaml", &[("epochs: 3", "epochs: 100000")]);
    let run = dir.path().join("run");
    let mut child = Command::new(bin("fennec-train"))
        .args([
            "fit".as_ref(),
            cfg.as_os_str(),
            "--data".as_ref(),
            d.as_os_str(),
            "--out".as_ref(),
            run.as_os_str(),
        ])
        .args(["--threads", "1", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Only the last and the best checkpoints are kept, so a given epoch's folder may come
    // and go between two looks: wait for any finished checkpoint past epoch 1.
    while newest_checkpoint(&run) < 2 {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("no checkpoint past epoch 1 after 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap().assert().code(130).stderr(
        contains("is intact")
            .and(contains("--resume"))
            .and(contains("panicked").not()),
    );
    // Every checkpoint left is complete and matches the history.
    let last = checkpoints(&run)
        .iter()
        .filter_map(|c| c.strip_prefix("epoch-")?.parse::<usize>().ok())
        .max()
        .unwrap();
    for c in checkpoints(&run) {
        assert!(c.starts_with("epoch-"), "leftover {c}");
        let state = json(&run.join("checkpoints").join(&c).join("state.json"));
        assert!(run.join("checkpoints").join(&c).join("model.bpk").is_file());
        assert_eq!(
            state["history"].as_array().unwrap().len(),
            state["epoch"].as_u64().unwrap() as usize
        );
    }
    assert_eq!(
        json(&run.join("history.json")).as_array().unwrap().len(),
        last
    );
    let next = (last + 1).to_string();
    fennec_train!(
        "fit",
        "--resume",
        run,
        "--epochs",
        next,
        "--threads",
        "1",
        "-q"
    )
    .ok();
    assert_eq!(
        json(&run.join("history.json")).as_array().unwrap().len(),
        last + 1
    );
}

#[test]
fn bad_data_folders_are_one_line_errors() {
    let (dir, d, cfg) = setup(2, "tiny.yaml", &[]);
    let out = |name: &str| dir.path().join(name);

    fennec_train!("fit", cfg, "--data", out("nowhere"), "--out", out("r1"))
        .fails(1, &["nowhere", "not found"]);

    std::fs::remove_dir_all(d.join("validation/green")).unwrap();
    std::fs::remove_dir_all(d.join("validation/red")).unwrap();
    fennec_train!("fit", cfg, "--data", d, "--out", out("r2"))
        .fails(1, &["validation", "only 1 class folder"]);

    color_folders(&d.join("validation"), 2);
    std::fs::create_dir_all(d.join("validation/purple")).unwrap();
    fennec_train!("fit", cfg, "--data", d, "--out", out("r3")).fails(
        1,
        &[
            "class folders differ",
            "[blue, green, red]",
            "[blue, green, purple, red]",
        ],
    );
    std::fs::remove_dir_all(d.join("validation/purple")).unwrap();

    std::fs::create_dir_all(d.join("train/purple")).unwrap();
    fennec_train!("fit", cfg, "--data", d, "--out", out("r4"))
        .fails(1, &["train/purple", "no image files"]);
    std::fs::remove_dir_all(d.join("train/purple")).unwrap();

    // A corrupt file is reported and skipped, or rejected with --strict.
    std::fs::write(
        d.join("train/red/broken.jpg"),
        b"\xff\xd8\xff\xe0 not really a jpeg",
    )
    .unwrap();
    fennec_train!("fit", cfg, "--data", d, "--out", out("r5"), "--strict")
        .fails(1, &["--strict", "broken.jpg"]);
    fennec_train!("fit", cfg, "--data", d, "--out", out("r6"), "--epochs", "1")
        .success()
        .stderr(contains("warning: skipped").and(contains("broken.jpg")));
    let summary = json(&out("r6").join("summary.json"));
    assert_eq!(summary["data"]["train"]["skipped"], 1);
    assert!(
        summary["data"]["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("broken.jpg")
    );
}

#[test]
fn bad_configs_devices_and_run_dirs_are_one_line_errors() {
    let dir = fennec_e2e::tempdir();
    let d = data(dir.path(), 2);
    let out = |name: &str| dir.path().join(name);

    let typo = config(
        dir.path(),
        "typo.yaml",
        &fixture_with("tiny.yaml", &[("kernel: 3", "kernal: 3")]),
    );
    fennec_train!("fit", typo, "--data", d, "--out", out("r1")).fails(1, &["typo.yaml", "kernal"]);
    let negative = config(
        dir.path(),
        "neg.yaml",
        &fixture_with("tiny.yaml", &[("height: 8", "height: -8")]),
    );
    fennec_train!("fit", negative, "--data", d, "--out", out("r2"))
        .fails(1, &["neg.yaml", "height"]);

    let cfg = config(dir.path(), "tiny.yaml", &fixture("tiny.yaml"));
    // The harness builds the default (CPU-only) binaries.
    fennec_train!("fit", cfg, "--data", d, "--device", "cuda").fails(1, &["--features cuda"]);

    // A run directory that cannot be created, even by root: a path under a file.
    let under_file = cfg.join("run");
    fennec_train!("fit", cfg, "--data", d, "--out", under_file)
        .fails(1, &["tiny.yaml/run", "cannot create"]);

    // A checkpoint from another config: clear error naming the checkpoint file.
    let (a, b) = (out("a"), out("b"));
    fennec_train!("fit", cfg, "--data", d, "--out", a, "--epochs", "1", "-q").ok();
    let wide = config(
        dir.path(),
        "wide.yaml",
        &fixture_with("tiny.yaml", &[("filters: 4", "filters: 6")]),
    );
    fennec_train!("fit", wide, "--data", d, "--out", b, "--epochs", "1", "-q").ok();
    std::fs::copy(
        a.join("checkpoints/epoch-001/model.bpk"),
        b.join("checkpoints/epoch-001/model.bpk"),
    )
    .unwrap();
    fennec_train!("evaluate", b, d.join("test"))
        .fails(1, &["epoch-001/model.bpk", "does not fit the run's config"]);
    fennec_train!("fit", "--resume", b, "--epochs", "2")
        .fails(1, &["epoch-001/model.bpk", "does not fit"]);

    // Evaluate on a folder whose classes differ from the run's.
    std::fs::rename(d.join("test/red"), d.join("test/orange")).unwrap();
    fennec_train!("evaluate", a, d.join("test"))
        .fails(1, &["class folders differ", "classes.json"]);
    fennec_train!("evaluate", a, d.join("validation"), "--checkpoint", "7")
        .fails(1, &["no checkpoint for epoch 7"]);
}

/// A full disk while writing a checkpoint (simulated with a file-size limit, which
/// binds root too): clear error naming the checkpoint, earlier checkpoint intact,
/// and the run can be resumed afterwards.
#[test]
fn disk_full_during_a_checkpoint_keeps_the_earlier_one() {
    // A dense layer big enough that the model file (~10 kB) is over the limit below
    // while the JSON files (~3 kB) are not.
    let (dir, d, cfg) = setup(3, "tiny.yaml", &[("units: 8", "units: 64")]);
    let run = dir.path().join("run");
    fennec_train!(
        "fit",
        cfg,
        "--data",
        d,
        "--out",
        run,
        "--epochs",
        "1",
        "--threads",
        "1",
        "-q"
    )
    .ok();
    let model = std::fs::read(run.join("checkpoints/epoch-001/model.bpk")).unwrap();
    assert!(
        model.len() > 6000,
        "the model must be larger than the limit below"
    );
    // ulimit -f counts 512-byte blocks; SIGXFSZ ignored so writes fail with EFBIG.
    let script = format!(
        "ulimit -f 10; trap '' XFSZ; exec '{}' fit --resume '{}' --epochs 3 --threads 1 -q",
        bin("fennec-train").display(),
        run.display()
    );
    assert_cmd::Command::new("sh")
        .args(["-c", &script])
        .assert()
        .code(1)
        .stderr(
            contains("epoch-002")
                .and(contains("cannot write checkpoint"))
                .and(contains("panicked").not()),
        );
    assert_eq!(
        checkpoints(&run),
        vec!["epoch-001"],
        "no partial checkpoint left"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoints/epoch-001/model.bpk")).unwrap(),
        model
    );
    fennec_train!(
        "fit",
        "--resume",
        run,
        "--epochs",
        "2",
        "--threads",
        "1",
        "-q"
    )
    .ok();
    assert_eq!(json(&run.join("history.json")).as_array().unwrap().len(), 2);
}

#[test]
fn grayscale_configs_train_on_colour_files() {
    // Files are RGB; a 1-channel config converts them (Pillow's luma), as the runtime.
    let dir = fennec_e2e::tempdir();
    let d = dir.path().join("data");
    for split in ["train", "validation"] {
        for (i, v) in [(0u32, 30u8), (1, 220)] {
            for k in 0..4 {
                let img = color_image(9, 9, [v, v, v], k);
                save(
                    &img,
                    &d.join(split).join(format!("c{i}")).join(format!("{k}.png")),
                );
            }
        }
    }
    save(&color_image(9, 9, BLUE, 0), &d.join("train/c0/extra.png"));
    let yaml = fixture_with("tiny.yaml", &[("channels: 3", "channels: 1")]);
    let cfg = config(dir.path(), "gray.yaml", &yaml);
    let run = dir.path().join("run");
    fennec_train!("fit", cfg, "--data", d, "--out", run, "--epochs", "1", "-q").ok();
    assert_eq!(
        json(&run.join("summary.json"))["data"]["train"]["images"],
        9
    );
}
