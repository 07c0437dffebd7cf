//! The async half: a [`Client`] handle for application tasks and a [`Runner`] that owns
//! the transport, as `embassy-net` splits a `Stack` from its `Runner`.
//!
//! Both share a [`State`]: the [`Session`] behind a blocking mutex (held only for a few
//! synchronous session calls, never across an `.await`, and never while application
//! code runs, so it cannot be re-entered) plus two waker slots, one for the runner
//! (new requests to transmit) and one for client tasks (a slot freed, a connection made).
//! The runner is the only task that touches the transport and the receive/transmit
//! buffers; received messages are handed to its event callback as views into the receive
//! buffer, without copying.

use core::cell::RefCell;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;

use embassy_futures::select::{select, select3, Either, Either3};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::waitqueue::WakerRegistration;
use embedded_io_async::{Read, Write};
use mote_codec::{QoS, SubscribeFilter};

use crate::{Clock, Error, Event, Io, Message, Received, SensorEvent, Session};

/// How the runner gets a new transport: a TCP connect, a modem dial, a UART reset.
///
/// The transport may borrow the connector (an `embassy-net` `TcpSocket` kept in the
/// connector and re-connected each time, for example). Its `read` must be cancel-safe
/// (no data lost when the future is dropped before completing), as the reads of
/// `embassy-net` sockets and of `FromTokio` are: the runner stops waiting for
/// bytes when a timer fires or the application has something to send.
pub trait Connect {
    /// The byte stream to the broker.
    type Transport<'a>: Read + Write
    where
        Self: 'a;
    /// Why a connection attempt failed (the runner only retries).
    type Error;

    /// Opens a new transport to the broker.
    ///
    /// # Cancel safety
    /// Must be cancel-safe: the runner drops it after [`crate::Config::timeout_ms`].
    fn connect(&mut self) -> impl Future<Output = Result<Self::Transport<'_>, Self::Error>>;
}

/// A [`Connect`] from a closure returning a future of an owned transport.
#[derive(Debug, Clone)]
pub struct ConnectFn<F>(pub F);

impl<F, Fut, T, E> Connect for ConnectFn<F>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    T: Read + Write,
{
    type Transport<'a>
        = T
    where
        Self: 'a;
    type Error = E;

    fn connect(&mut self) -> impl Future<Output = Result<T, E>> {
        (self.0)()
    }
}

/// What the client handle and the runner share. Put it in a `StaticCell` on a device.
pub struct State<'b, M: RawMutex> {
    inner: Mutex<M, RefCell<Inner<'b>>>,
}

struct Inner<'b> {
    session: Session<'b>,
    /// The runner, waiting for bytes, a timer, or work.
    runner: WakerRegistration,
    /// A client task waiting for a slot, a connection, or idleness. One registration
    /// serves several tasks: registering a new waker wakes the previous one, which then
    /// registers again, so no wake-up is lost.
    clients: WakerRegistration,
    /// A client queued something for the runner to transmit.
    work: bool,
}

impl<'b, M: RawMutex> State<'b, M> {
    /// Shared state around `session`.
    pub fn new(session: Session<'b>) -> Self {
        State {
            inner: Mutex::new(RefCell::new(Inner {
                session,
                runner: WakerRegistration::new(),
                clients: WakerRegistration::new(),
                work: false,
            })),
        }
    }

    /// Runs `f` on the session under the lock. Keep `f` short; it must not call back
    /// into this state.
    pub fn with_session<R>(&self, f: impl FnOnce(&mut Session<'b>) -> R) -> R {
        self.with(|i| f(&mut i.session))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner<'b>) -> R) -> R {
        // Never re-entered: no code outside this module runs under the lock.
        self.inner.lock(|cell| f(&mut cell.borrow_mut()))
    }
}

impl<M: RawMutex> core::fmt::Debug for State<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("State")
    }
}

