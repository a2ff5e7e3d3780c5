//! Shard-local synchronisation primitives: single-threaded, no atomics, no locks.
//!
//! Everything here is `!Send` on purpose. Two shapes cover what the runtime
//! needs: [`Event`], a set-once flag many tasks can await (shutdown and kill
//! signals, drain), and [`oneshot`], a single reply slot (request/reply over
//! a session mailbox or the mesh). Cross-core traffic never uses these; it goes
//! through `mesh`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// A set-once flag that any number of local tasks can await.
///
/// Waiters keep one waker slot each for as long as they live, so a waiter that
/// is polled many times (say, inside a `select` with a socket read) never grows
/// the waker list: its memory is bounded by the number of live waiters.
#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<EventInner>,
}

#[derive(Default)]
struct EventInner {
    set: Cell<bool>,
    wakers: RefCell<Slab<Waker>>,
}

impl Event {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every waiter. Setting twice is harmless.
    pub fn set(&self) {
        if self.inner.set.replace(true) {
            return;
        }
        // Take the wakers out before waking: a woken task may run synchronously
        // in some executors and touch this event again.
        let wakers = std::mem::take(&mut *self.inner.wakers.borrow_mut());
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.inner.set.get()
    }

    /// A future that completes once the flag is set.
    pub fn wait(&self) -> EventWait {
        EventWait {
            inner: self.inner.clone(),
            slot: None,
        }
    }

    /// Number of registered waiters (for tests and introspection).
    pub fn waiter_count(&self) -> usize {
        self.inner.wakers.borrow().len()
    }
}

/// Future returned by [`Event::wait`].
pub struct EventWait {
    inner: Rc<EventInner>,
    slot: Option<usize>,
}

impl EventWait {
    /// Non-async check used by combinators that poll several sources.
    pub fn poll_set(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.set.get() {
            self.release();
            return Poll::Ready(());
        }
        let mut wakers = self.inner.wakers.borrow_mut();
        match self.slot {
            Some(key) => match wakers.get_mut(key) {
                Some(existing) if existing.will_wake(cx.waker()) => {}
                Some(existing) => *existing = cx.waker().clone(),
                None => self.slot = Some(wakers.insert(cx.waker().clone())),
            },
            None => self.slot = Some(wakers.insert(cx.waker().clone())),
        }
        Poll::Pending
    }

    fn release(&mut self) {
        if let Some(key) = self.slot.take() {
            let mut wakers = self.inner.wakers.borrow_mut();
            if wakers.contains(key) {
                wakers.remove(key);
            }
        }
    }
}

impl Future for EventWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_set(cx)
    }
}

impl Drop for EventWait {
    fn drop(&mut self) {
        self.release();
    }
}

/// Error returned when the sending half of a oneshot was dropped unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reply sender was dropped without replying")]
pub struct Canceled;

struct OneshotState<T> {
    value: Option<T>,
    sender_alive: bool,
    receiver_alive: bool,
    waker: Option<Waker>,
}

/// Creates a local single-value channel.
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let state = Rc::new(RefCell::new(OneshotState {
        value: None,
        sender_alive: true,
        receiver_alive: true,
        waker: None,
    }));
    (
        OneshotSender {
            state: state.clone(),
        },
        OneshotReceiver { state },
    )
}

pub struct OneshotSender<T> {
    state: Rc<RefCell<OneshotState<T>>>,
}

