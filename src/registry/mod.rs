//! The shard-local registry: sessions by id and actors by name, O(1), no locks.
//!
//! A session id names its owning shard in its prefix, so any shard can route a
//! request without a global table: the owner is read off the id, then the
//! owner's registry finds the actor. Nothing here is shared across shards.

mod session_id;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ids::ShardId;

pub use session_id::{SessionId, SessionIdError, SESSION_ID_LEN};

/// Passes through the 64 bits [`SessionId`]'s `Hash` writes: they are already
/// uniformly random, so hashing them again would only cost time.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than SessionId is hashed: fold FNV-1a.
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type SessionMap<V> = HashMap<SessionId, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("shard {shard} already holds its maximum of {max} sessions")]
    Full { shard: ShardId, max: usize },
    #[error("session {0} is registered already")]
    DuplicateSession(SessionId),
    #[error("session {id} belongs to shard {}, not shard {this}", id.shard())]
    WrongShard { id: SessionId, this: ShardId },
    #[error("name `{0}` is registered already")]
    DuplicateName(String),
}

/// One shard's registry. `V` is the handle stored (an actor's mailbox).
pub struct Registry<V> {
    shard: ShardId,
    sessions_max: usize,
    rng: RefCell<StdRng>,
    sessions: RefCell<SessionMap<V>>,
    names: RefCell<HashMap<Rc<str>, V>>,
}

impl<V: Clone> Registry<V> {
    /// `sessions_max` bounds the session map; inserting past it is refused.
    pub fn new(shard: ShardId, sessions_max: usize) -> Self {
        Registry {
            shard,
            sessions_max,
            // ChaCha12 seeded from the OS: a CSPRNG, one per shard, no locks.
            rng: RefCell::new(StdRng::from_os_rng()),
            sessions: RefCell::new(SessionMap::default()),
            names: RefCell::new(HashMap::new()),
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// A fresh id owned by this shard.
    pub fn new_session_id(&self) -> SessionId {
        SessionId::new(self.shard, self.rng.borrow_mut().random::<u128>())
    }

    pub fn insert(&self, id: SessionId, handle: V) -> Result<(), RegistryError> {
        if id.shard() != self.shard {
            return Err(RegistryError::WrongShard {
                id,
                this: self.shard,
            });
        }
        let mut sessions = self.sessions.borrow_mut();
        if sessions.len() >= self.sessions_max {
            return Err(RegistryError::Full {
                shard: self.shard,
                max: self.sessions_max,
            });
        }
        if sessions.contains_key(&id) {
            return Err(RegistryError::DuplicateSession(id));
        }
        sessions.insert(id, handle);
        Ok(())
    }

    pub fn get(&self, id: &SessionId) -> Option<V> {
        self.sessions.borrow().get(id).cloned()
    }

    /// Looks a session up without cloning its handle.
    pub fn with<T>(&self, id: &SessionId, f: impl FnOnce(&V) -> T) -> Option<T> {
        self.sessions.borrow().get(id).map(f)
    }

    /// The `n`th session id in the map's order (chaos picks one at random;
    /// O(n), control path only).
    pub fn nth_id(&self, n: usize) -> Option<SessionId> {
        self.sessions.borrow().keys().nth(n).copied()
    }

    pub fn contains(&self, id: &SessionId) -> bool {
        self.sessions.borrow().contains_key(id)
    }

    pub fn remove(&self, id: &SessionId) -> Option<V> {
        self.sessions.borrow_mut().remove(id)
    }

    pub fn len(&self) -> usize {
        self.sessions.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every session's handle.
    pub fn handles(&self) -> Vec<V> {
        self.sessions.borrow().values().cloned().collect()
    }

    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.borrow().keys().copied().collect()
    }

    pub fn register_name(&self, name: &str, handle: V) -> Result<(), RegistryError> {
        let mut names = self.names.borrow_mut();
        if names.contains_key(name) {
            return Err(RegistryError::DuplicateName(name.to_string()));
        }
        names.insert(Rc::from(name), handle);
        Ok(())
    }

    pub fn whereis(&self, name: &str) -> Option<V> {
        self.names.borrow().get(name).cloned()
    }

    pub fn unregister_name(&self, name: &str) -> Option<V> {
        self.names.borrow_mut().remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_carry_the_shard_and_differ() {
        let registry: Registry<u32> = Registry::new(ShardId(5), 10);
        let a = registry.new_session_id();
        let b = registry.new_session_id();
        assert_eq!(a.shard(), ShardId(5));
        assert_ne!(a, b);
    }

    #[test]
    fn insert_lookup_remove() {
        let registry = Registry::new(ShardId(1), 10);
        let id = registry.new_session_id();
        registry.insert(id, "actor").expect("room");
        assert_eq!(registry.get(&id), Some("actor"));
        assert_eq!(registry.with(&id, |v| v.len()), Some(5));
        assert_eq!(
            registry.insert(id, "again"),
            Err(RegistryError::DuplicateSession(id))
        );
        assert_eq!(registry.remove(&id), Some("actor"));
        assert!(registry.get(&id).is_none());
    }

    #[test]
    fn refuses_foreign_ids_and_respects_the_bound() {
        let registry = Registry::new(ShardId(1), 2);
        let foreign = SessionId::new(ShardId(2), 7);
        assert!(matches!(
            registry.insert(foreign, 0),
            Err(RegistryError::WrongShard { .. })
        ));
        registry.insert(registry.new_session_id(), 1).expect("room");
        registry.insert(registry.new_session_id(), 2).expect("room");
        assert_eq!(
            registry.insert(registry.new_session_id(), 3),
            Err(RegistryError::Full {
                shard: ShardId(1),
                max: 2
            })
        );
    }

    #[test]
    fn names_register_once() {
        let registry = Registry::new(ShardId(0), 1);
        registry.register_name("metrics", 9).expect("free");
        assert_eq!(
            registry.register_name("metrics", 10),
            Err(RegistryError::DuplicateName("metrics".into()))
        );
        assert_eq!(registry.whereis("metrics"), Some(9));
        assert_eq!(registry.unregister_name("metrics"), Some(9));
        assert_eq!(registry.whereis("metrics"), None);
    }
}
