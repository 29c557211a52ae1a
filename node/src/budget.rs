//! The forged-code budget: each gate may present so many forged or unknown codes a second
//! (bursts of twice that) before the node answers it `rate_limited` for a cooldown.

use std::sync::atomic::{AtomicU64, Ordering};

use stile_protocol::{Outcome, OutcomeKind};

use crate::stream::Stream;

/// A gate's budget for forged and unknown codes.
pub(crate) struct Budget {
    /// The sustained rate and burst of forged and unknown codes allowed.
    limiter: governor::DefaultDirectRateLimiter,
    /// Node-clock milliseconds until which every scan of the gate is `rate_limited`.
    blocked_until_ms: AtomicU64,
}

impl Budget {
    /// A fresh budget: `per_s` a second, bursts of `burst`.
    pub(crate) fn new(per_s: std::num::NonZeroU32, burst: std::num::NonZeroU32) -> Self {
        Budget {
            limiter: governor::RateLimiter::direct(
                governor::Quota::per_second(per_s).allow_burst(burst),
            ),
            blocked_until_ms: AtomicU64::new(0),
        }
    }

    /// Whether the gate is in its cooldown at `now_ms`.
    #[inline]
    pub(crate) fn blocked(&self, now_ms: u64) -> bool {
        now_ms < self.blocked_until_ms.load(Ordering::Relaxed)
    }

    /// Charges one forged-or-unknown answer; `false` if that broke the budget (the gate is
    /// now blocked for the cooldown).
    pub(crate) fn charge(&self, now_ms: u64, cooldown_ms: u64) -> bool {
        if self.limiter.check().is_ok() {
            return true;
        }
        self.blocked_until_ms
            .fetch_max(now_ms + cooldown_ms, Ordering::Relaxed);
        false
    }
}

impl Stream {
    /// Charges a forged or unknown answer to the budget; past it, the answer becomes
    /// `rate_limited`.
    #[inline]
    pub(crate) fn charge(&self, budget: &Budget, outcome: Outcome) -> Outcome {
        if matches!(outcome.kind, OutcomeKind::Forged | OutcomeKind::Unknown) {
            let cooldown = self.shared.config.budget_cooldown.as_millis() as u64;
            if !budget.charge(self.now_ms, cooldown) {
                return Outcome::RATE_LIMITED;
            }
        }
        outcome
    }
}