impl<T> OneshotSender<T> {
    /// Delivers the value; hands it back if the receiver is gone.
    pub fn send(self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = self.state.borrow_mut();
            if !state.receiver_alive {
                return Err(value);
            }
            state.value = Some(value);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// True when nobody will read the reply any more (the caller gave up).
    pub fn is_canceled(&self) -> bool {
        !self.state.borrow().receiver_alive
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.state.borrow_mut();
            state.sender_alive = false;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

pub struct OneshotReceiver<T> {
    state: Rc<RefCell<OneshotState<T>>>,
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Result<T, Canceled>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.state.borrow_mut();
        if let Some(value) = state.value.take() {
            return Poll::Ready(Ok(value));
        }
        if !state.sender_alive {
            return Poll::Ready(Err(Canceled));
        }
        match &state.waker {
            Some(existing) if existing.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for OneshotReceiver<T> {
    fn drop(&mut self) {
        self.state.borrow_mut().receiver_alive = false;
    }
}

/// Runs a future so that a panic inside it comes out as `Err(message)`
/// instead of unwinding into the executor (and the shard).
pub struct CatchPanic<F> {
    future: Option<Pin<Box<F>>>,
}

pub fn catch_panic<F: Future>(future: F) -> CatchPanic<F> {
    CatchPanic {
        future: Some(Box::pin(future)),
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(Err("polled after completion".to_string()));
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                this.future = None;
                Poll::Ready(Ok(output))
            }
            Err(payload) => {
                // The destructor of a future that panicked may panic too.
                let future = this.future.take();
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(future)));
                Poll::Ready(Err(panic_message(payload.as_ref())))
            }
        }
    }
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs `future` to completion on a fresh single-shard executor (unpinned,
/// with a small io_uring buffer). For tests and tools that need a shard
/// without the node; panics if the executor cannot be built.
pub fn run_on_fresh_shard<F: Future + 'static>(future: F) -> F::Output {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 16)
        .make()
        .expect("a glommio executor (io_uring and RLIMIT_MEMLOCK >= 512 KiB)")
        .run(future)
}

/// Yields to the executor `rounds` times so every task that is ready runs.
///
/// Tests use it to let a single-threaded executor settle deterministically
/// instead of sleeping.
pub async fn settle(rounds: usize) {
    for _ in 0..rounds {
        futures_lite::future::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    fn run<F: Future<Output = ()> + 'static>(f: F) {
        run_on_fresh_shard(f)
    }

    #[test]
    fn event_wakes_every_waiter_once_set() {
        run(async {
            let event = Event::new();
            let done = Rc::new(Cell::new(0));
            for _ in 0..3 {
                let (event, done) = (event.clone(), done.clone());
                glommio::spawn_local(async move {
                    event.wait().await;
                    done.set(done.get() + 1);
                })
                .detach();
            }
            settle(4).await;
            assert_eq!(done.get(), 0);
            assert_eq!(event.waiter_count(), 3);
            event.set();
            settle(4).await;
            assert_eq!(done.get(), 3);
            assert_eq!(event.waiter_count(), 0);
        });
    }

    #[test]
    fn event_waiter_polled_repeatedly_keeps_one_slot() {
        run(async {
            let event = Event::new();
            let mut wait = event.wait();
            for _ in 0..100 {
                let polled = future::poll_once(&mut wait).await;
                assert!(polled.is_none());
            }
            assert_eq!(event.waiter_count(), 1);
            drop(wait);
            assert_eq!(event.waiter_count(), 0);
        });
    }

    #[test]
    fn catch_panic_turns_a_panic_into_its_message() {
        run(async {
            assert_eq!(catch_panic(async { 5 }).await, Ok(5));
            let caught = catch_panic(async {
                futures_lite::future::yield_now().await;
                if true {
                    panic!("handler blew up");
                }
                1
            })
            .await;
            assert_eq!(caught, Err("handler blew up".to_string()));
        });
    }

    #[test]
    fn oneshot_delivers_and_reports_dropped_sender() {
        run(async {
            let (tx, rx) = oneshot();
            tx.send(7u32).expect("receiver alive");
            assert_eq!(rx.await, Ok(7));

            let (tx, rx) = oneshot::<u32>();
            drop(tx);
            assert_eq!(rx.await, Err(Canceled));

            let (tx, rx) = oneshot::<u32>();
            drop(rx);
            assert!(tx.is_canceled());
            assert_eq!(tx.send(1), Err(1));
        });
    }
}