/// Splits `state` into the application's [`Client`] handle and the [`Runner`] that must
/// be run (spawned, or joined with the application) for anything to happen. `io` holds
/// the receive and transmit buffers (from [`crate::Buffers::split`], like the session's
/// storage).
pub fn new<'a, 'b, M: RawMutex, C: Clock>(
    state: &'a State<'b, M>,
    io: Io<'a>,
    clock: C,
) -> (Client<'a, 'b, M>, Runner<'a, 'b, M, C>) {
    (
        Client { state },
        Runner {
            state,
            rx: io.rx,
            tx: io.tx,
            clock,
        },
    )
}

/// The application's handle: cheap to copy, usable from any task on the same executor
/// (or any thread, with a thread-safe `RawMutex` such as `CriticalSectionRawMutex`).
pub struct Client<'a, 'b, M: RawMutex> {
    state: &'a State<'b, M>,
}

impl<M: RawMutex> Clone for Client<'_, '_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: RawMutex> Copy for Client<'_, '_, M> {}

impl<M: RawMutex> core::fmt::Debug for Client<'_, '_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Client")
    }
}

impl<'b, M: RawMutex> Client<'_, 'b, M> {
    /// Polls `f` on the session until it returns `Some`, sleeping between tries until
    /// the runner reports progress; then wakes the runner to transmit.
    async fn wait<R>(&self, mut f: impl FnMut(&mut Session<'b>) -> Option<R>) -> R {
        poll_fn(|cx| {
            self.state.with(|i| match f(&mut i.session) {
                Some(r) => {
                    i.work = true;
                    i.runner.wake();
                    Poll::Ready(r)
                }
                None => {
                    i.clients.register(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Retries a request while the in-flight store is full.
    async fn request(
        &self,
        mut f: impl FnMut(&mut Session<'b>) -> Result<u16, Error>,
    ) -> Result<u16, Error> {
        self.wait(|s| match f(s) {
            Err(Error::Full) => None,
            r => Some(r),
        })
        .await
    }

    /// Queues a publish, waiting while every in-flight slot is taken; returns its packet
    /// identifier (0 for QoS 0). QoS 1/2 messages are accepted while disconnected and
    /// delivered after reconnecting; completion is reported as [`Event::Published`]
    /// (or awaited with [`Client::flush`]).
    ///
    /// # Errors
    /// As [`Session::publish`], except that it waits instead of failing with
    /// [`Error::Full`].
    ///
    /// # Cancel safety
    /// Cancel-safe: the message is queued exactly when the future completes with `Ok`;
    /// dropping it earlier queues nothing.
    pub async fn publish(&self, msg: &Message<'_>) -> Result<u16, Error> {
        self.request(|s| s.publish(msg)).await
    }

    /// Queues a publish without waiting.
    ///
    /// # Errors
    /// As [`Session::publish`], including [`Error::Full`].
    pub fn try_publish(&self, msg: &Message<'_>) -> Result<u16, Error> {
        self.state.with(|i| {
            let r = i.session.publish(msg);
            if r.is_ok() {
                i.work = true;
                i.runner.wake();
            }
            r
        })
    }

    /// Publishes a [`SensorEvent`] on [`crate::Config::event_topic`] (see
    /// [`Session::publish_event`]), waiting for a free slot.
    ///
    /// # Errors
    /// As [`Client::publish`].
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`Client::publish`].
    pub async fn publish_event(&self, event: &SensorEvent, qos: QoS) -> Result<u16, Error> {
        self.request(|s| s.publish_event(event, qos)).await
    }

    /// Queues a SUBSCRIBE, waiting for a free slot; returns its packet identifier. The
    /// SUBACK arrives as [`Event::Subscribed`]; [`Client::flush`] waits for it.
    ///
    /// # Errors
    /// As [`Session::subscribe`].
    ///
    /// # Cancel safety
    /// Cancel-safe: queued exactly when it completes with `Ok`.
    pub async fn subscribe(&self, filters: &[SubscribeFilter<'_>]) -> Result<u16, Error> {
        self.request(|s| s.subscribe(filters)).await
    }

    /// Queues an UNSUBSCRIBE, waiting for a free slot; returns its packet identifier.
    ///
    /// # Errors
    /// As [`Session::unsubscribe`].
    ///
    /// # Cancel safety
    /// Cancel-safe: queued exactly when it completes with `Ok`.
    pub async fn unsubscribe(&self, filters: &[&str]) -> Result<u16, Error> {
        self.request(|s| s.unsubscribe(filters)).await
    }

    /// Waits until nothing is in flight: every QoS 0 publish transmitted, every QoS 1/2
    /// publish and (un)subscribe acknowledged, across reconnects if need be.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn flush(&self) {
        self.wait(|s| s.is_idle().then_some(())).await;
    }

    /// Waits until the client is connected (CONNACK accepted).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits.
    pub async fn wait_connected(&self) {
        self.wait(|s| s.is_connected().then_some(())).await;
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.state.with(|i| i.session.is_connected())
    }

    /// Asks the runner to send DISCONNECT and return from [`Runner::run`]. Messages not
    /// yet acknowledged stay in the store (call [`Client::flush`] first to wait for them).
    pub fn disconnect(&self) {
        self.state.with(|i| {
            i.session.disconnect();
            i.work = true;
            i.runner.wake();
        });
    }
}

/// Owns the transport and the I/O buffers; drives the session.
pub struct Runner<'a, 'b, M: RawMutex, C: Clock> {
    state: &'a State<'b, M>,
    rx: &'a mut [u8],
    tx: &'a mut [u8],
    clock: C,
}

impl<M: RawMutex, C: Clock> core::fmt::Debug for Runner<'_, '_, M, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Runner")
    }
}

impl<'b, M: RawMutex, C: Clock> Runner<'_, 'b, M, C> {
    /// Connects, serves the connection, and reconnects with exponential backoff
    /// ([`crate::Config::backoff_min_ms`] doubling up to `backoff_max_ms`, reset after
    /// each accepted CONNACK), until [`Client::disconnect`]. Every [`Event`] goes to
    /// `on_event`, which runs on the runner's task: keep it short (copy what you need,
    /// or signal another task); it may use the [`Client`]'s non-async methods.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] when the CONNECT or the automatic SUBSCRIBE cannot fit
    /// the transmit buffer: a configuration error. Network failures are retried.
    ///
    /// # Cancel safety
    /// Dropping the future drops the connection, nothing else: the in-flight store stays
    /// in the session, and calling `run` again resumes (re-sending unacknowledged
    /// messages after the next CONNACK).
    pub async fn run<K: Connect>(
        &mut self,
        connector: &mut K,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), Error> {
        let (min, max, timeout) = self.state.with(|i| {
            let c = i.session.config();
            (c.backoff_min_ms, c.backoff_max_ms, c.timeout_ms)
        });
        let mut backoff = min;
        loop {
            if self.state.with(|i| i.session.is_shut_down()) {
                return Ok(());
            }
            let give_up = self.clock.now().saturating_add(u64::from(timeout));
            let attempt = select(connector.connect(), self.clock.sleep_until(give_up)).await;
            if let Either::First(Ok(mut transport)) = attempt {
                if self.serve(&mut transport, &mut on_event).await? {
                    backoff = min;
                }
            }
            let until = self.clock.now().saturating_add(u64::from(backoff));
            while !self.state.with(|i| i.session.is_shut_down()) && self.clock.now() < until {
                // Requests wake us early only to notice a shutdown.
                select(self.clock.sleep_until(until), work(self.state)).await;
            }
            backoff = backoff.saturating_mul(2).min(max);
        }
    }

    /// Serves one connection until it ends; true when a CONNACK accepted it.
    async fn serve<T: Read + Write>(
        &mut self,
        t: &mut T,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<bool, Error> {
        let Runner {
            state,
            rx,
            tx,
            clock,
        } = self;
        let now = clock.now();
        state.with(|i| i.session.handle_connect(now));
        let mut len = 0;
        let mut accepted = false;
        loop {
            // Every whole frame in the receive buffer.
            let mut pos = 0;
            let mut busy = false;
            loop {
                let now = clock.now();
                let bytes = rx.get(pos..len).unwrap_or_default();
                match state.with(|i| i.session.handle_received(now, bytes)) {
                    Received::Frame { used, event } => {
                        if let Some(ev) = event {
                            accepted |= matches!(ev, Event::Connected { .. });
                            on_event(ev);
                        }
                        pos += used;
                    }
                    Received::Busy => {
                        busy = true;
                        break;
                    }
                    Received::Incomplete => break,
                }
            }
            rx.copy_within(pos..len, 0);
            len -= pos;

            // Everything due for transmission. The writes race the session's timers: a
            // transport that stops draining (a peer that no longer acknowledges: an
            // `embassy-net` socket's `flush` waits for the peer's ACK) must not stop the
            // CONNACK/PINGRESP timeouts, which are what notice a dead connection.
            let sent = {
                let mut send = pin!(transmit(state, &*clock, tx, &mut *t));
                loop {
                    let deadline = state.with(|i| i.session.poll_timeout());
                    let sleep = async {
                        match deadline {
                            Some(d) => clock.sleep_until(d).await,
                            None => core::future::pending().await,
                        }
                    };
                    match select(send.as_mut(), sleep).await {
                        Either::First(r) => break r?,
                        Either::Second(()) => {
                            let now = clock.now();
                            state.with(|i| i.session.handle_timeout(now));
                            // Timed out: the write in progress is abandoned with the
                            // connection (the close reason is already `Timeout`).
                            if state.with(|i| i.session.is_closed()) {
                                break true;
                            }
                        }
                    }
                }
            };
            if !sent {
                state.with(|i| i.session.handle_closed());
            }
            while let Some(ev) = state.with(|i| i.session.poll_event()) {
                on_event(ev);
            }
            state.with(|i| i.clients.wake());
            if state.with(|i| i.session.is_closed()) {
                return Ok(accepted);
            }
            if busy {
                continue;
            }

            // Wait for bytes, the next timer, or a request.
            let deadline = state.with(|i| i.session.poll_timeout());
            let Some(free) = rx.get_mut(len..).filter(|f| !f.is_empty()) else {
                // A whole buffer that is not a frame: `decode` refuses frames larger than
                // the buffer, so this cannot happen; close rather than spin.
                state.with(|i| i.session.handle_closed());
                continue;
            };
            let sleep = async {
                match deadline {
                    Some(d) => clock.sleep_until(d).await,
                    None => core::future::pending().await,
                }
            };
            match select3(t.read(free), sleep, work(state)).await {
                Either3::First(Ok(0) | Err(_)) => state.with(|i| i.session.handle_closed()),
                Either3::First(Ok(n)) => len += n,
                Either3::Second(()) => {
                    let now = clock.now();
                    state.with(|i| i.session.handle_timeout(now));
                }
                Either3::Third(()) => {}
            }
        }
    }
}

/// Writes everything the session has due, then flushes; `false` when the transport failed.
async fn transmit<M: RawMutex, C: Clock, T: Write>(
    state: &State<'_, M>,
    clock: &C,
    tx: &mut [u8],
    t: &mut T,
) -> Result<bool, Error> {
    loop {
        let now = clock.now();
        let n = state.with(|i| i.session.poll_transmit(now, tx))?;
        if n == 0 {
            break;
        }
        if t.write_all(tx.get(..n).unwrap_or_default()).await.is_err() {
            return Ok(false);
        }
    }
    Ok(t.flush().await.is_ok())
}

/// Completes when a client queued work for the runner.
async fn work<M: RawMutex>(state: &State<'_, M>) {
    poll_fn(|cx| {
        state.with(|i| {
            if core::mem::take(&mut i.work) {
                Poll::Ready(())
            } else {
                i.runner.register(cx.waker());
                Poll::Pending
            }
        })
    })
    .await
}
