//! The authority's `.dark` name registry (`docs/protocol.md` §12.5 "Registration"):
//! first come, first served by the order in which registrations reach this authority,
//! never by a time a record claims. Sans-IO: the caller passes the time and saves
//! [`NameRegistry::encode`] where it likes.

use std::collections::HashMap;

use anonnet_crypto::dark::NAME_REGISTRATION_SECS;

/// Most names one authority holds; registrations of new names beyond it are refused
/// until some expire.
pub const MAX_NAMES: usize = 100_000;

/// One registered name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The owner's Ed25519 public key.
    pub owner: [u8; 32],
    /// When this authority first registered the name for this owner (Unix seconds).
    pub registered: u64,
    /// End of the registration (Unix seconds), pushed to `now +`
    /// [`NAME_REGISTRATION_SECS`] by every renewal.
    pub expires: u64,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Another owner holds the name until `until` (Unix seconds).
    #[error("the name is registered to another owner until {until}")]
    Taken {
        /// End of the other owner's registration.
        until: u64,
    },
    /// The registry holds [`MAX_NAMES`] live names.
    #[error("the registry is full ({MAX_NAMES} names)")]
    Full,
}

/// A line of the registry file (`names`) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct RegistryLineError {
    /// The line's 1-based number.
    pub line: usize,
    /// What is wrong with it.
    pub why: String,
}

impl anonnet_error::HasKind for RegistryLineError {
    /// The authority's own file is damaged: [`anonnet_error::ErrorKind::Config`] (its
    /// operator must repair or remove it).
    fn kind(&self) -> anonnet_error::ErrorKind {
        anonnet_error::ErrorKind::Config
    }
}

impl anonnet_error::HasKind for RegisterError {
    /// A registration refused: [`anonnet_error::ErrorKind::NotAllowed`] (taken) or
    /// [`anonnet_error::ErrorKind::Busy`] (full).
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            RegisterError::Taken { .. } => anonnet_error::ErrorKind::NotAllowed,
            RegisterError::Full => anonnet_error::ErrorKind::Busy,
        }
    }
}

/// Names by their bare lower-case form (`anonnet_crypto::dark::DarkName::as_str`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NameRegistry {
    names: HashMap<String, Registration>,
}

impl NameRegistry {
    /// Register `name` for `owner` at `now` (Unix seconds), or renew it when `owner`
    /// already holds it; a name whose registration has expired is free. Returns the
    /// registration's new `expires`.
    ///
    /// # Errors
    /// [`RegisterError::Taken`] when another owner's registration is live;
    /// [`RegisterError::Full`] for a new name when [`MAX_NAMES`] live names are held.
    pub fn register(
        &mut self,
        name: &str,
        owner: [u8; 32],
        now: u64,
    ) -> Result<Registration, RegisterError> {
        let expires = now.saturating_add(NAME_REGISTRATION_SECS);
        if let Some(held) = self.names.get_mut(name) {
            if held.expires > now {
                if held.owner != owner {
                    return Err(RegisterError::Taken {
                        until: held.expires,
                    });
                }
                held.expires = held.expires.max(expires);
                return Ok(*held);
            }
        } else if self.names.len() >= MAX_NAMES {
            self.expire(now);
            if self.names.len() >= MAX_NAMES {
                return Err(RegisterError::Full);
            }
        }
        let fresh = Registration {
            owner,
            registered: now,
            expires,
        };
        self.names.insert(name.to_owned(), fresh);
        Ok(fresh)
    }

    /// The live registration of `name` at `now`, if any.
    pub fn get(&self, name: &str, now: u64) -> Option<Registration> {
        self.names.get(name).filter(|r| r.expires > now).copied()
    }

    /// Forget every registration that has expired at `now`.
    pub fn expire(&mut self, now: u64) {
        self.names.retain(|_, r| r.expires > now);
    }

