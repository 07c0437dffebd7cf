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
        embassy_time::Instant::now().as_millis()
    }

    async fn sleep_until(&self, deadline: u64) {
        // `Instant::from_millis` multiplies; keep far deadlines from overflowing.
        let at = embassy_time::Instant::from_millis(deadline.min(u64::MAX / 1_000_000));
        embassy_time::Timer::at(at).await;
    }
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
