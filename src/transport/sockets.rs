//! The sockets a shard has open, by raw fd, so a shard that dies by an
//! escaped panic can still let go of them.
//!
//! When a panic escapes glommio's executor, its pending tasks are never
//! dropped (wakers, tasks and the reactor hold each other), so their sockets
//! would stay open: a listener would stay in the SO_REUSEPORT group and
//! swallow new connections, and clients would hang. [`shutdown_all`] shuts
//! every tracked socket down instead: listeners leave the group, clients see
//! EOF. The fds themselves are not closed, because a leaked socket object
//! could still be dropped during thread teardown and close an fd number some
//! other shard reuses; they stay allocated until the process exits, bounded by
//! the node's shard restart intensity.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

use glommio::net::TcpListener;

thread_local! {
    static LIVE: RefCell<HashSet<RawFd>> = RefCell::new(HashSet::new());
}

/// Keeps `fd` in this shard's set while it lives.
pub struct Tracked {
    fd: RawFd,
}

pub fn track(fd: RawFd) -> Tracked {
    LIVE.with(|live| live.borrow_mut().insert(fd));
    Tracked { fd }
}

impl Drop for Tracked {
    /// Shuts the socket down as its owner lets go. An io_uring operation still
    /// in flight holds its own reference to the socket, so without this a
    /// listener would keep accepting (into nowhere) until the ring is torn
    /// down; shutdown(2) takes it out of the SO_REUSEPORT group at once.
    fn drop(&mut self) {
        let _ = LIVE.try_with(|live| live.borrow_mut().remove(&self.fd));
        // SAFETY: the fd is still open: its owner closes it after this guard
        // is dropped (the guard is always declared after the socket).
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

/// Shuts down every socket this thread still tracks; returns how many.
/// They stay tracked: an owner dropped later untracks its own, and
/// [`close_leaked`] closes what is left once the executor is gone.
pub fn shutdown_all() -> usize {
    LIVE.with(|live| {
        let fds: Vec<RawFd> = live.borrow().iter().copied().collect();
        for &fd in &fds {
            // SAFETY: shutdown(2) only changes the state of the socket the fd
            // names; the fd stays open and owned by its (leaked) object.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        fds.len()
    })
}

/// Shuts down `fraction` (in (0, 1]) of this thread's client connections,
/// leaving listeners alone (chaos: dropped connections); returns how many.
pub fn shutdown_connections(fraction: f64) -> usize {
    LIVE.with(|live| {
        let live = live.borrow();
        let connections: Vec<RawFd> = live
            .iter()
            .copied()
            .filter(|&fd| !is_listener(fd))
            .collect();
        let count = ((connections.len() as f64) * fraction.clamp(0.0, 1.0)).ceil() as usize;
        for &fd in connections.iter().take(count) {
            // SAFETY: as in shutdown_all: only the socket's state changes.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        count.min(connections.len())
    })
}

/// Whether `fd` is a listening socket (SO_ACCEPTCONN).
fn is_listener(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `value`.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    result == 0 && value != 0
}

/// Closes every socket this thread still tracks. Only for a thread whose
/// executor is gone: a socket still tracked then belongs to an object that
/// was leaked (never dropped), so nothing else will ever close it, and
/// without this a dead shard's connections would hold their fds for the
/// process's lifetime (at 15,000 connections, two shard deaths exhaust a
/// 20,000 fd limit). Returns how many.
pub fn close_leaked() -> usize {
    LIVE.with(|live| {
        let fds: Vec<RawFd> = live.borrow_mut().drain().collect();
        for &fd in &fds {
            // SAFETY: the owner of `fd` was leaked with the executor and
            // will never close it (see above); nothing else holds the number.
            unsafe {
                libc::close(fd);
            }
        }
        fds.len()
    })
}

pub fn tracked_count() -> usize {
    LIVE.with(|live| live.borrow().len())
}

/// Binds a listening socket with SO_REUSEPORT (every shard binds the same
/// address; the kernel spreads connections) and the given backlog, tracked.
pub fn listen(addr: SocketAddr, backlog: i32) -> std::io::Result<(TcpListener, Tracked)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    let fd = socket.into_raw_fd();
    let tracked = track(fd);
    // SAFETY: `fd` is a bound, listening TCP socket we own; ownership moves
    // into the listener, which closes it on drop.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok((listener, tracked))
}
