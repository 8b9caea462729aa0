//! The console login's throttle: after `max` wrong keys within `window`, every login is
//! refused with 429 and `Retry-After` until the oldest of them ages out, so an API key
//! cannot be guessed online at more than `max` tries per window.
//!
//! Process-wide, not per client address: behind a proxy every client has the proxy's
//! address, and a per-address limit is lifted by changing address. The price is that a
//! guesser can keep the console's login closed; the API's Bearer key is not throttled
//! here, so an operator still reaches everything with it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong keys allowed per window.
pub const LOGIN_FAILURES_MAX: usize = 20;
/// The window of [`LOGIN_FAILURES_MAX`].
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The times of the recent wrong keys (at most `max` kept).
pub struct LoginThrottle {
    failures: Mutex<VecDeque<Instant>>,
    window: Duration,
    max: usize,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::with_limits(LOGIN_FAILURE_WINDOW, LOGIN_FAILURES_MAX)
    }
}

impl LoginThrottle {
    /// At most `max` wrong keys per `window`.
    pub fn with_limits(window: Duration, max: usize) -> Self {
        Self {
            failures: Mutex::new(VecDeque::new()),
            window,
            max: max.max(1),
        }
    }

    /// `None` when a login may be tried now; else how long until one may.
    pub fn wait(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut failures = self.lock();
        while failures
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.window)
        {
            failures.pop_front();
        }
        if failures.len() < self.max {
            return None;
        }
        let oldest = *failures.front().expect("max is at least 1");
        Some(self.window.saturating_sub(now.duration_since(oldest)))
    }

    /// Records a wrong key.
    pub fn failed(&self) {
        let mut failures = self.lock();
        if failures.len() >= self.max {
            failures.pop_front();
        }
        failures.push_back(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        // Every critical section leaves the queue consistent.
        self.failures
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_closes_after_max_failures_and_opens_after_the_window() {
        let throttle = LoginThrottle::with_limits(Duration::from_millis(200), 3);
        for _ in 0..3 {
            assert_eq!(throttle.wait(), None);
            throttle.failed();
        }
        let wait = throttle.wait().expect("closed after 3 failures");
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while throttle.wait().is_some() {
            assert!(
                Instant::now() < deadline,
                "open again once the window passed"
            );
            std::thread::yield_now();
        }
    }
}
