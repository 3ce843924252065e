//! End-to-end tests of scoring beyond one run: `fennec eval --shard i/n --part`,
//! `fennec merge`, `--predictions` with `--resume` after `kill -9`, `predict
//! --shard`, and the `--report` page rendered by a real headless browser.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fennec_e2e::*;
use serde_json::Value;

/// `dir/data/<colour>/*` with `n` images per colour, a few of them mislabelled
/// (so there are mistakes of several confidences) and a few bad files (so there
/// are skipped entries of every origin); the colour model in `dir/m.onnx`.
fn labelled_folder(dir: &Path, n: u32) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    color_folders(&data, n);
    for i in 0..4u32 {
        // Mixed colours in the wrong folder: mistakes with graded confidence.
        let img = image::RgbImage::from_fn(9, 9, |x, _| {
            image::Rgb(if x < 5 + i % 3 { GREEN } else { RED })
        });
        save(&img, &data.join(format!("blue/mixed{i}.png")));
        save(
            &color_image(8, 8, RED, i),
            &data.join(format!("green/red{i}.png")),
        );
    }
    fs::write(data.join("red/empty.jpg"), b"").unwrap();
    fs::write(data.join("green/text.png"), b"not a png").unwrap();
    fs::write(data.join("blue/notes.txt"), b"not an image").unwrap();
    fs::write(data.join("stray.txt"), b"not in a class folder").unwrap();
    (color_model_file(dir, "m.onnx", &TinyModel::default()), data)
}

