//! End-to-end tests of `fennec-train split` and `fennec-train preview` on tiny
//! generated folders: real binaries, real files.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use assert_cmd::assert::Assert;
use fennec_e2e::{
    BLUE, GREEN, Outcome, RED, bin, color_folders, color_image, config, fennec_train, fixture,
    save, tempdir,
};
use predicates::prelude::*;
use predicates::str::contains;

/// Every file under `root` (relative path → bytes).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// File names in `dir` (empty when it does not exist).
fn names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// raw/Cat: 12 images and a 0-byte JPEG; raw/Dog: 9 images, a truncated JPEG and a
/// Thumbs.db (not an image: ignored).
fn raw_folder(root: &Path) -> PathBuf {
    let raw = root.join("PetImages");
    for i in 0..12 {
        let ext = if i % 3 == 0 { "png" } else { "jpg" };
        save(
            &color_image(12 + i % 4, 10, RED, i),
            &raw.join(format!("Cat/{i}.{ext}")),
        );
    }
    std::fs::write(raw.join("Cat/666.jpg"), b"").unwrap();
    for i in 0..9 {
        save(
            &color_image(11, 13, BLUE, i),
            &raw.join(format!("Dog/{i}.jpg")),
        );
    }
    let good = std::fs::read(raw.join("Dog/0.jpg")).unwrap();
    std::fs::write(raw.join("Dog/11702.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(raw.join("Dog/Thumbs.db"), b"windows thumbnails").unwrap();
    raw
}

fn split_sets(out: &Path) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut m = BTreeMap::new();
    for split in ["train", "validation", "test"] {
        for class in ["Cat", "Dog"] {
            m.insert(
                (split.to_string(), class.to_string()),
                names(&out.join(split).join(class)),
            );
        }
    }
    m
}

#[test]
fn split_is_stratified_quarantines_and_leaves_originals_alone() {
    let dir = tempdir();
    let raw = raw_folder(dir.path());
    let before = snapshot(&raw);
    let out = dir.path().join("data");

    let run = fennec_train!(
        "split", raw, out, "--val", "0.25", "--test", "0.25", "--seed", "7", "--json"
    );
    let report: serde_json::Value = serde_json::from_str(&run.ok()).unwrap();

    // Counts per class: Cat 12 good → 3 test, 3 validation, 6 train; Dog 9 good →
    // round(4.5) = 5 held out: 2 test, 3 validation, 4 train.
    let counts: Vec<(String, u64, u64, u64, u64)> = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().unwrap();
            (
                c["class"].as_str().unwrap().to_string(),
                n("train"),
                n("validation"),
                n("test"),
                n("quarantined"),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![("Cat".into(), 6, 3, 3, 1), ("Dog".into(), 4, 3, 2, 1)]
    );
    let sets = split_sets(&out);
    for ((split, class), files) in &sets {
        let row = counts.iter().find(|c| &c.0 == class).unwrap();
        let want = match split.as_str() {
            "train" => row.1,
            "validation" => row.2,
            _ => row.3,
        };
        assert_eq!(files.len() as u64, want, "{split}/{class}");
    }
    // Each good image is in exactly one split, with its bytes, and copies are not links.
    for (class, good) in [("Cat", 12), ("Dog", 9)] {
        let mut all = BTreeSet::new();
        for split in ["train", "validation", "test"] {
            for f in &sets[&(split.to_string(), class.to_string())] {
                assert!(all.insert(f.clone()), "{f} twice");
                let copy = out.join(split).join(class).join(f);
                assert_eq!(
                    std::fs::read(&copy).unwrap(),
                    before[&Path::new(class).join(f)],
                    "{f}"
                );
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt;
                    assert_eq!(
                        std::fs::metadata(&copy).unwrap().nlink(),
                        1,
                        "a copy, not a link"
                    );
                }
            }
        }
        assert_eq!(all.len(), good, "{class}");
        assert!(
            !all.contains("666.jpg") && !all.contains("11702.jpg") && !all.contains("Thumbs.db")
        );
    }

    // Quarantine: the two bad files, a report with the reasons.
    assert_eq!(
        names(&out.join("quarantine/Cat")),
        BTreeSet::from(["666.jpg".to_string()])
    );
    assert_eq!(
        names(&out.join("quarantine/Dog")),
        BTreeSet::from(["11702.jpg".to_string()])
    );
    assert_eq!(
        std::fs::read(out.join("quarantine/Dog/11702.jpg")).unwrap(),
        before[Path::new("Dog/11702.jpg")]
    );
    let csv = std::fs::read_to_string(out.join("quarantine.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "file,kind,reason");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1].starts_with("Cat/666.jpg,empty,") && lines[1].contains("0 bytes"),
        "{csv}"
    );
    assert!(lines[2].starts_with("Dog/11702.jpg,truncated,"), "{csv}");
    assert_eq!(report["ignored"][0]["kind"], "not_an_image");
    assert!(
        report["ignored"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("Thumbs.db")
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
    assert_eq!(saved, report);

    // The originals are untouched.
    assert_eq!(snapshot(&raw), before);

    // Same seed, same split; another seed, another split.
    let again = dir.path().join("again");
    fennec_train!(
        "split", raw, again, "--val", "0.25", "--test", "0.25", "--seed", "7", "-q"
    )
    .ok();
    assert_eq!(split_sets(&again), sets);
    let other = dir.path().join("other");
    fennec_train!(
        "split", raw, other, "--val", "0.25", "--test", "0.25", "--seed", "8", "-q"
    )
    .ok();
    assert_ne!(split_sets(&other), sets);
}

#[test]
fn split_table_and_hard_links() {
    let dir = tempdir();
    let raw = raw_folder(dir.path());
    let out = dir.path().join("linked");
    let text = fennec_train!("split", raw, out, "--link")
        .stdout(
            contains("hard-linked")
                .and(contains("666.jpg"))
                .and(contains("Thumbs.db")),
        )
        .ok();
    // Defaults 0.1/0.1: Cat 12 → 1 test, 1 validation (round(2.4) = 2 held out);
    // Dog 9 → round(1.8) = 2 held out: 1 test, 1 validation.
    let row = |class: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(class))
            .unwrap_or_else(|| panic!("no {class} row in:\n{text}"))
            .split_whitespace()
            .skip(1)
            .map(|n| n.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(row("Cat"), vec![10, 1, 1, 1], "{text}");
    assert_eq!(row("Dog"), vec![7, 1, 1, 1], "{text}");
    assert_eq!(row("total"), vec![17, 2, 2, 2], "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let f = names(&out.join("train/Cat")).into_iter().next().unwrap();
        let (a, b) = (
            std::fs::metadata(out.join("train/Cat").join(&f)).unwrap(),
            std::fs::metadata(raw.join("Cat").join(&f)).unwrap(),
        );
        assert_eq!(
            (a.dev(), a.ino()),
            (b.dev(), b.ino()),
            "a hard link to the original"
        );
    }
}

#[test]
fn split_bad_inputs() {
    let dir = tempdir();
    let raw = raw_folder(dir.path());

    let missing = dir.path().join("nope");
    fennec_train!("split", missing, dir.path().join("o1")).fails(1, &["nope", "no such file"]);

    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep.txt"), b"mine").unwrap();
    fennec_train!("split", raw, full).fails(1, &["full", "not empty", "--force"]);
    // --force replaces only what split writes.
    fennec_train!("split", raw, full, "--force", "-q").ok();
    fennec_train!("split", raw, full, "--force", "-q").ok();
    assert_eq!(std::fs::read(full.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(names(&full.join("train/Cat")).len(), 10);

    fennec_train!(
        "split",
        raw,
        dir.path().join("o2"),
        "--val",
        "0.6",
        "--test",
        "0.5"
    )
    .fails(1, &["--val + --test", "below 1"]);
    fennec_train!("split", raw, dir.path().join("o3"), "--val=-0.1").fails(1, &["--val", ">= 0"]);
    fennec_train!("split", raw, dir.path().join("o4"), "--test", "x").fails(2, &["--test"]);
    fennec_train!("split", raw, raw.join("out")).fails(1, &["inside the raw folder"]);
    fennec_train!("split", raw, dir.path()).fails(1, &["raw folder", "inside the output folder"]);
    assert!(!raw.join("out").exists());
    for o in ["o2", "o3", "o4"] {
        assert!(!dir.path().join(o).exists(), "{o} created by a failed run");
    }
}

/// `fennec-train preview CONFIG --data DATA -o PNG EXTRA...`
fn preview(config: &Path, data: &Path, png: &Path, extra: &[&str]) -> Assert {
    let mut args = vec![
        OsStr::new("preview"),
        config.as_os_str(),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("-o"),
        png.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    assert_cmd::Command::new(bin("fennec-train"))
        .args(args)
        .assert()
}

#[test]
fn preview_draws_a_labelled_grid() {
    let dir = tempdir();
    let data = dir.path().join("data");
    color_folders(&data.join("train"), 4);
    std::fs::write(data.join("train/red/bad.jpg"), b"garbage").unwrap();
    let config = config(dir.path(), "c.yaml", &fixture("preview.yaml"));
    let png = dir.path().join("out/preview.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();

    let out = preview(&config, &data, &png, &["--json", "--seed", "5"]).ok();
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Batch size 6 by default; 16x16 inputs are shown 6x larger (96 px): a 3x2 grid
    // of 96x96 tiles with 22 px label bands and 8 px gaps.
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (8 + 3 * (96 + 8), 8 + 2 * (96 + 22 + 8)));
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(320), Some(260))
    );
    assert_eq!(report["augmentation"], true);
    let tiles = report["tiles"].as_array().unwrap();
    assert_eq!(tiles.len(), 6);
    for t in tiles {
        let n = |k: &str| t[k].as_u64().unwrap() as u32;
        let px = img
            .get_pixel(n("x") + n("width") / 2, n("y") + n("height") / 2)
            .0;
        let want = match t["class"].as_str().unwrap() {
            "blue" => BLUE,
            "green" => GREEN,
            _ => RED,
        };
        let dominant = |c: [u8; 3]| (0..3).max_by_key(|&i| c[i]).unwrap();
        assert_eq!(dominant(px), dominant(want), "tile {t} shows {px:?}");
        assert!(
            t["file"]
                .as_str()
                .unwrap()
                .contains(t["class"].as_str().unwrap())
        );
    }
    // Same seed, same picture.
    let png2 = dir.path().join("again.png");
    preview(&config, &data, &png2, &["--seed", "5"]).ok();
    assert_eq!(std::fs::read(&png).unwrap(), std::fs::read(&png2).unwrap());

    // Human output, explicit count, no augmentation.
    preview(&config, &data, &png2, &["--count", "2", "--no-augment"])
        .success()
        .stdout(contains("2 images").and(contains("augmentation off")));
    assert_eq!(image::open(&png2).unwrap().width(), 8 + 2 * (96 + 8));

    // Bad inputs name the file.
    fennec_train!("preview", dir.path().join("none.yaml"), "--data", data).fails(1, &["none.yaml"]);
    preview(&config, &dir.path().join("nodata"), &png2, &[]).fails(1, &["nodata"]);
    let nowhere = dir.path().join("no/dir/p.png");
    preview(&config, &data, &nowhere, &[]).fails(1, &["no/dir/p.png"]);
}
