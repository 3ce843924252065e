//! End-to-end tests of `fennec watch`: the real binary on a temporary folder scores
//! each image once (one JSON line each), logs and skips the runtime's bad-image
//! corpus, resumes after a restart without scoring a file twice, ignores files still
//! hidden behind a temporary name, moves done files, and stops cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fennec_e2e::*;
use serde_json::Value;

fn lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// file name -> its lines in the results file.
fn by_file(rows: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in rows {
        m.entry(r["file"].as_str().unwrap().to_string())
            .or_default()
            .push(r.clone());
    }
    m
}

fn model(dir: &Path) -> PathBuf {
    color_model_file(dir, "m.onnx", &TinyModel::default())
}

/// The bad-image corpus of `runtime_cli`'s eval test, plus an oversized image.
fn bad_corpus(dir: &Path) {
    fs::write(dir.join("empty.jpg"), b"").unwrap();
    fs::write(dir.join("text.jpg"), b"this is not a jpeg").unwrap();
    let jpg_path = dir.join("tmp-source.jpg");
    save(&color_image(40, 30, RED, 1), &jpg_path);
    let jpg = fs::read(&jpg_path).unwrap();
    fs::remove_file(&jpg_path).unwrap();
    fs::write(dir.join("truncated.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    image::GrayImage::new(10_000, 10_000)
        .save(dir.join("huge.png"))
        .unwrap();
}

#[test]
fn once_scores_each_file_once_and_skips_bad_ones() {
    let d = tempdir();
    let m = model(d.path());
    let dir = d.path().join("inbox");
    save(&color_image(9, 9, RED, 0), &dir.join("red.png"));
    save(&color_image(9, 9, GREEN, 0), &dir.join("green.jpg"));
    bad_corpus(&dir);
    fs::write(dir.join("notes.txt"), b"not an image name").unwrap();
    save(&color_image(9, 9, RED, 0), &dir.join(".partial.png"));
    let out = d.path().join("results.jsonl");

    let run = fennec!("watch", m, dir, "--out", out, "--once", "-k", "2").success();
    let stderr = text(&run.get_output().stderr);
    for bad in ["empty.jpg", "text.jpg", "truncated.jpg", "huge.png"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("skipped:") && l.contains(bad)),
            "{bad} not logged:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    let rows = lines(&out);
    let files = by_file(&rows);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "empty.jpg",
            "green.jpg",
            "huge.png",
            "red.png",
            "text.jpg",
            "truncated.jpg"
        ],
        "hidden and non-image files are never taken"
    );
    assert_eq!(rows.len(), 6, "one line per file");
    assert_eq!(files["red.png"][0]["predictions"][0]["label"], "red");
    assert_eq!(
        files["red.png"][0]["predictions"].as_array().unwrap().len(),
        2
    );
    assert_eq!(files["green.jpg"][0]["predictions"][0]["label"], "green");
    for (name, kind) in [
        ("empty.jpg", "empty"),
        ("text.jpg", "not_an_image"),
        ("truncated.jpg", "truncated"),
        ("huge.png", "too_large"),
    ] {
        assert_eq!(files[name][0]["kind"], kind, "{name}");
        assert!(files[name][0]["error"].as_str().unwrap().contains(name));
    }

    // A restart scores nothing twice; new and changed files are scored.
    fennec!("watch", m, dir, "--out", out, "--once").success();
    assert_eq!(lines(&out).len(), 6, "nothing new: nothing appended");
    save(&color_image(9, 9, BLUE, 0), &dir.join("blue.png"));
    save(&color_image(13, 11, GREEN, 4), &dir.join("red.png"));
    let run = fennec!("watch", m, dir, "--out", out, "--once").success();
    let rows = lines(&out);
    assert_eq!(rows.len(), 8, "{rows:?}");
    let files = by_file(&rows);
    assert_eq!(files["blue.png"][0]["predictions"][0]["label"], "blue");
    assert_eq!(files["red.png"].len(), 2, "a changed file is a new picture");
    assert_eq!(files["red.png"][1]["predictions"][0]["label"], "green");
    // 2 + 2 scored (red and green, then blue and the new red), the 4 bad ones failed.
    let stderr = text(&run.get_output().stderr);
    assert!(stderr.contains("4 scored, 4 failed in all"), "{stderr}");
}

#[test]
fn a_lost_state_save_is_recovered_from_the_results() {
    let d = tempdir();
    let m = model(d.path());
    let dir = d.path().join("inbox");
    save(&color_image(9, 9, RED, 0), &dir.join("a.png"));
    save(&color_image(9, 9, BLUE, 0), &dir.join("b.png"));
    let out = d.path().join("r.jsonl");
    let state = d.path().join("state.json");
    fennec!("watch", m, dir, "--out", out, "--state", state, "--once").success();
    // As if the process died after appending these lines but before saving its
    // state (the previous state), and in the middle of writing another line.
    let before = fs::read(&state).unwrap();
    save(&color_image(9, 9, GREEN, 0), &dir.join("c.png"));
    fennec!("watch", m, dir, "--out", out, "--state", state, "--once").success();
    fs::write(&state, before).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&out).unwrap();
    std::io::Write::write_all(&mut f, b"{\"file\": \"d.pn").unwrap();
    drop(f);

    fennec!("watch", m, dir, "--out", out, "--state", state, "--once").success();
    let rows = lines(&out);
    let files = by_file(&rows);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(files.values().all(|v| v.len() == 1), "{files:?}");

    fs::write(&state, b"{ not json").unwrap();
    fennec!("watch", m, dir, "--out", out, "--state", state, "--once")
        .fails(1, &["state.json", "corrupt watch state"]);
    fennec!("watch", m, d.path().join("missing"), "--out", out, "--once")
        .fails(1, &["missing", "not a folder"]);
}

#[cfg(unix)]
#[test]
fn watching_scores_arrivals_moves_them_and_stops_on_sigterm() {
    let d = tempdir();
    let m = model(d.path());
    let dir = d.path().join("inbox");
    let done = d.path().join("done");
    fs::create_dir_all(&dir).unwrap();
    let out = d.path().join("r.jsonl");
    let mut child = Command::new(bin("fennec"))
        .args(["watch".as_ref(), m.as_os_str(), dir.as_os_str()])
        .arg("--out")
        .arg(&out)
        .arg("--move-done")
        .arg(&done)
        .args(["--settle", "0.2", "--interval", "0.05"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A camera writes under a hidden name, then renames: only the rename is taken.
    save(&color_image(9, 9, RED, 0), &dir.join(".cam-0001.png"));
    fs::rename(dir.join(".cam-0001.png"), dir.join("cam-0001.png")).unwrap();
    save(&color_image(9, 9, BLUE, 0), &dir.join("cam-0002.png"));
    fs::write(dir.join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&out).len() < 3 {
        assert!(Instant::now() < deadline, "not scored: {:?}", lines(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("stopped: 2 scored, 1 failed"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("skipped:") && l.contains("broken.jpg"))
    );

    let files = by_file(&lines(&out));
    assert_eq!(files.len(), 3, "{files:?}");
    assert_eq!(files["cam-0001.png"][0]["predictions"][0]["label"], "red");
    assert_eq!(files["cam-0002.png"][0]["predictions"][0]["label"], "blue");
    assert!(files["broken.jpg"][0]["kind"].is_string());
    for name in ["cam-0001.png", "cam-0002.png", "broken.jpg"] {
        assert!(done.join(name).is_file(), "{name} moved");
        assert!(!dir.join(name).exists(), "{name} left the inbox");
    }
}
