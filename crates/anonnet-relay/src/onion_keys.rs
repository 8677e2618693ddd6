//! The relay's onion keys over time: the current X25519 onion key (`docs/protocol.md` §2),
//! replaced every [`OnionKeyConfig::lifetime`], and the one key it replaced, still answered
//! for [`OnionKeyConfig::grace`] so that clients whose consensus or descriptor names it can
//! still build circuits (§5.2). Whoever steals an onion key can answer handshakes as the
//! relay only until its grace ends.
//!
//! Sans-IO: the caller passes the wall-clock time (`SystemTime`, as in descriptors and
//! consensuses) to every method; [`crate::keystore`] stores the ring in the data directory
//! and the relay's maintenance task decides when to ask.

use std::time::{Duration, SystemTime};

use anonnet_crypto::{CryptoError, OnionKey};
use subtle::ConstantTimeEq;

/// Default time an onion key is the current one before it is replaced: 28 days (Tor's
/// `OnionKeyRotationDays`).
pub const DEFAULT_ONION_KEY_LIFETIME: Duration = Duration::from_secs(28 * 86_400);

/// Default time a replaced onion key is still answered: 7 days (Tor's
/// `OnionKeyGracePeriodDays`). It must exceed the time a client may still use a document
/// naming the old key: a consensus ([`min_grace_for_consensus`]: about 8 h with the default
/// period of one hour, 5 days with the longest period of one day) and, for a relay without
/// a network, its own descriptor (24 h, refreshed hourly).
pub const DEFAULT_ONION_KEY_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// Clock skew a consensus check tolerates (seconds, `docs/protocol.md` §14.6).
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Validity of an onion service descriptor, which names its introduction points' onion
/// keys (`expires = now + 3 h`, §13.2).
const HS_DESCRIPTOR_LIFETIME: Duration = Duration::from_secs(3 * 3600);

/// How long the relay keeps and answers its onion keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnionKeyConfig {
    /// Age at which the current key is replaced by a fresh one (default
    /// [`DEFAULT_ONION_KEY_LIFETIME`], 28 days).
    pub lifetime: Duration,
    /// Time after its replacement during which the previous key is still answered (default
    /// [`DEFAULT_ONION_KEY_GRACE`], 7 days). Should not exceed `lifetime`: the ring keeps
    /// one previous key, so a key replaced twice is dropped whatever its grace.
    pub grace: Duration,
}

impl Default for OnionKeyConfig {
    fn default() -> Self {
        OnionKeyConfig {
            lifetime: DEFAULT_ONION_KEY_LIFETIME,
            grace: DEFAULT_ONION_KEY_GRACE,
        }
    }
}

/// The shortest grace that covers a network whose consensuses are valid for `validity`
/// (`valid_until − valid_after`, three periods `L`, §14.5): the last consensus listing the
/// old key starts at most two periods after the rotation (the next period boundary, or
/// the one after when an authority votes from a reachability test older than the new
/// descriptor; this bound is conservative) and is used for `3L` after its start, by
/// clients whose clocks may lag by the 300 s skew of §14.6; an onion service that read the
/// key from it may name it in a descriptor valid 3 h more (§13.2). So `5L + 3 h + 300 s`,
/// i.e. `validity · 5/3 + 3 h + 300 s`; 8 h 5 min with one-hour periods.
pub fn min_grace_for_consensus(validity: Duration) -> Duration {
    validity
        .saturating_add(validity.saturating_mul(2) / 3)
        .saturating_add(HS_DESCRIPTOR_LIFETIME + CLOCK_SKEW)
}

/// One onion key with its public part (computed once) and a time: when it was created (the
/// current key) or replaced (the previous key).
struct Held {
    key: OnionKey,
    public: [u8; 32],
    since: SystemTime,
}

impl Held {
    fn new(key: OnionKey, since: SystemTime) -> Held {
        let public = key.public();
        Held { key, public, since }
    }

    fn duplicate(&self) -> Held {
        Held {
            key: OnionKey::from_secret(&self.key.secret_bytes()),
            public: self.public,
            since: self.since,
        }
    }

    fn is(&self, public: &[u8; 32]) -> bool {
        bool::from(self.public.ct_eq(public))
    }
}

