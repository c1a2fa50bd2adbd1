//! The current zone, swapped whole (docs/ARCHITECTURE.md "Principles": one owner per piece
//! of state): the owner of the workspace state builds a new [`Zone`] and stores it; each
//! query answers from the zone it loaded, so it never sees half an update.

use std::sync::{Arc, PoisonError, RwLock};

use crate::zone::Zone;

/// Holds the current `Arc<Zone>`. Readers clone the `Arc` under a read lock held only for
/// that clone; a writer replaces it under the write lock. Nothing is ever mutated in place.
#[derive(Debug)]
pub struct SharedZone {
    current: RwLock<Arc<Zone>>,
}

impl SharedZone {
    pub fn new(zone: Zone) -> Self {
        Self {
            current: RwLock::new(Arc::new(zone)),
        }
    }

    /// The current zone. Keep it for the whole of one query.
    pub fn load(&self) -> Arc<Zone> {
        // A panic elsewhere while holding the lock cannot leave a half-written `Arc`.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `zone` current; returns the previous one. Queries that loaded the previous zone
    /// finish with it.
    pub fn store(&self, zone: Zone) -> Arc<Zone> {
        self.store_arc(Arc::new(zone))
    }

    /// [`SharedZone::store`] for a zone already in an `Arc`.
    pub fn store_arc(&self, zone: Arc<Zone>) -> Arc<Zone> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ZoneConfig;
    use crate::zone::{AgentInfo, Lookup};
    use std::sync::Barrier;

    fn agent(n: u8, workspace: &str) -> AgentInfo {
        let mut id = [0u8; 16];
        id[15] = n;
        AgentInfo {
            id,
            name: format!("a{n}"),
            workspace: workspace.into(),
            owner: "testy".into(),
        }
    }

    #[test]
    fn query_answers_from_the_zone_it_loaded_while_a_new_one_is_stored() {
        let shared = SharedZone::new(Zone::new(ZoneConfig::default(), &[agent(1, "old")]));
        let loaded = shared.load();
        let previous = shared.store(Zone::new(ZoneConfig::default(), &[agent(2, "new")]));

        assert!(Arc::ptr_eq(&loaded, &previous));
        assert!(matches!(loaded.lookup("old.coder."), Lookup::Host(_)));
        assert_eq!(loaded.lookup("new.coder."), Lookup::NxDomain);
        let now = shared.load();
        assert_eq!(now.lookup("old.coder."), Lookup::NxDomain);
        assert!(matches!(now.lookup("new.coder."), Lookup::Host(_)));
    }

    #[test]
    fn readers_never_see_half_an_update() {
        // Each zone holds a workspace `gN` and its agent's `.me.` name; a reader must see
        // both names of one generation, never one without the other.
        let zone_for = |g: u8| {
            let mut a = agent(g, &format!("g{g}"));
            a.name = format!("x{g}");
            Zone::new(ZoneConfig::default(), &[a])
        };
        let shared = SharedZone::new(zone_for(0));
        let barrier = Barrier::new(3);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..2000 {
                        let zone = shared.load();
                        let found: Vec<u8> = (0..=50u8)
                            .filter(|g| {
                                matches!(zone.lookup(&format!("g{g}.coder.")), Lookup::Host(_))
                            })
                            .collect();
                        assert_eq!(found.len(), 1, "exactly one generation: {found:?}");
                        let g = found[0];
                        assert!(matches!(
                            zone.lookup(&format!("x{g}.g{g}.me.coder.")),
                            Lookup::Host(_)
                        ));
                    }
                });
            }
            barrier.wait();
            for g in 1..=50 {
                shared.store(zone_for(g));
            }
        });
    }
}
