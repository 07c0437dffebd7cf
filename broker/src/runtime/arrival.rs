//! Arrival order across connections on a multi-threaded runtime (issue #10, fault 11).
//!
//! Packets that reach the broker together on different connections must be handled in
//! the order they arrived: client B's SUBSCRIBE, written just before client A's PUBLISH
//! to that topic, must be in the trie before the PUBLISH is routed. tokio's I/O driver
//! reports readiness in the order the kernel queued it (epoll's ready list is first in,
//! first out), and one thread polls the driver at a time, so the order in which it wakes
//! connection tasks is the order their input arrived. The current-thread scheduler runs
//! woken tasks in that order. The multi-threaded one does not: a woken task goes into its
//! worker's LIFO slot (the last woken runs first) and another worker may steal and run a
//! task in parallel, so A's PUBLISH could take the core's lock first.
//!
//! So every connection task is wrapped ([`Sequenced`]) in a waker ([`Turn`]) that takes a
//! ticket, from one counter, when the task is woken: tickets are numbered in wake order.
//! A task about to hand input to the core waits until every earlier ticket has been
//! *passed* ([`Turn::wait`]), and passes its own once that input is handled. A task that
//! was woken but hands nothing to the core (woken by a delivery, a timer, or input it is
//! not reading now) passes its ticket when it goes back to sleep, so nobody waits for
//! it. The lowest outstanding ticket can always go: no task waits on a later one, and a
//! woken task is always polled, so the chain never stalls.
//!
//! The guarantee is the current-thread scheduler's, no more: input that arrives while a
//! connection task is still running is read by it at once, ahead of earlier input on a
//! sleeping connection, on either runtime. A dozing connection (`runtime/doze.rs`, quiet
//! for a second) woken by input is served by the dozer's task itself, in the order its
//! input arrived among the other dozing connections. The dozer's task is sequenced like a
//! connection's: it takes a ticket when woken and passes it when its poll ends, so a
//! connection woken after it waits for what the dozer served. (Beyond 64 such
//! connections in one turn of the dozer, the rest are sent to tasks of their own and
//! take their tickets then.) With one worker thread nothing here is used (`Arrivals` is
//! not created): the scheduler alone keeps the order, and runs the dozer's task first.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The ticket counter and which tickets have been passed.
#[derive(Debug)]
pub(crate) struct Arrivals {
    /// The next ticket to hand out (tickets start at 1; 0 means "none").
    next: AtomicU64,
    turns: Mutex<Turns>,
}

#[derive(Debug)]
struct Turns {
    /// Every ticket below this one has been passed: this one's holder may go.
    served: u64,
    /// Tickets passed before their turn (above `served`).
    early: BTreeSet<u64>,
    /// Tasks waiting for their ticket's turn, by ticket.
    waiting: BTreeMap<u64, Waker>,
}

/// A ticket value meaning the task is gone: no ticket is taken any more.
const CLOSED: u64 = u64::MAX;

impl Arrivals {
    pub(crate) fn new() -> Arc<Arrivals> {
        Arc::new(Arrivals {
            next: AtomicU64::new(1),
            turns: Mutex::new(Turns {
                served: 1,
                early: BTreeSet::new(),
                waiting: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        // Nothing below can panic half-way through a change.
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `ticket`'s holder is done (or gone): later tickets no longer wait for it.
    fn pass(&self, ticket: u64) {
        let wake = {
            let mut t = self.lock();
            t.waiting.remove(&ticket);
            if ticket != t.served {
                t.early.insert(ticket);
                return;
            }
            let mut served = ticket + 1;
            while t.early.remove(&served) {
                served += 1;
            }
            t.served = served;
            t.waiting.remove(&served)
        };
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// Whether `ticket` may go now; if not, `waker` is woken when it may.
    fn ready_or_wait(&self, ticket: u64, waker: &Waker) -> bool {
        let mut t = self.lock();
        if ticket <= t.served {
            return true;
        }
        match t.waiting.get_mut(&ticket) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                t.waiting.insert(ticket, waker.clone());
            }
        }
        false
    }

    /// Wraps a connection task's future so that its input is handled in arrival order.
    pub(crate) fn turn(self: &Arc<Self>) -> Arc<Turn> {
        Arc::new(Turn {
            arrivals: self.clone(),
            ticket: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            task: AtomicWaker::new(),
        })
    }
}

/// One connection task's place in the arrival order; also the waker its future is
/// polled with, so that every wake-up takes a ticket.
#[derive(Debug)]
pub(crate) struct Turn {
    arrivals: Arc<Arrivals>,
    /// The ticket held: 0 none, [`CLOSED`] once the task is gone.
    ticket: AtomicU64,
    /// The task waits in [`Turn::wait`]: its ticket is not passed when it sleeps.
    waiting: AtomicBool,
    /// The task's own waker.
    task: AtomicWaker,
}

impl Turn {
    /// Takes a ticket unless one is held (the earlier one keeps the place): what a
    /// wake-up does, also done by the dozer for a connection it sends back to a task
    /// (`runtime/doze.rs`), in the order their input arrived.
    pub(crate) fn take_ticket(&self) {
        if self.ticket.load(Ordering::Acquire) != 0 {
            return;
        }
        let t = self.arrivals.next.fetch_add(1, Ordering::AcqRel);
        if self
            .ticket
            .compare_exchange(0, t, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another wake-up took one meanwhile, or the task is gone: nobody holds `t`.
            self.arrivals.pass(t);
        }
    }

    /// Passes `ticket` if it is still the one held.
    fn pass_if_held(&self, ticket: u64) {
        if ticket != 0
            && ticket != CLOSED
            && self
                .ticket
                .compare_exchange(ticket, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.arrivals.pass(ticket);
        }
    }

    /// Waits until the input this task was woken for may be handled: every connection
    /// woken before it has handled its input or gone back to sleep.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let t = self.ticket.load(Ordering::Acquire);
            if t == 0 || t == CLOSED || self.arrivals.ready_or_wait(t, cx.waker()) {
                self.waiting.store(false, Ordering::Release);
                Poll::Ready(())
            } else {
                self.waiting.store(true, Ordering::Release);
                Poll::Pending
            }
        })
    }

    /// The input is handled: connections woken after this one may go.
    pub(crate) fn done(&self) {
        self.pass_if_held(self.ticket.load(Ordering::Acquire));
    }
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.take_ticket();
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// A connection task's future, polled with its [`Turn`] as the waker.
    pub(crate) struct Sequenced<F> {
        #[pin]
        fut: F,
        turn: Option<(Arc<Turn>, Waker)>,
    }

    impl<F> PinnedDrop for Sequenced<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((turn, _)) = &this.turn {
                let t = turn.ticket.swap(CLOSED, Ordering::AcqRel);
                if t != 0 && t != CLOSED {
                    turn.arrivals.pass(t);
                }
            }
        }
    }
}