/// The relay's current onion key and, for a grace period after a rotation, the previous one.
/// Secrets are zeroized when dropped ([`OnionKey`]).
pub struct OnionKeyRing {
    config: OnionKeyConfig,
    current: Held,
    previous: Option<Held>,
}

impl std::fmt::Debug for OnionKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionKeyRing")
            .field("config", &self.config)
            .field("current_created", &self.current.since)
            .field(
                "previous_replaced",
                &self.previous.as_ref().map(|p| p.since),
            )
            .finish_non_exhaustive()
    }
}

impl OnionKeyRing {
    /// A ring whose current key is `current`, created at `created` (wall clock), with no
    /// previous key.
    pub fn new(config: OnionKeyConfig, current: OnionKey, created: SystemTime) -> Self {
        OnionKeyRing {
            config,
            current: Held::new(current, created),
            previous: None,
        }
    }

    /// The same ring with `previous` as the previous key, replaced at `replaced` (wall
    /// clock). A `previous` equal to the current key is ignored.
    pub fn with_previous(mut self, previous: OnionKey, replaced: SystemTime) -> Self {
        let held = Held::new(previous, replaced);
        if !self.current.is(&held.public) {
            self.previous = Some(held);
        }
        self
    }

    /// A copy holding copies of the secrets (each zeroized on drop), for changing and
    /// storing the keys before the relay switches to them.
    pub fn duplicate(&self) -> OnionKeyRing {
        OnionKeyRing {
            config: self.config,
            current: self.current.duplicate(),
            previous: self.previous.as_ref().map(Held::duplicate),
        }
    }

    /// The lifetime and grace this ring applies.
    pub fn config(&self) -> OnionKeyConfig {
        self.config
    }

    /// The current key: the one the descriptor advertises.
    pub fn current(&self) -> &OnionKey {
        &self.current.key
    }

    /// The current key's 32-byte X25519 public key `B`.
    pub fn current_public(&self) -> [u8; 32] {
        self.current.public
    }

    /// When the current key was created (wall clock).
    pub fn current_created(&self) -> SystemTime {
        self.current.since
    }

    /// The previous key and when it was replaced (wall clock), whether or not its grace has
    /// ended (see [`OnionKeyRing::drop_expired`]).
    pub fn previous(&self) -> Option<(&OnionKey, SystemTime)> {
        self.previous.as_ref().map(|p| (&p.key, p.since))
    }

    /// The key whose public part is `public`, if the relay answers it at `now`: the current
    /// key, or the previous one while `now < replaced + grace`. Public keys are compared in
    /// constant time. `None`: the relay refuses the handshake (§5.2 step 1).
    pub fn find(&self, public: &[u8; 32], now: SystemTime) -> Option<&OnionKey> {
        if self.current.is(public) {
            return Some(&self.current.key);
        }
        self.previous
            .as_ref()
            .filter(|p| p.is(public) && self.in_grace(p, now))
            .map(|p| &p.key)
    }

    fn in_grace(&self, previous: &Held, now: SystemTime) -> bool {
        // An end of grace past what SystemTime can hold is "never".
        previous
            .since
            .checked_add(self.config.grace)
            .is_none_or(|end| now < end)
    }

    /// True when the current key is at least [`OnionKeyConfig::lifetime`] old at `now`. A
    /// `now` before the key's creation (the clock went backwards) is never due.
    pub fn is_due(&self, now: SystemTime) -> bool {
        now.duration_since(self.current.since)
            .is_ok_and(|age| age >= self.config.lifetime)
    }

    /// Replace the current key by a fresh one when it is due ([`OnionKeyRing::is_due`]); the
    /// current key becomes the previous one, replaced at `now`, and the older previous key,
    /// if any, is dropped. Returns whether it rotated.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] when no randomness is available; the ring is then unchanged.
    pub fn rotate_if_due(&mut self, now: SystemTime) -> Result<bool, CryptoError> {
        if !self.is_due(now) {
            return Ok(false);
        }
        self.rotate_to(OnionKey::generate()?, now);
        Ok(true)
    }

