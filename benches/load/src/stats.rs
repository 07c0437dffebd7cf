//! Measurement: a latency histogram with ~1.5 % resolution and a per-subscriber record
//! of which (publisher, sequence) pairs arrived, to count losses and duplicates.

/// Sub-buckets per power of two: 64 gives a relative error below 1/64.
const SUB: u32 = 64;
/// log2 of [`SUB`].
const SUB_BITS: u32 = 6;

/// Log-linear histogram of nanosecond values.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; ((64 - SUB_BITS + 1) * SUB) as usize],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Bucket of `v`: exact below 64, then 64 buckets per power of two.
    fn index(v: u64) -> usize {
        if v < u64::from(SUB) {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let m = (v >> (e - SUB_BITS)) & u64::from(SUB - 1);
        ((e - SUB_BITS + 1) * SUB) as usize + m as usize
    }

    /// Smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < u64::from(SUB) {
            return i;
        }
        let e = i / u64::from(SUB) + u64::from(SUB_BITS) - 1;
        let m = i % u64::from(SUB);
        let v = u128::from(u64::from(SUB) + m) << (e - u64::from(SUB_BITS));
        u64::try_from(v).unwrap_or(u64::MAX)
    }

    /// Records one value.
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds another histogram's counts.
    pub(crate) fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    /// Values recorded.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Largest value recorded.
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding it.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (Self::lower(i), Self::lower(i + 1));
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// Which messages of each publisher one subscriber received.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    /// One bit per sequence number, per publisher.
    seen: Vec<Vec<u64>>,
    /// Distinct messages received.
    pub(crate) unique: u64,
    /// Messages received again.
    pub(crate) duplicates: u64,
    /// Payloads without a valid mark (another client's traffic, or corruption).
    pub(crate) foreign: u64,
}

impl Tracker {
    /// A tracker for `publishers` publishers, sized for `per_publisher` messages each
    /// (it grows when more arrive).
    pub(crate) fn new(publishers: u32, per_publisher: u64) -> Tracker {
        Tracker {
            seen: (0..publishers)
                .map(|_| Vec::with_capacity(per_publisher.div_ceil(64) as usize))
                .collect(),
            ..Tracker::default()
        }
    }

    /// Records message `seq` of `publisher`; returns `false` for a duplicate.
    pub(crate) fn record(&mut self, publisher: u32, seq: u64) -> bool {
        let Some(bits) = self.seen.get_mut(publisher as usize) else {
            self.foreign += 1;
            return false;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= 1 << bit;
        self.unique += 1;
        true
    }

    /// Messages of `publisher` with sequence below `sent` that never arrived.
    pub(crate) fn missing(&self, publisher: u32, sent: u64) -> u64 {
        let Some(bits) = self.seen.get(publisher as usize) else {
            return sent;
        };
        let mut have = 0u64;
        for (w, word) in bits.iter().enumerate() {
            let base = w as u64 * 64;
            if base >= sent {
                break;
            }
            let valid = (sent - base).min(64);
            let mask = if valid == 64 {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
            have += u64::from((word & mask).count_ones());
        }
        sent - have
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        for i in 0..2000 {
            assert!(Histogram::lower(i) < Histogram::lower(i + 1));
        }
        for v in [0, 1, 63, 64, 65, 127, 128, 1000, 123_456, 10_000_000_000] {
            let i = Histogram::index(v);
            assert!(
                Histogram::lower(i) <= v && v < Histogram::lower(i + 1),
                "{v}"
            );
            assert!(
                (Histogram::lower(i + 1) - Histogram::lower(i)) as f64 <= v as f64 / 63.0 + 1.0
            );
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.max(), 1_000_000);
    }

    #[test]
    fn tracker_counts_duplicates_and_missing() {
        let mut t = Tracker::new(2, 100);
        assert!(t.record(0, 0));
        assert!(t.record(0, 5));
        assert!(!t.record(0, 5));
        assert!(t.record(1, 99));
        assert!(!t.record(7, 1));
        assert_eq!((t.unique, t.duplicates, t.foreign), (3, 1, 1));
        assert_eq!(t.missing(0, 6), 4);
        assert_eq!(t.missing(1, 100), 99);
        assert_eq!(t.missing(1, 99), 99);
    }
}