impl<F: Future> Sequenced<F> {
    /// `turn`: `None` on a one-thread runtime (the future is polled as it is).
    pub(crate) fn new(fut: F, turn: Option<Arc<Turn>>) -> Sequenced<F> {
        Sequenced {
            fut,
            turn: turn.map(|t| {
                let w = Waker::from(t.clone());
                (t, w)
            }),
        }
    }
}

impl<F: Future> Future for Sequenced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some((turn, waker)) = &*this.turn else {
            return this.fut.poll(cx);
        };
        // The ticket of the wake-up this poll answers (one taken during the poll is for
        // the next one).
        let held = turn.ticket.load(Ordering::Acquire);
        turn.task.register(cx.waker());
        let r = this.fut.poll(&mut Context::from_waker(waker));
        if r.is_pending() && !turn.waiting.load(Ordering::Acquire) {
            // Back to sleep without handing input to the core (or it did, and passed).
            turn.pass_if_held(held);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Waker {
        struct Noop;
        impl Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    fn poll_wait(turn: &Turn) -> bool {
        let w = noop();
        let mut cx = Context::from_waker(&w);
        let mut f = std::pin::pin!(turn.wait());
        f.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn later_wake_waits_for_the_earlier_one() {
        let arrivals = Arrivals::new();
        let (b, a) = (arrivals.turn(), arrivals.turn());
        Waker::from(b.clone()).wake_by_ref();
        Waker::from(a.clone()).wake_by_ref();
        // A (woken second) runs first: it must wait for B.
        assert!(!poll_wait(&a));
        assert!(poll_wait(&b));
        b.done();
        assert!(poll_wait(&a));
        a.done();
        // Nothing held: no wait.
        assert!(poll_wait(&a));
    }

    #[test]
    fn early_passes_are_counted_in_order() {
        let arrivals = Arrivals::new();
        let turns: Vec<_> = (0..4).map(|_| arrivals.turn()).collect();
        for t in &turns {
            Waker::from(t.clone()).wake_by_ref();
        }
        turns[2].done();
        turns[1].done();
        assert!(!poll_wait(&turns[3]));
        turns[0].done();
        assert!(poll_wait(&turns[3]));
    }

    #[test]
    fn a_sleeping_or_dropped_task_passes_its_ticket() {
        let arrivals = Arrivals::new();
        let later = arrivals.turn();
        // A task woken, polled, and asleep again without input: its ticket is passed.
        let first = arrivals.turn();
        let mut sleeper = Box::pin(Sequenced::new(
            std::future::pending::<()>(),
            Some(first.clone()),
        ));
        Waker::from(first.clone()).wake_by_ref();
        Waker::from(later.clone()).wake_by_ref();
        let w = noop();
        let mut cx = Context::from_waker(&w);
        assert!(sleeper.as_mut().poll(&mut cx).is_pending());
        assert!(poll_wait(&later));
        later.done();
        // Woken again, then dropped before it is polled.
        Waker::from(first.clone()).wake_by_ref();
        Waker::from(later.clone()).wake_by_ref();
        assert!(!poll_wait(&later));
        drop(sleeper);
        assert!(poll_wait(&later));
        // Gone: a late wake-up (the driver still holds the waker) takes no ticket.
        later.done();
        Waker::from(first).wake_by_ref();
        Waker::from(later.clone()).wake_by_ref();
        assert!(poll_wait(&later));
    }
}
