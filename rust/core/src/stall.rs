//! Stall detection: a body whose rate stays under a floor for a whole window
//! is given up, so that the caller can retry from the offset reached. A
//! trickle of bytes keeps a read timeout happy forever; it does not keep
//! this guard happy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Under `min_rate` bytes/s for `window` means stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallPolicy {
    pub min_rate: u64,
    pub window: Duration,
}

impl StallPolicy {
    /// 16 KiB/s over 30 s: far below any working link, yet a dead or
    /// throttled-to-nothing connection is left within half a minute.
    pub const DEFAULT: StallPolicy = StallPolicy {
        min_rate: 16 * 1024,
        window: Duration::from_secs(30),
    };

    /// "under 16 KiB/s for 30 s"
    pub fn describe(&self) -> String {
        let rate = if self.min_rate >= 1024 && self.min_rate % 1024 == 0 {
            format!("{} KiB/s", self.min_rate / 1024)
        } else {
            format!("{} B/s", self.min_rate)
        };
        format!("under {rate} for {} s", self.window.as_secs_f64())
    }

    /// Bytes that must arrive within one window.
    fn floor(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()).ceil() as u64
    }
}

/// Counts the bytes of one body against a [`StallPolicy`].
///
/// Keeps checkpoints (time, bytes so far) about every window/16, and compares
/// the bytes now with those at the newest checkpoint at least a window old:
/// a sliding window, so a stall is seen within a window (plus one step) of
/// its start, whatever came before it.
#[derive(Debug)]
pub struct StallGuard {
    /// Set by the fetcher: whether a read timeout counts as a stall.
    pub silence_is_stall: bool,
    policy: StallPolicy,
    floor: u64,
    step: Duration,
    total: u64,
    marks: VecDeque<(Instant, u64)>,
}

impl StallGuard {
    pub fn new(policy: StallPolicy, now: Instant) -> StallGuard {
        StallGuard {
            silence_is_stall: false,
            policy,
            floor: policy.floor(),
            step: policy.window / 16,
            total: 0,
            marks: VecDeque::from([(now, 0)]),
        }
    }

    pub fn policy(&self) -> StallPolicy {
        self.policy
    }

    /// Adds `n` bytes received at `now`; true when the body is stalled.
    pub fn record(&mut self, n: u64, now: Instant) -> bool {
        self.total += n;
        let window = self.policy.window;
        // The base is the newest checkpoint at least a window old.
        while self
            .marks
            .get(1)
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) >= window)
        {
            self.marks.pop_front();
        }
        let (base_time, base_bytes) = self.marks[0];
        if now.saturating_duration_since(base_time) >= window
            && self.total - base_bytes < self.floor
        {
            return true;
        }
        let last = self.marks.back().map_or(base_time, |&(t, _)| t);
        if now.saturating_duration_since(last) >= self.step {
            self.marks.push_back((now, self.total));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: StallPolicy = StallPolicy {
        min_rate: 1000,
        window: Duration::from_secs(2),
    };

    fn ms(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn fast_body_never_stalls() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(POLICY, t0);
        for i in 1..=100 {
            assert!(!g.record(200, ms(t0, i * 100)), "at {i}");
        }
    }

    #[test]
    fn nothing_is_judged_before_a_full_window() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(POLICY, t0);
        assert!(!g.record(1, ms(t0, 1000)));
        assert!(!g.record(1, ms(t0, 1999)));
        assert!(g.record(1, ms(t0, 2000)));
    }

    #[test]
    fn a_trickle_after_a_fast_start_is_caught_within_about_a_window() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(POLICY, t0);
        // 10 KB/s for 5 s...
        for i in 1..=50 {
            assert!(!g.record(1000, ms(t0, i * 100)));
        }
        // ...then 100 bytes/s: stalled a window (+ one step) after the change.
        let mut stalled_at = None;
        for i in 1..=60 {
            if g.record(10, ms(t0, 5000 + i * 100)) {
                stalled_at = Some(i * 100);
                break;
            }
        }
        let after = stalled_at.expect("a trickle must count as a stall");
        assert!((2000..=2200).contains(&after), "{after} ms");
    }

    #[test]
    fn exactly_the_floor_is_not_a_stall() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(POLICY, t0);
        // 1000 B/s in 100-byte pieces: never under the floor.
        for i in 1..=100 {
            assert!(!g.record(100, ms(t0, i * 100)), "at {i}");
        }
    }

    #[test]
    fn a_short_pause_within_a_fast_window_is_fine() {
        let t0 = Instant::now();
        let mut g = StallGuard::new(POLICY, t0);
        assert!(!g.record(50_000, ms(t0, 100)));
        // 1.5 s of nothing, then bytes again: the last 2 s still hold 50 KB.
        assert!(!g.record(10, ms(t0, 1600)));
        assert!(!g.record(50_000, ms(t0, 2000)));
    }

    #[test]
    fn describe_says_rate_and_window() {
        assert_eq!(StallPolicy::DEFAULT.describe(), "under 16 KiB/s for 30 s");
        assert_eq!(POLICY.describe(), "under 1000 B/s for 2 s");
        let half = StallPolicy {
            min_rate: 2048,
            window: Duration::from_millis(1500),
        };
        assert_eq!(half.describe(), "under 2 KiB/s for 1.5 s");
    }
}
