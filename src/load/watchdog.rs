//! The request timeout of a generator thread's connections, kept by one
//! sweeper instead of a timer per request. A glommio timer is put back into
//! the reactor's tree every time its task wakes; at tens of thousands of
//! requests a second that was a seventh of the generator's own CPU, spent
//! on every server it measures.
//!
//! A connection marks itself busy when it sends a request and quiet when
//! the answer is in. Time is counted in sweeps, [`SWEEPS_PER_LIMIT`] per
//! timeout: a sweep that finds a connection busy for more than that many
//! sweeps shuts its socket down (both ways), which ends the exchange at
//! once with an error, and notes that the watchdog fired, so the exchange
//! counts as a timeout. A request so times out after its limit and at most
//! a quarter more. (The server's idle sweeper, `transport::idle`, works the
//! same way.)

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use slab::Slab;

/// Sweeps in one timeout.
pub const SWEEPS_PER_LIMIT: u64 = 4;

struct Entry {
    fd: RawFd,
    /// Sweeps done when the running exchange began; `None` while quiet.
    busy_since: Option<u64>,
    /// The watchdog shut the socket down during the running exchange.
    fired: bool,
}

/// The watched connections of one generator thread.
#[derive(Default)]
pub struct Watchdog {
    entries: RefCell<Slab<Entry>>,
    sweeps: Cell<u64>,
}

impl Watchdog {
    /// How far apart sweeps must be for a timeout of `limit`.
    pub fn sweep_interval(limit: Duration) -> Duration {
        (limit / SWEEPS_PER_LIMIT as u32).max(Duration::from_millis(1))
    }

    /// Watches the connection on `fd` until the [`Watch`] drops. It must drop
    /// before the socket closes, so a sweep never touches a reused
    /// descriptor.
    pub fn register(self: &Rc<Self>, fd: RawFd) -> Watch {
        let key = self.entries.borrow_mut().insert(Entry {
            fd,
            busy_since: None,
            fired: false,
        });
        Watch {
            dog: self.clone(),
            key,
        }
    }

    /// One sweep: shuts down the connections busy past the limit. Gives how
    /// many.
    pub fn sweep(&self) -> usize {
        let sweeps = self.sweeps.get() + 1;
        self.sweeps.set(sweeps);
        let mut fired = 0;
        for (_, entry) in self.entries.borrow_mut().iter_mut() {
            let Some(since) = entry.busy_since else {
                continue;
            };
            if sweeps - since > SWEEPS_PER_LIMIT {
                // SAFETY: the fd belongs to a live connection (its Watch
                // removes it before the socket closes); shutdown does not
                // close it, it only ends the stream both ways.
                unsafe {
                    libc::shutdown(entry.fd, libc::SHUT_RDWR);
                }
                entry.busy_since = None;
                entry.fired = true;
                fired += 1;
            }
        }
        fired
    }

    /// Sweeps every `interval` until the task is dropped.
    pub async fn run(self: Rc<Self>, interval: Duration) {
        loop {
            glommio::timer::sleep(interval).await;
            self.sweep();
        }
    }
}

/// One connection's place in its thread's [`Watchdog`].
pub struct Watch {
    dog: Rc<Watchdog>,
    key: usize,
}

impl Watch {
    /// An exchange begins.
    pub fn start(&self) {
        let sweeps = self.dog.sweeps.get();
        if let Some(entry) = self.dog.entries.borrow_mut().get_mut(self.key) {
            entry.busy_since = Some(sweeps);
            entry.fired = false;
        }
    }

    /// The exchange is over; true when the watchdog ended it (a timeout).
    pub fn stop(&self) -> bool {
        match self.dog.entries.borrow_mut().get_mut(self.key) {
            Some(entry) => {
                entry.busy_since = None;
                std::mem::take(&mut entry.fired)
            }
            None => false,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.dog.entries.borrow_mut().try_remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    fn ended(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(0))
    }

    #[test]
    fn a_busy_connection_is_shut_down_after_its_limit_and_counts_as_fired() {
        let dog = Rc::new(Watchdog::default());
        let (mut client, _server) = pair();
        let watch = dog.register(client.as_raw_fd());
        watch.start();
        for _ in 0..SWEEPS_PER_LIMIT {
            assert_eq!(dog.sweep(), 0, "within its limit");
        }
        assert_eq!(dog.sweep(), 1);
        assert!(ended(&mut client), "the pending read ends");
        assert!(watch.stop(), "the exchange was ended by the watchdog");
        assert!(!watch.stop(), "fired is reported once");
    }

    #[test]
    fn quiet_and_finished_connections_are_left_alone() {
        let dog = Rc::new(Watchdog::default());
        let (mut quiet, mut quiet_peer) = pair();
        let (mut quick, mut quick_peer) = pair();
        let _quiet_watch = dog.register(quiet.as_raw_fd());
        let quick_watch = dog.register(quick.as_raw_fd());
        for _ in 0..3 * SWEEPS_PER_LIMIT {
            quick_watch.start();
            dog.sweep();
            assert!(!quick_watch.stop());
        }
        for (stream, peer) in [(&mut quiet, &mut quiet_peer), (&mut quick, &mut quick_peer)] {
            stream.write_all(b"x").expect("still open");
            let mut byte = [0u8; 1];
            peer.read_exact(&mut byte).expect("delivered");
        }
    }

    #[test]
    fn a_dropped_watch_leaves_the_watchdog() {
        let dog = Rc::new(Watchdog::default());
        let (client, _server) = pair();
        let watch = dog.register(client.as_raw_fd());
        watch.start();
        drop(watch);
        for _ in 0..=SWEEPS_PER_LIMIT {
            assert_eq!(dog.sweep(), 0);
        }
        assert!(dog.entries.borrow().is_empty());
    }
}