    /// Names held (live or not yet expired away).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no name is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The registry as text, one name per line: `name owner_hex registered expires`.
    pub fn encode(&self) -> String {
        let mut lines: Vec<String> = self
            .names
            .iter()
            .map(|(name, r)| {
                format!(
                    "{name} {} {} {}\n",
                    hex::encode(r.owner),
                    r.registered,
                    r.expires
                )
            })
            .collect();
        lines.sort_unstable();
        lines.concat()
    }

    /// Read [`NameRegistry::encode`]'s text, keeping at most [`MAX_NAMES`] names.
    ///
    /// # Errors
    /// [`RegistryLineError`]: the 1-based number of the first line that does not parse,
    /// and why.
    pub fn decode(text: &str) -> Result<NameRegistry, RegistryLineError> {
        let mut names = HashMap::new();
        for (i, line) in text.lines().enumerate().take(MAX_NAMES) {
            let bad = |why: &str| RegistryLineError {
                line: i + 1,
                why: why.to_owned(),
            };
            let mut fields = line.split(' ');
            let (Some(name), Some(owner), Some(registered), Some(expires), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(bad("expected `name owner registered expires`"));
            };
            anonnet_wire::hs::check_dark_name(name).map_err(|e| bad(&e.to_string()))?;
            let mut key = [0u8; 32];
            hex::decode_to_slice(owner, &mut key).map_err(|_| bad("owner is not 64 hex digits"))?;
            let registered = registered
                .parse()
                .map_err(|_| bad("registered is not a number"))?;
            let expires = expires
                .parse()
                .map_err(|_| bad("expires is not a number"))?;
            names.insert(
                name.to_owned(),
                Registration {
                    owner: key,
                    registered,
                    expires,
                },
            );
        }
        Ok(NameRegistry { names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn first_come_keeps_the_name_and_renewals_extend_it() {
        let mut reg = NameRegistry::default();
        let first = reg.register("demo", [1; 32], NOW).unwrap();
        assert_eq!(first.registered, NOW);
        assert_eq!(first.expires, NOW + NAME_REGISTRATION_SECS);
        // Another owner, whatever time its record claims, is refused while it is live.
        assert_eq!(
            reg.register("demo", [2; 32], NOW + 10),
            Err(RegisterError::Taken {
                until: NOW + NAME_REGISTRATION_SECS
            })
        );
        // The owner renews: same registration time, later end.
        let renewed = reg.register("demo", [1; 32], NOW + 100).unwrap();
        assert_eq!(renewed.registered, NOW);
        assert_eq!(renewed.expires, NOW + 100 + NAME_REGISTRATION_SECS);
        // Lapsed: the name is free for anyone.
        let later = renewed.expires;
        let taken = reg.register("demo", [2; 32], later).unwrap();
        assert_eq!(taken.owner, [2; 32]);
        assert_eq!(taken.registered, later);
        assert_eq!(reg.get("demo", later).map(|r| r.owner), Some([2; 32]));
    }

    #[test]
    fn the_registry_is_bounded_and_survives_a_round_trip() {
        let mut reg = NameRegistry::default();
        for i in 0..MAX_NAMES {
            reg.register(&format!("n{i}"), [3; 32], NOW).unwrap();
        }
        assert_eq!(
            reg.register("one-more", [3; 32], NOW),
            Err(RegisterError::Full)
        );
        // Renewals of held names still work; once names expire there is room again.
        reg.register("n7", [3; 32], NOW + 1).unwrap();
        let after = NOW + NAME_REGISTRATION_SECS;
        reg.register("one-more", [3; 32], after).unwrap();
        assert_eq!(reg.len(), 2);

        let text = reg.encode();
        assert_eq!(NameRegistry::decode(&text).unwrap(), reg);
        for bad in [
            "demo\n",
            "Demo 00 1 2\n",
            &format!("demo {} x 2\n", "00".repeat(32)),
            &format!("demo {} 1 2 3\n", "00".repeat(32)),
        ] {
            assert!(NameRegistry::decode(bad).is_err(), "{bad:?}");
        }
    }
}
