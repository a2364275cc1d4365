//! Cell keys: deterministic noise that follows the records behind a figure.
//!
//! Each node gives every record a secret pseudo-random key (a keyed hash of its
//! storage key, under a secret that never leaves the node). A cell's key is the
//! wrapping sum of its records' keys, so the pooled cell's key is the sum of the
//! regions' keys. The gate draws a count's perturbation from the cell key and
//! the true count: the same records always get the same noise, so asking again,
//! rewording the question or splitting it differently cannot average the noise
//! away, while two cells that differ by one person get independent noise, so
//! differencing them tells nothing reliable (the ABS cell-key method).

/// The node's secret for record keys.
#[derive(Clone)]
pub struct RecordKeys {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKeys(<secret>)")
    }
}

impl RecordKeys {
    pub fn from_secret(secret: [u8; 16]) -> RecordKeys {
        let (a, b) = secret.split_at(8);
        RecordKeys {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
        }
    }

    /// A fresh secret (a node without a data folder, such as a test service).
    pub fn random() -> RecordKeys {
        RecordKeys::from_secret(*uuid::Uuid::new_v4().as_bytes())
    }

    /// The key of row `row` of the resource stored under `key`.
    #[allow(deprecated)] // SipHasher is SipHash-2-4 with explicit keys, which is what is wanted here.
    pub fn record(&self, key: i64, row: usize) -> u64 {
        use std::hash::Hasher;
        let mut h = std::hash::SipHasher::new_with_keys(self.k0, self.k1);
        h.write_i64(key);
        h.write_usize(row);
        h.finish()
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser: every input bit affects every output bit.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The perturbation, from −`max` to +`max`, for a count `n` of the cell with key
/// `cell_key`; `salt` tells apart the figures of one cell (each measure).
pub fn perturbation(cell_key: u64, salt: u64, n: u64, max: u64) -> i64 {
    if max == 0 {
        return 0;
    }
    let h = mix(cell_key ^ mix(salt ^ mix(n)));
    (h % (2 * max + 1)) as i64 - max as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_records_same_noise_and_the_noise_is_spread() {
        let keys = RecordKeys::from_secret([7; 16]);
        let cell = |ids: &[i64]| ids.iter().fold(0u64, |a, &k| a.wrapping_add(keys.record(k, 0)));
        let a = cell(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let b = cell(&[11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(a, b, "the order of records does not matter");
        assert_eq!(perturbation(a, 0, 11, 2), perturbation(b, 0, 11, 2));
        let mut seen = [0usize; 5];
        for k in 0..5000u64 {
            let p = perturbation(mix(k), 0, 20, 2);
            assert!((-2..=2).contains(&p));
            seen[(p + 2) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(perturbation(a, 0, 11, 0), 0);
    }
}
