//! Augmentation throughput: how many 224x224 RGB images per second one core can
//! augment with every option on (the Keras `ImageDataGenerator` set), so that
//! augmentation never starves training. Run with `cargo bench -p fennec-train --bench augment`;
//! `bench/augment.sh` runs it beside Keras' `ImageDataGenerator.random_transform`.
//! Prints one JSON line per image size.
use fennec_train::augment::Augmenter;
use fennec_train::config::Augmentation;
use std::time::Instant;

fn main() {
    let augmenter = Augmenter::new(&Augmentation {
        horizontal_flip: true,
        rotation: 20.0,
        zoom: 0.2,
        width_shift: 0.2,
        height_shift: 0.2,
        brightness: Some([0.8, 1.2]),
    });
    for (size, n) in [(28usize, 20_000u64), (150, 1_000), (224, 500)] {
        let original: Vec<u8> = (0..size * size * 3)
            .map(|i| ((i * 37 + i / 3 * 11) % 251) as u8)
            .collect();
        let mut img = original.clone();
        // Warm-up, then timed rounds; the median of 5 rounds is reported.
        augmenter.apply(&mut img, size, size, 3, 0);
        let mut per_image: Vec<f64> = (0..5)
            .map(|round| {
                let start = Instant::now();
                for seed in 0..n {
                    img.copy_from_slice(&original);
                    augmenter.apply(&mut img, size, size, 3, round * n + seed);
                }
                start.elapsed().as_secs_f64() / n as f64
            })
            .collect();
        per_image.sort_by(f64::total_cmp);
        let median = per_image[2];
        println!(
            "{{\"impl\":\"fennec\",\"size\":{size},\"ms_per_image\":{:.4},\"images_per_s\":{:.0}}}",
            median * 1e3,
            1.0 / median
        );
    }
}
