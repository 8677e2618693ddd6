//! What may be written to logs (docs/threat-model.md, "Logs"): values that say where a user
//! goes — destinations, `.anon` addresses and `.dark` names, circuit paths, client
//! addresses — are wrapped in [`Sensitive`] and print as `[scrubbed]` unless the operator
//! turned safe logging off (`[log] safe = false`, which calls
//! [`safelog::disable_safe_logging`]); and log lines a remote peer can trigger at will are
//! rate-limited per call site ([`warn_limited!`](crate::warn_limited)): at most one line
//! per [`LOG_LIMIT_INTERVAL`], the next one saying how many were suppressed.
//!
//! The wrapper is the `safelog` crate's, as in Arti.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
pub use safelog::{
    disable_safe_logging, sensitive, with_safe_logging_suppressed, Guard as UnsafeLoggingGuard,
    Sensitive,
};

/// One line of each rate-limited kind per this interval (10 s).
pub const LOG_LIMIT_INTERVAL: Duration = Duration::from_secs(10);

/// The rate limit of one kind of log line (one call site of
/// [`warn_limited!`](crate::warn_limited)).
#[derive(Debug, Default)]
pub struct LogLimit {
    limiter: OnceLock<DefaultDirectRateLimiter>,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limit with nothing logged yet.
    pub const fn new() -> Self {
        LogLimit {
            limiter: OnceLock::new(),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were suppressed since
    /// the last one written; `None` (and one more suppressed) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let limiter = self.limiter.get_or_init(|| {
            let quota = Quota::with_period(LOG_LIMIT_INTERVAL)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::MIN);
            RateLimiter::direct(quota)
        });
        if limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `tracing::warn!` limited to one line per [`LOG_LIMIT_INTERVAL`] at this call site,
/// with a `suppressed` field counting the lines left out before it. For lines a remote
/// peer can trigger (a bad cell, a malformed request).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::LogLimit = $crate::logging::LogLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// `tracing::info!` limited like [`warn_limited!`](crate::warn_limited).
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::LogLimit = $crate::logging::LogLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::info!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_writes_one_line_and_counts_the_rest() {
        let l = LogLimit::new();
        assert_eq!(l.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow(), None);
        }
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn sensitive_values_are_scrubbed_by_default() {
        assert_eq!(sensitive("where.anon").to_string(), "[scrubbed]");
        assert_eq!(format!("{:?}", sensitive("x")), "[scrubbed]");
    }
}
