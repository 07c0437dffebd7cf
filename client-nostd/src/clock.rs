//! The runner's notion of time: milliseconds on a monotonic clock, and a way to sleep
//! until one of them.

use core::future::Future;

/// A monotonic millisecond clock. The session only ever compares these values, so the
/// epoch does not matter (boot, or the runner's start).
pub trait Clock {
    /// Milliseconds now.
    fn now(&self) -> u64;

    /// Completes at (or after) `deadline` milliseconds.
    ///
    /// # Cancel safety
    /// Must be cancel-safe: the runner drops it when something else happens first.
    fn sleep_until(&self, deadline: u64) -> impl Future<Output = ()>;
}

/// [`Clock`] on `embassy-time` (milliseconds since boot).
#[cfg(feature = "embassy")]
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbassyClock;

#[cfg(feature = "embassy")]
impl Clock for EmbassyClock {
    fn now(&self) -> u64 {
        ticks_to_millis(embassy_time::Instant::now().as_ticks())
    }

    async fn sleep_until(&self, deadline: u64) {
        // `Instant::from_millis` multiplies; keep far deadlines from overflowing.
        let at = embassy_time::Instant::from_millis(deadline.min(u64::MAX / 1_000_000));
        embassy_time::Timer::at(at).await;
    }
}

/// `ticks` of `embassy-time` in milliseconds, as `Instant::as_millis`. With the usual
/// 1 MHz tick that is a 64-bit division by 1000, which would link a ~900-byte 64-bit
/// division routine into a Cortex-M image; a divisor below 2^16 is done here with four
/// 32-bit hardware divisions instead.
#[cfg(feature = "embassy")]
fn ticks_to_millis(ticks: u64) -> u64 {
    const fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    const G: u64 = gcd(1000, embassy_time::TICK_HZ);
    const MUL: u64 = 1000 / G;
    const DIV: u64 = embassy_time::TICK_HZ / G;
    if MUL != 1 || DIV > 0xFFFF || DIV.is_power_of_two() {
        // A shift, or a rate this shortcut does not cover.
        return embassy_time::Instant::from_ticks(ticks).as_millis();
    }
    div_small(ticks, DIV as u32)
}

/// `n / d` for `0 < d < 2^16`, by 16-bit digits: every partial dividend fits 32 bits.
#[cfg(any(feature = "embassy", test))]
fn div_small(n: u64, d: u32) -> u64 {
    let mut q = 0u64;
    let mut r = 0u32;
    for shift in [48u32, 32, 16, 0] {
        let cur = (r << 16) | ((n >> shift) as u32 & 0xFFFF);
        q |= u64::from(cur / d) << shift;
        r = cur % d;
    }
    q
}

/// [`Clock`] on tokio's timer (milliseconds since the clock was made). It follows
/// `tokio::time::pause` and `advance`, so host tests can run on virtual time.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

#[cfg(feature = "tokio")]
impl TokioClock {
    /// A clock whose 0 is now.
    pub fn new() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

#[cfg(feature = "tokio")]
impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tokio")]
impl Clock for TokioClock {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn sleep_until(&self, deadline: u64) {
        let at = self
            .start
            .checked_add(core::time::Duration::from_millis(deadline))
            .unwrap_or_else(|| self.start + core::time::Duration::from_secs(86_400 * 365));
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn div_small_matches_division() {
        for n in [
            0u64,
            1,
            999,
            1000,
            65_535,
            1 << 32,
            u64::MAX,
            1_700_000_000_123_456,
        ] {
            for d in [1u32, 7, 1000, 32_768, 65_535] {
                assert_eq!(super::div_small(n, d), n / u64::from(d), "{n} / {d}");
            }
        }
    }
}
