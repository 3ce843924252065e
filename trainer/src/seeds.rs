//! Every random choice of training as a pure function of the config's seed, the
//! epoch and the example: the shuffle of an epoch, each image's augmentation and
//! burn's RNG (weight initialisation, dropout). None depends on earlier epochs, so a
//! resumed run trains epoch k exactly as an uninterrupted one.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};

/// Order of the examples in `epoch` (1-based): a Fisher–Yates shuffle driven by
/// Xoshiro256++ seeded from (seed, epoch) only, so it does not depend on earlier
/// epochs; `0..n` when `shuffle` is off.
pub fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(&[seed, 0x5348_5546, epoch as u64]));
        for i in (1..n).rev() {
            // Multiply-shift to [0, i]: bias below 2^-40 for any realistic n.
            let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Seed of the augmentation of example `index` in `epoch`.
pub fn image_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    mix(&[seed, 0x4155_4745, epoch as u64, index as u64])
}

/// Seed of burn's RNG (dropout masks) at the start of `epoch`; epoch 0 is the
/// weight initialisation.
pub fn burn_seed(seed: u64, epoch: usize) -> u64 {
    mix(&[seed, 0x4255_524e, epoch as u64])
}

/// SplitMix64 over a list of words: a well-spread 64-bit seed from small numbers.
fn mix(words: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &w in words {
        h ^= w;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_seeded_permutation_independent_of_history() {
        let a = epoch_order(100, 42, 3, true);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 42, 3, true));
        assert_ne!(a, epoch_order(100, 42, 4, true));
        assert_ne!(a, epoch_order(100, 43, 3, true));
        assert_eq!(epoch_order(5, 42, 1, false), vec![0, 1, 2, 3, 4]);
        assert_ne!(image_seed(1, 1, 2), image_seed(1, 2, 1));
    }
}
