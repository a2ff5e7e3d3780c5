//! The keep-alive HTTP connections of a shard that wait for their next
//! request. A sweeper closes those quiet past `limits.http_idle_timeout_ms`,
//! and all of them when the shard drains. This replaces a timer per request:
//! a glommio timer is polled, and put back into the reactor's tree, every
//! time its task wakes, which cost a few percent of a shard at full load.
//!
//! Time is counted in sweeps, not read from a clock: a connection notes the
//! number of sweeps done when it goes quiet, and is closed at the first
//! sweep that finds it quiet for more than [`SWEEPS_PER_BOUND`] of them.
//! With sweeps `bound / SWEEPS_PER_BOUND` apart it has then been quiet for
//! more than the bound and at most a quarter more.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use slab::Slab;

/// Sweeps in one idle bound.
pub const SWEEPS_PER_BOUND: u64 = 4;

struct Entry {
    fd: RawFd,
    /// Sweeps done when the connection went quiet; `None` while it is
    /// busy with a request (or was already closed for idling).
    quiet_since: Option<u64>,
}

/// The shard's keep-alive connections and the sweeps done so far.
#[derive(Default)]
pub struct IdleConnections {
    entries: RefCell<Slab<Entry>>,
    sweeps: Cell<u64>,
}

impl IdleConnections {
    /// How far apart sweeps must be for an idle bound of `bound`.
    pub fn sweep_interval(bound: Duration) -> Duration {
        (bound / SWEEPS_PER_BOUND as u32).max(Duration::from_millis(1))
    }

    /// Watches the connection on `fd` until the guard drops. The guard must
    /// drop before the socket is closed, so a sweep never touches a
    /// descriptor that was reused.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> IdleGuard {
        let key = self.entries.borrow_mut().insert(Entry {
            fd,
            quiet_since: None,
        });
        IdleGuard {
            connections: self.clone(),
            key,
        }
    }

    /// Connections watched (for tests).
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    /// One sweep: shuts down the connections quiet for more than the bound,
    /// or every quiet one when `draining`. Their tasks see the end of the
    /// stream and close. Gives how many were shut down.
    pub fn sweep(&self, draining: bool) -> usize {
        let sweeps = self.sweeps.get() + 1;
        self.sweeps.set(sweeps);
        let mut closed = 0;
        for (_, entry) in self.entries.borrow_mut().iter_mut() {
            let Some(since) = entry.quiet_since else {
                continue;
            };
            if draining || sweeps - since > SWEEPS_PER_BOUND {
                // SAFETY: the fd belongs to a live connection (its guard
                // removes it before the socket closes); shutdown does not
                // close it, it only ends the stream both ways.
                unsafe {
                    libc::shutdown(entry.fd, libc::SHUT_RDWR);
                }
                entry.quiet_since = None;
                closed += 1;
            }
        }
        closed
    }
}

/// One connection's place in [`IdleConnections`].
pub struct IdleGuard {
    connections: Rc<IdleConnections>,
    key: usize,
}

impl IdleGuard {
    /// The connection waits for its next request from now on.
    pub fn quiet(&self) {
        let sweeps = self.connections.sweeps.get();
        if let Some(entry) = self.connections.entries.borrow_mut().get_mut(self.key) {
            entry.quiet_since = Some(sweeps);
        }
    }

    /// The connection is busy with a request: sweeps leave it alone.
    pub fn busy(&self) {
        if let Some(entry) = self.connections.entries.borrow_mut().get_mut(self.key) {
            entry.quiet_since = None;
        }
    }
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.connections.entries.borrow_mut().try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_quiet_connection_is_shut_down_after_more_than_the_bound_in_sweeps() {
        let connections = Rc::new(IdleConnections::default());
        let (mut client, server) = pair();
        let guard = connections.register(server.as_raw_fd());
        guard.quiet();
        for sweep in 1..=SWEEPS_PER_BOUND {
            assert_eq!(connections.sweep(false), 0, "sweep {sweep} is too early");
        }
        assert_eq!(connections.sweep(false), 1);
        assert_eq!(connections.sweep(false), 0, "shut down once");
        let mut rest = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert!(
            client.read_to_end(&mut rest).is_ok(),
            "the client sees the end"
        );
        drop(guard);
        assert!(connections.is_empty());
    }

    #[test]
    fn a_busy_connection_is_left_alone_and_its_quiet_time_starts_again() {
        let connections = Rc::new(IdleConnections::default());
        let (_client, server) = pair();
        let guard = connections.register(server.as_raw_fd());
        guard.quiet();
        for _ in 0..SWEEPS_PER_BOUND {
            connections.sweep(false);
        }
        guard.busy();
        for _ in 0..10 {
            assert_eq!(connections.sweep(false), 0, "busy");
        }
        guard.quiet();
        for _ in 0..SWEEPS_PER_BOUND {
            assert_eq!(connections.sweep(false), 0);
        }
        assert_eq!(connections.sweep(false), 1);
    }

    #[test]
    fn draining_shuts_down_every_quiet_connection_at_once_but_no_busy_one() {
        let connections = Rc::new(IdleConnections::default());
        let (_a, quiet_server) = pair();
        let (_b, busy_server) = pair();
        let quiet = connections.register(quiet_server.as_raw_fd());
        let busy = connections.register(busy_server.as_raw_fd());
        quiet.quiet();
        busy.busy();
        assert_eq!(connections.sweep(true), 1);
        assert_eq!(connections.len(), 2);
    }

    #[test]
    fn sweeps_are_a_quarter_of_the_bound_apart() {
        assert_eq!(
            IdleConnections::sweep_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            IdleConnections::sweep_interval(Duration::from_millis(2)),
            Duration::from_millis(1)
        );
    }
}
