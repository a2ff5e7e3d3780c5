//! Pools: bulkheads of session actors. Each shard runs P pools, each a
//! simple_one_for_one supervisor of temporary session actors, under one
//! one_for_one "pools" supervisor. A session's pool is a hash of its id, so
//! losing a pool loses about 1/(shards x pools) of the sessions and nothing else.

use std::cell::RefCell;
use std::rc::Rc;

use crate::config::Config;
use crate::registry::SessionId;
use crate::supervision::{
    ChildKey, ChildKind, ChildSpec, DynamicTemplate, Restart, Shutdown, SpecError, StartFn,
    Strategy, SupFlags, Supervisor, SupervisorError, SupervisorSpec,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool {0} is restarting; try again")]
    Down(usize),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// Handles to the live pool supervisors of one shard. Each pool writes its
/// handle here every time it (re)starts, so callers always reach the current one.
pub struct PoolSet {
    pools: RefCell<Vec<Option<Supervisor>>>,
    parent: RefCell<Option<Supervisor>>,
}

impl PoolSet {
    pub fn new(count: usize) -> Rc<PoolSet> {
        Rc::new(PoolSet {
            pools: RefCell::new(vec![None; count]),
            parent: RefCell::new(None),
        })
    }

    pub fn count(&self) -> usize {
        self.pools.borrow().len()
    }

    /// The "pools" supervisor (one_for_one) with one simple_one_for_one child per pool.
    pub fn supervisor_spec(self: &Rc<Self>, config: &Config) -> Result<ChildSpec, SpecError> {
        let sup = &config.supervision;
        let parent_slot = Rc::downgrade(self);
        let mut spec = SupervisorSpec::new(
            "pools",
            SupFlags::new(Strategy::OneForOne).intensity(sup.pools_intensity, sup.pools_period_ms),
        )
        .on_start(move |supervisor| {
            if let Some(set) = parent_slot.upgrade() {
                *set.parent.borrow_mut() = Some(supervisor.clone());
            }
        });
        for index in 0..self.count() {
            let slot = Rc::downgrade(self);
            let pool = SupervisorSpec::new(
                &format!("pool-{index}"),
                SupFlags::new(Strategy::SimpleOneForOne)
                    .intensity(sup.pool_intensity, sup.pool_period_ms),
            )
            .template(
                DynamicTemplate {
                    id: Rc::from("session"),
                    restart: Restart::Temporary,
                    shutdown: Shutdown::TimeoutMs(sup.session_shutdown_ms),
                    kind: ChildKind::Worker,
                },
                config.limits.sessions_per_pool_max,
            )
            .on_start(move |supervisor| {
                if let Some(set) = slot.upgrade() {
                    set.pools.borrow_mut()[index] = Some(supervisor.clone());
                }
            });
            spec = spec.child(pool.into_child_spec()?);
        }
        spec.into_child_spec()
    }

    /// The current supervisor of pool `index`, if it is running.
    pub fn pool(&self, index: usize) -> Option<Supervisor> {
        self.pools
            .borrow()
            .get(index)
            .and_then(|pool| pool.clone())
            .filter(|pool| !pool.is_stopped())
    }

    pub fn index_of(&self, id: &SessionId) -> usize {
        id.pool_index(self.count())
    }

    /// Starts a session actor in the session's pool.
    pub fn start_session(&self, id: &SessionId, start: StartFn) -> Result<ChildKey, PoolError> {
        let index = self.index_of(id);
        let pool = self.pool(index).ok_or(PoolError::Down(index))?;
        Ok(pool.start_child(start)?)
    }

    /// Sessions in each pool.
    pub fn session_counts(&self) -> Vec<usize> {
        (0..self.count())
            .map(|index| self.pool(index).map_or(0, |pool| pool.child_count()))
            .collect()
    }

    /// Kills pool `index` as a crash would; its parent restarts it empty.
    /// Returns false if the pool is not running.
    pub fn kill_pool(&self, index: usize) -> bool {
        let parent = self.parent.borrow().clone();
        parent
            .and_then(|parent| {
                parent
                    .child_key(&format!("pool-{index}"))
                    .map(|key| parent.kill_child(key))
            })
            .unwrap_or(false)
    }
}
