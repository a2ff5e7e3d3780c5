//! Sockets that must not stay in one state too long, kept by one sweeper
//! instead of a timer each. A glommio timer is polled, and put back into the
//! reactor's tree, every time its task wakes; at tens of thousands of
//! requests a second that cost a few percent of a core. Two users:
//!
//! - the server's keep-alive HTTP connections, timed while they wait for
//!   their next request (`limits.http_idle_timeout_ms`, and all of them at
//!   once when the shard drains; `http-idle` in each shard's services);
//! - the load generator's connections, timed while an exchange runs
//!   (`shardmcp load --timeout`).
//!
//! Time is counted in sweeps, not read from a clock: a socket notes the
//! number of sweeps done when its timed state begins, and is shut down
//! (both ways: its task sees the end of the stream) at the first sweep that
//! finds it in that state for more than [`SWEEPS_PER_BOUND`] of them. With
//! sweeps `bound / SWEEPS_PER_BOUND` apart, it has then been in the state
//! for more than the bound and at most a quarter more.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use slab::Slab;

/// Sweeps in one bound.
pub const SWEEPS_PER_BOUND: u64 = 4;

struct Entry {
    fd: RawFd,
    /// Sweeps done when the timed state began; `None` outside it (or once
    /// the socket was shut down for overstaying).
    since: Option<u64>,
    /// A sweep shut the socket down during the current timed state.
    fired: bool,
}

/// The watched sockets of one thread and the sweeps done so far.
#[derive(Default)]
pub struct SweptSockets {
    entries: RefCell<Slab<Entry>>,
    sweeps: Cell<u64>,
}

impl SweptSockets {
    /// How far apart sweeps must be for a bound of `bound`.
    pub fn sweep_interval(bound: Duration) -> Duration {
        (bound / SWEEPS_PER_BOUND as u32).max(Duration::from_millis(1))
    }

    /// Watches the socket `fd` until the guard drops. The guard must drop
    /// before the socket is closed, so a sweep never touches a descriptor
    /// that was reused.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> SweptSocket {
        let key = self.entries.borrow_mut().insert(Entry {
            fd,
            since: None,
            fired: false,
        });
        SweptSocket {
            sockets: self.clone(),
            key,
        }
    }

    /// Sockets watched (for tests).
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    /// One sweep: shuts down the sockets in their timed state for more than
    /// the bound, or every one in it when `all`. Gives how many.
    pub fn sweep(&self, all: bool) -> usize {
        let sweeps = self.sweeps.get() + 1;
        self.sweeps.set(sweeps);
        let mut fired = 0;
        for (_, entry) in self.entries.borrow_mut().iter_mut() {
            let Some(since) = entry.since else {
                continue;
            };
            if all || sweeps - since > SWEEPS_PER_BOUND {
                // SAFETY: the fd belongs to a live socket (its guard removes
                // it before the socket closes); shutdown does not close it,
                // it only ends the stream both ways.
                unsafe {
                    libc::shutdown(entry.fd, libc::SHUT_RDWR);
                }
                entry.since = None;
                entry.fired = true;
                fired += 1;
            }
        }
        fired
    }
}

/// One socket's place in [`SweptSockets`].
pub struct SweptSocket {
    sockets: Rc<SweptSockets>,
    key: usize,
}

impl SweptSocket {
    /// The timed state begins now.
    pub fn start(&self) {
        let sweeps = self.sockets.sweeps.get();
        if let Some(entry) = self.sockets.entries.borrow_mut().get_mut(self.key) {
            entry.since = Some(sweeps);
            entry.fired = false;
        }
    }

    /// The timed state is over; true when a sweep ended it (the socket was
    /// shut down meanwhile).
    pub fn stop(&self) -> bool {
        match self.sockets.entries.borrow_mut().get_mut(self.key) {
            Some(entry) => {
                entry.since = None;
                std::mem::take(&mut entry.fired)
            }
            None => false,
        }
    }
}

impl Drop for SweptSocket {
    fn drop(&mut self) {
        self.sockets.entries.borrow_mut().try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_socket_timed_past_the_bound_is_shut_down_and_says_so_once() {
        let sockets = Rc::new(SweptSockets::default());
        let (mut client, server) = pair();
        let guard = sockets.register(server.as_raw_fd());
        guard.start();
        for sweep in 1..=SWEEPS_PER_BOUND {
            assert_eq!(sockets.sweep(false), 0, "sweep {sweep} is too early");
        }
        assert_eq!(sockets.sweep(false), 1);
        assert_eq!(sockets.sweep(false), 0, "shut down once");
        let mut rest = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert!(
            client.read_to_end(&mut rest).is_ok(),
            "the peer sees the end"
        );
        assert!(guard.stop(), "the sweep ended the timed state");
        assert!(!guard.stop(), "reported once");
        drop(guard);
        assert!(sockets.is_empty());
    }

    #[test]
    fn a_stopped_socket_is_left_alone_and_its_time_starts_again() {
        let sockets = Rc::new(SweptSockets::default());
        let (mut client, mut server) = pair();
        let guard = sockets.register(server.as_raw_fd());
        guard.start();
        for _ in 0..SWEEPS_PER_BOUND {
            sockets.sweep(false);
        }
        assert!(!guard.stop());
        for _ in 0..10 {
            assert_eq!(sockets.sweep(false), 0, "not timed");
        }
        guard.start();
        for _ in 0..SWEEPS_PER_BOUND {
            assert_eq!(sockets.sweep(false), 0);
        }
        // Still open: it was never past the bound.
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).unwrap();
        assert_eq!(sockets.sweep(false), 1);
    }

    #[test]
    fn sweeping_all_shuts_down_every_timed_socket_at_once_but_no_other() {
        let sockets = Rc::new(SweptSockets::default());
        let (_a, timed_server) = pair();
        let (_b, other_server) = pair();
        let timed = sockets.register(timed_server.as_raw_fd());
        let other = sockets.register(other_server.as_raw_fd());
        timed.start();
        assert!(!other.stop());
        assert_eq!(sockets.sweep(true), 1);
        assert_eq!(sockets.len(), 2);
    }

    #[test]
    fn a_dropped_guard_leaves_the_sweeps() {
        let sockets = Rc::new(SweptSockets::default());
        let (_client, server) = pair();
        let guard = sockets.register(server.as_raw_fd());
        guard.start();
        drop(guard);
        for _ in 0..=SWEEPS_PER_BOUND {
            assert_eq!(sockets.sweep(false), 0);
        }
        assert!(sockets.is_empty());
    }

    #[test]
    fn sweeps_are_a_quarter_of_the_bound_apart() {
        assert_eq!(
            SweptSockets::sweep_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            SweptSockets::sweep_interval(Duration::from_millis(2)),
            Duration::from_millis(1)
        );
    }
}