    /// Make `new` the current key, created at `now`; the current key becomes the previous
    /// one, replaced at `now`, and the older previous key is dropped.
    pub fn rotate_to(&mut self, new: OnionKey, now: SystemTime) {
        let mut old = std::mem::replace(&mut self.current, Held::new(new, now));
        old.since = now;
        self.previous = Some(old);
    }

    /// Forget the previous key once its grace has ended at `now`. Returns whether it did
    /// (the caller then rewrites the key files, so the secret leaves the disk too).
    pub fn drop_expired(&mut self, now: SystemTime) -> bool {
        let expired = self
            .previous
            .as_ref()
            .is_some_and(|p| !self.in_grace(p, now));
        if expired {
            self.previous = None;
        }
        expired
    }

    /// Time from `now` until the current key is due (zero when it is). After the clock went
    /// backwards this is longer than the lifetime, up to what it was before the jump plus
    /// the jump; callers check again at least hourly anyway.
    pub fn next_rotation(&self, now: SystemTime) -> Duration {
        match self.current.since.checked_add(self.config.lifetime) {
            Some(due) => due.duration_since(now).unwrap_or(Duration::ZERO),
            None => Duration::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_crypto::handshake::{server_handshake, ClientHandshake};
    use anonnet_crypto::IdentityKey;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn ring_at(created: SystemTime) -> OnionKeyRing {
        OnionKeyRing::new(
            OnionKeyConfig::default(),
            OnionKey::from_secret(&[0x22; 32]),
            created,
        )
    }

    /// Build a circuit hop to the relay with a client that knows `public` as its onion key;
    /// `None` when the relay has no such key at `now` (it refuses).
    fn handshake(ring: &OnionKeyRing, public: [u8; 32], now: SystemTime) -> Option<()> {
        let identity = IdentityKey::from_seed(&[0x11; 32]);
        let node_id = identity.node_id();
        let client = ClientHandshake::start(node_id, public).unwrap();
        let hello = client.hello();
        let key = ring.find(&hello.onion_key, now)?;
        let (reply, relay_keys) = server_handshake(node_id, key, &hello).unwrap();
        let client_keys = client.finish(&reply).unwrap();
        assert_eq!(client_keys, relay_keys);
        Some(())
    }

    #[test]
    fn previous_key_answers_handshakes_during_grace_only() {
        let mut ring = ring_at(t(0));
        let old = ring.current_public();
        let rotated_at = t(0) + 28 * DAY;
        assert!(ring.rotate_if_due(rotated_at).unwrap());
        let new = ring.current_public();
        assert_ne!(old, new);

        // Both keys work just after the rotation and until the last second of grace.
        assert!(handshake(&ring, new, rotated_at).is_some());
        assert!(handshake(&ring, old, rotated_at).is_some());
        let last = rotated_at + 7 * DAY - Duration::from_secs(1);
        assert!(handshake(&ring, old, last).is_some());

        // At the end of grace the old key is refused; the new one still works.
        let end = rotated_at + 7 * DAY;
        assert!(handshake(&ring, old, end).is_none());
        assert!(ring.find(&old, end).is_none());
        assert!(handshake(&ring, new, end).is_some());

        // Dropping it is then a no-op for lookups and forgets the secret.
        assert!(!ring.drop_expired(last));
        assert!(ring.drop_expired(end));
        assert!(ring.previous().is_none());
        assert!(!ring.drop_expired(end));
    }

    #[test]
    fn unknown_key_is_refused() {
        let ring = ring_at(t(0));
        let other = OnionKey::from_secret(&[0x23; 32]).public();
        assert!(ring.find(&other, t(1)).is_none());
        assert!(handshake(&ring, other, t(1)).is_none());
    }

    #[test]
    fn rotates_after_lifetime_and_not_before() {
        let mut ring = ring_at(t(0));
        let first = ring.current_public();
        let lifetime = 28 * DAY;
        assert_eq!(ring.next_rotation(t(0)), lifetime);
        let just_before = t(0) + lifetime - Duration::from_secs(1);
        assert_eq!(ring.next_rotation(just_before), Duration::from_secs(1));
        assert!(!ring.rotate_if_due(just_before).unwrap());
        assert_eq!(ring.current_public(), first);

        let due = t(0) + lifetime;
        assert_eq!(ring.next_rotation(due), Duration::ZERO);
        assert!(ring.rotate_if_due(due).unwrap());
        assert_ne!(ring.current_public(), first);
        assert_eq!(ring.current_created(), due);
        let (prev, replaced) = ring.previous().unwrap();
        assert_eq!(prev.public(), first);
        assert_eq!(replaced, due);
        // The fresh key is not due again until another lifetime has passed.
        assert!(!ring.rotate_if_due(due + DAY).unwrap());
        assert_eq!(ring.next_rotation(due), lifetime);
    }

    #[test]
    fn second_rotation_drops_the_oldest_key() {
        let mut ring = ring_at(t(0));
        let first = ring.current_public();
        let r1 = t(0) + 28 * DAY;
        ring.rotate_if_due(r1).unwrap();
        let second = ring.current_public();
        let r2 = r1 + 28 * DAY;
        assert!(ring.rotate_if_due(r2).unwrap());
        assert!(ring.find(&first, r2).is_none());
        assert!(ring.find(&second, r2).is_some());
        assert_eq!(ring.previous().map(|(k, _)| k.public()), Some(second));
    }

    #[test]
    fn clock_going_backwards_neither_rotates_nor_panics() {
        let mut ring = ring_at(t(1_000_000));
        let first = ring.current_public();
        let earlier = t(0);
        assert!(!ring.is_due(earlier));
        assert!(!ring.rotate_if_due(earlier).unwrap());
        assert_eq!(ring.current_public(), first);
        assert_eq!(
            ring.next_rotation(earlier),
            28 * DAY + Duration::from_secs(1_000_000)
        );
        // Before the epoch, too.
        let before_epoch = SystemTime::UNIX_EPOCH - DAY;
        assert!(!ring.rotate_if_due(before_epoch).unwrap());
        assert!(ring.find(&first, before_epoch).is_some());

        // A previous key replaced "in the future" is still in its grace.
        ring.rotate_to(OnionKey::from_secret(&[0x24; 32]), t(2_000_000));
        assert!(ring.find(&first, t(0)).is_some());
        assert!(!ring.drop_expired(t(0)));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let config = OnionKeyConfig {
            lifetime: Duration::MAX,
            grace: Duration::MAX,
        };
        let mut ring = OnionKeyRing::new(config, OnionKey::from_secret(&[0x22; 32]), t(0));
        let first = ring.current_public();
        assert!(!ring.rotate_if_due(t(10)).unwrap());
        assert_eq!(ring.next_rotation(t(10)), Duration::MAX);
        ring.rotate_to(OnionKey::from_secret(&[0x25; 32]), t(10));
        assert!(ring.find(&first, t(20)).is_some());
        assert!(!ring.drop_expired(t(20)));
    }

    #[test]
    fn duplicate_is_changed_without_touching_the_original() {
        let ring = ring_at(t(0));
        let first = ring.current_public();
        let mut copy = ring.duplicate();
        assert!(copy.rotate_if_due(t(0) + 28 * DAY).unwrap());
        assert_eq!(ring.current_public(), first);
        assert!(ring.previous().is_none());
        assert_eq!(copy.previous().map(|(k, _)| k.public()), Some(first));
        assert!(handshake(&copy, first, t(0) + 28 * DAY).is_some());
    }

    #[test]
    fn previous_equal_to_current_is_ignored() {
        let ring = ring_at(t(0)).with_previous(OnionKey::from_secret(&[0x22; 32]), t(0));
        assert!(ring.previous().is_none());
    }

    #[test]
    fn default_grace_covers_a_consensus_of_one_hour_periods_and_a_descriptor() {
        let c = OnionKeyConfig::default();
        assert!(c.grace <= c.lifetime);
        let validity = Duration::from_secs(3 * 3600);
        assert_eq!(
            min_grace_for_consensus(validity),
            Duration::from_secs(8 * 3600 + 300)
        );
        assert!(c.grace > min_grace_for_consensus(validity));
        // Even the longest period authorities accept (one day).
        assert!(c.grace > min_grace_for_consensus(3 * DAY));
        assert!(
            c.grace
                > Duration::from_secs(crate::DESCRIPTOR_LIFETIME)
                    + (crate::DESCRIPTOR_REFRESH.lifetime - crate::DESCRIPTOR_REFRESH.margin)
        );
    }
}