/// The JSON report without its two timing lines: what must be byte-identical.
fn without_timing(json: &str) -> String {
    json.lines()
        .filter(|l| !l.starts_with("  \"seconds\":") && !l.starts_with("  \"images_per_second\":"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table report without its first line (which holds the time taken).
fn without_first_line(table: &str) -> String {
    table.lines().skip(1).collect::<Vec<_>>().join("\n")
}

#[test]
fn merged_shards_print_the_single_run_report() {
    let d = tempdir();
    let (m, data) = labelled_folder(d.path(), 7);
    let single_csv = d.path().join("single.csv");
    let single_json = fennec!("eval", m, data, "--json", "-q", "--csv", single_csv).ok();
    let single_table = fennec!("eval", m, data, "-q").ok();
    let v: Value = serde_json::from_str(&single_json).unwrap();
    assert_eq!(v["scored"], 29, "{single_json}");
    assert_eq!(v["skipped"].as_array().unwrap().len(), 4, "{single_json}");

    for n in 1..=7u32 {
        let parts_dir = d.path().join(format!("parts{n}"));
        fs::create_dir_all(&parts_dir).unwrap();
        let mut parts = Vec::new();
        let mut scored = 0;
        for i in 0..n {
            let part = parts_dir.join(format!("{i}.json"));
            let shard = format!("{i}/{n}");
            let out = fennec!(
                "eval", m, data, "--shard", shard, "--part", part, "--json", "-q"
            )
            .ok();
            let v: Value = serde_json::from_str(&out).unwrap();
            scored += v["scored"].as_u64().unwrap();
            parts.push(part);
        }
        assert_eq!(scored, 29, "{n} shards score every image once");
        let merged_csv = parts_dir.join("merged.csv");
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"merge"];
        args.extend(parts.iter().rev().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
        let json = run(
            "fennec",
            &[&args[..], &[&"--json", &"--csv", &merged_csv]].concat(),
        )
        .ok();
        assert_eq!(
            without_timing(&json),
            without_timing(&single_json),
            "{n} shards"
        );
        assert_eq!(
            fs::read(&merged_csv).unwrap(),
            fs::read(&single_csv).unwrap()
        );
        let table = run("fennec", &args).ok();
        assert_eq!(
            without_first_line(&table),
            without_first_line(&single_table),
            "{n} shards"
        );
    }
}

#[test]
fn predict_shards_partition_the_files() {
    let d = tempdir();
    let (m, data) = labelled_folder(d.path(), 5);
    let files = |shard: Option<&str>| -> Vec<String> {
        let out = match shard {
            Some(s) => fennec!("predict", m, data, "--json", "-q", "--shard", s).ok(),
            None => fennec!("predict", m, data, "--json", "-q").ok(),
        };
        out.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["file"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let all = files(None);
    let mut union: Vec<String> = ["0/3", "1/3", "2/3"]
        .iter()
        .flat_map(|s| files(Some(s)))
        .collect();
    union.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(union, expected, "every file in exactly one shard");
    // auto/3 from a Kubernetes indexed Job's variable.
    let auto = assert_cmd::Command::new(bin("fennec"))
        .args([
            "predict".as_ref(),
            m.as_os_str(),
            data.as_os_str(),
            "--json".as_ref(),
            "-q".as_ref(),
        ])
        .args(["--shard", "auto/3"])
        .env("JOB_COMPLETION_INDEX", "1")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .assert()
        .ok();
    assert_eq!(auto.lines().count(), files(Some("1/3")).len());
}

/// Runs `fennec eval` with `--predictions` and kills it (SIGKILL) once the file
/// holds `lines` lines; returns whether the kill came before the run ended.
fn kill_after(args: &[&Path], predictions: &Path, lines: usize, extra: &[&str]) -> bool {
    let mut child = Command::new(bin("fennec"))
        .arg("eval")
        .args(args)
        .arg("--predictions")
        .arg(predictions)
        .args([
            "--resume",
            "-q",
            "--batch",
            "1",
            "--threads",
            "1",
            "--decode-threads",
            "1",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let seen = fs::read(predictions).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        if seen >= lines {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn killed_runs_resume_to_the_same_report() {
    let d = tempdir();
    let (m, data) = labelled_folder(d.path(), 300);
    let single = fennec!("eval", m, data, "--json", "-q").ok();
    let files = 3 * 300 + 8 + 2;

    // Kill the whole-folder run three times at different points, then finish it.
    let p = d.path().join("all.jsonl");
    let mut interrupted = 0;
    for lines in [1, files / 3, 2 * files / 3] {
        interrupted += kill_after(&[&m, &data], &p, lines, &[]) as usize;
    }
    assert!(interrupted > 0, "no kill landed before the end of the run");
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.lines().count() <= files + 1);
    let resumed = fennec!(
        "eval",
        m,
        data,
        "--predictions",
        p,
        "--resume",
        "--json",
        "-q"
    )
    .ok();
    assert_eq!(without_timing(&resumed), without_timing(&single));
    let text = fs::read_to_string(&p).unwrap();
    assert_eq!(
        text.lines().count(),
        files + 1,
        "a header and one line per file"
    );
    for line in text.lines() {
        serde_json::from_str::<Value>(line).expect("no torn or mixed line");
    }
    // Finished: without --resume the file is not overwritten.
    fennec!("eval", m, data, "--predictions", p, "-q").fails(1, &["all.jsonl", "--resume"]);

    // Shard 1 of 3 killed and resumed, merged with the two others.
    let mut parts = Vec::new();
    for i in 0..3 {
        let part = d.path().join(format!("part{i}.json"));
        let shard = format!("{i}/3");
        if i == 1 {
            let p = d.path().join("shard1.jsonl");
            let extra = ["--shard", shard.as_str()];
            kill_after(&[&m, &data], &p, files / 6, &extra);
            fennec!(
                "eval",
                m,
                data,
                "--shard",
                shard,
                "--predictions",
                p,
                "--resume",
                "--part",
                part,
                "-q"
            )
            .ok();
        } else {
            fennec!("eval", m, data, "--shard", shard, "--part", part, "-q").ok();
        }
        parts.push(part);
    }
    let merged = fennec!("merge", parts[0], parts[1], parts[2], "--json").ok();
    assert_eq!(without_timing(&merged), without_timing(&single));
}

#[test]
fn bad_parts_are_one_line_errors_and_nothing_is_written() {
    let d = tempdir();
    let (m, data) = labelled_folder(d.path(), 4);
    let other = color_model_file(d.path(), "other.onnx", &TinyModel::default().logits());
    let part = |model: &Path, shard: &str, name: &str| {
        let path = d.path().join(name);
        fennec!("eval", model, data, "--shard", shard, "--part", path, "-q").ok();
        path
    };
    let (a0, a1, a2) = (
        part(&m, "0/3", "a0.json"),
        part(&m, "1/3", "a1.json"),
        part(&m, "2/3", "a2.json"),
    );
    let b1 = part(&other, "1/3", "b1.json");
    let c1 = part(&m, "1/2", "c1.json");
    let truncated = d.path().join("truncated.json");
    let bytes = fs::read(&a2).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out_of_range = d.path().join("range.json");
    let text = fs::read_to_string(&a2).unwrap();
    fs::write(
        &out_of_range,
        text.replace(
            r#""shard":{"index":2,"count":3}"#,
            r#""shard":{"index":5,"count":3}"#,
        ),
    )
    .unwrap();

    let json = d.path().join("out.json");
    let report = d.path().join("report");
    let merge = |parts: &[&PathBuf], needles: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"merge"];
        args.extend(parts.iter().map(|p| p as &dyn AsRef<std::ffi::OsStr>));
        args.extend([
            &"--json" as &dyn AsRef<std::ffi::OsStr>,
            &json,
            &"--report",
            &report,
        ]);
        run("fennec", &args).fails(1, needles);
        assert!(!json.exists() && !report.exists(), "nothing written");
    };
    merge(&[&a0, &b1, &a2], &["b1.json", "model"]);
    merge(&[&a0, &c1, &a2], &["c1.json", "shard count"]);
    merge(&[&a0, &a2], &["shard 1/3 missing"]);
    merge(&[&a0, &a1, &a1, &a2], &["a1.json", "given twice"]);
    merge(
        &[&a0, &a1, &truncated],
        &["truncated.json", "not a complete"],
    );
    merge(&[&a0, &a1, &out_of_range], &["range.json", "out of range"]);
    merge(&[&d.path().join("nope.json")], &["nope.json"]);
    fennec!("eval", m, data, "--shard", "3/3").fails(2, &["3/3", "out of range"]);
    fennec!("eval", m, data, "--shard", "x").fails(2, &["INDEX/COUNT"]);
    fennec!("eval", m, data, "--resume").code(2);
}

#[test]
fn report_renders_in_a_headless_browser() {
    let d = tempdir();
    let (m, data) = labelled_folder(d.path(), 6);
    let report = d.path().join("report");
    fennec!("eval", m, data, "--report", report, "-q").ok();
    let html = fs::read_to_string(report.join("index.html")).unwrap();
    for file in ["confusion.png", "per_class.png", "thumbs/0.png"] {
        assert!(report.join(file).is_file(), "{file}");
    }
    assert!(
        html.contains("src=\"confusion.png\"") && html.contains("mixed"),
        "{html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("http"),
        "self-contained"
    );
    // The same report from shards.
    let parts: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = d.path().join(format!("p{i}.json"));
            fennec!(
                "eval",
                m,
                data,
                "--shard",
                format!("{i}/2"),
                "--part",
                p,
                "-q"
            )
            .ok();
            p
        })
        .collect();
    let merged = d.path().join("merged");
    fennec!("merge", parts[0], parts[1], "--report", merged).ok();
    for file in [
        "index.html",
        "confusion.png",
        "per_class.png",
        "thumbs/0.png",
    ] {
        assert_eq!(
            fs::read(report.join(file)).unwrap(),
            fs::read(merged.join(file)).unwrap(),
            "{file}"
        );
    }

    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        println!("SKIP: no chromium to render the report (.ci/run installs Debian's chromium)");
        return;
    };
    let shot = d.path().join("shot.png");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,1400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.join("index.html").display()))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("ERR_FILE_NOT_FOUND"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    // The heat map is on screen: its dark cells (the diagonal of a good model)
    // show in the screenshot in the heat map's darkest colour.
    let img = image::open(&shot).unwrap().to_rgb8();
    let near = |p: &image::Rgb<u8>, c: [u8; 3]| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 8);
    let hot = img
        .pixels()
        .filter(|p| near(p, fennec_runtime::report::HOT))
        .count();
    let cell = fennec_runtime::report::cell_size(3) as usize;
    assert!(
        hot >= cell * cell / 2, // a full cell is (cell - 1)² pixels less its count
        "{hot} heat-map pixels in the screenshot"
    );
    fs::copy(&shot, std::env::temp_dir().join("fennec-report-shot.png")).ok();
}
