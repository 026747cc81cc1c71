//! Tokens already verified, so a buyer who clicks reserve five times pays
//! for one RSA or ECDSA verification, not five (BENCHMARKS.md, section I).
//!
//! Keyed by a keyed hash of the whole token (SipHash with this process's
//! random key: no one outside can aim two tokens at one slot), and a hit is
//! only a hit when the stored token equals the presented one in every byte,
//! compared in constant time: a changed byte anywhere, a signature reused
//! on another payload, is a miss and verified afresh. The keyed hash costs
//! a fraction of a SHA-256 of the token per request; the price is that the
//! cache holds the tokens themselves, which the process holds anyway while
//! it serves them. An entry lives no later than the token's `exp`, and none
//! survives a JWKS refresh that removed a key (the generation changes), so
//! the cache never takes a token that verification would refuse. Bounded:
//! when full, the expired entries go, and if none had expired, all of them
//! (a crude but O(1)-per-insert bound; a full cache is a flood of distinct
//! tokens, for which remembering is worth nothing anyway).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use super::Identity;

struct Entry {
    token: Box<[u8]>,
    identity: Identity,
    exp: u64,
    generation: u64,
}

pub struct Verified {
    entries: Mutex<HashMap<u64, Entry>>,
    cap: usize,
    /// Random per process.
    keyed: std::collections::hash_map::RandomState,
}

fn now_secs() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

impl Verified {
    pub fn new(cap: usize) -> Verified {
        Verified {
            entries: Mutex::new(HashMap::new()),
            cap,
            keyed: Default::default(),
        }
    }

    fn key(&self, token: &str) -> u64 {
        self.keyed.hash_one(token.as_bytes())
    }

    pub fn get(&self, token: &str, generation: u64) -> Option<Identity> {
        let k = self.key(token);
        let now = now_secs();
        // std Mutex: a lookup is a hash probe, never held across an await.
        let entries = self.entries.lock().ok()?;
        entries
            .get(&k)
            .filter(|e| {
                bool::from(e.token.ct_eq(token.as_bytes()))
                    && e.exp > now
                    && e.generation == generation
            })
            .map(|e| e.identity.clone())
    }

    pub fn put(&self, token: &str, identity: &Identity, exp: u64, generation: u64) {
        let k = self.key(token);
        let now = now_secs();
        if exp <= now {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.cap {
            entries.retain(|_, e| e.exp > now && e.generation == generation);
            if entries.len() >= self.cap {
                entries.clear();
            }
        }
        entries.insert(
            k,
            Entry {
                token: token.as_bytes().into(),
                identity: identity.clone(),
                exp,
                generation,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::domain::CustomerId;

    fn id(s: &str) -> Identity {
        Identity {
            subject: CustomerId::parse(s.to_string()).unwrap(),
            role: Role::Customer,
        }
    }

    #[test]
    fn hits_misses_expiry_generation_and_bound() {
        let c = Verified::new(2);
        let exp = now_secs() + 60;
        c.put("t1", &id("a"), exp, 0);
        assert_eq!(c.get("t1", 0).unwrap().subject.as_str(), "a");
        assert!(c.get("t1x", 0).is_none());
        // A key was removed since: verify again.
        assert!(c.get("t1", 1).is_none());
        c.put("t0", &id("b"), now_secs(), 0);
        assert!(c.get("t0", 0).is_none(), "an expired token is not kept");
        c.put("t2", &id("b"), exp, 0);
        c.put("t3", &id("c"), exp, 0);
        assert!(c.len() <= 2);
        assert!(c.get("t3", 0).is_some());
    }
}
