//! Connections with nothing to do, held without a task each (issue #15: "an idle
//! connection costs ≤ 1 KiB").
//!
//! A TCP connection that has been quiet for a while, with nothing buffered or held,
//! leaves its task: its task ends, its socket leaves tokio's reactor, and what is left of
//! it (a [`Sleeper`]: the socket, its session's names, its keep-alive deadline) waits
//! here in a slab. One task, the [`Dozer`]'s, waits for all of them on three things:
//! - their sockets, registered with an epoll instance of its own (`mio`), itself
//!   watched by tokio: input, a hang-up or an error;
//! - their signals (`runtime/table.rs`): the core has deliveries or a kick for one, or
//!   the table evicted one; the signal hands the connection's token to [`Ready`];
//! - their keep-alive deadlines, in one ordered set.
//!
//! Whichever comes first, the connection goes back into a task of its own, which sees
//! why as its packet loop would (a read, a wake-up, an expired deadline). At shutdown
//! every dozing connection is sent back to a task, which then closes it, and nothing
//! dozes from then on.
//!
//! A dozing connection costs its slab entry and its `Sleeper`'s box: no task (1,280
//! bytes, aligned to 128), no tokio registration (256 bytes, likewise), no timer.

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use mio::unix::SourceFd;
use mio::{Events, Interest, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Socket events taken from the dozer's epoll instance at a time.
const EVENTS: usize = 256;

/// A connection that can doze: what the dozer needs of it.
pub(crate) trait Sleeper: Send + Sized + 'static {
    /// Its socket (registered for readiness while it dozes).
    fn fd(&self) -> RawFd;
    /// When it must be looked at even if nothing happens (its keep-alive); it must not
    /// change while it dozes.
    fn deadline(&self) -> Option<Instant>;
    /// It dozes under `token`: from now on its signal hands `token` to `ready` (and does
    /// so at once if it was raised meanwhile). Called under the dozer's lock.
    fn dozing(&self, ready: &Arc<Ready>, token: u64);
    /// Back to a task of its own, spawned on `tracker`, which may later hand it to
    /// `dozer` again; `shutdown` is the broker's.
    fn resume(
        self: Box<Self>,
        dozer: &Arc<Dozer<Self>>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        why: Wakeup,
    );
}

/// Why a dozing connection goes back to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// Its socket is readable (input, or a hang-up): the input is to be served before
    /// the dozer's task returns (see [`serve_first`]).
    Input,
    /// Its signal, its deadline, shutdown, or it could not doze: a task is spawned.
    Other,
}

/// Connections whose input one turn of the dozer serves itself ([`Wakeup::Input`]); the
/// rest of a larger burst get tasks spawned, as signals do.
const SERVED_PER_TURN: usize = 64;

/// Polls a resumed connection's task once, here in the dozer's task, and spawns it only
/// if it goes on. So its input reaches the core now, ahead of the tasks woken after the
/// dozer's: one worker thread runs tasks in the order they were woken, the dozer was
/// woken by the input that came first, and a task it spawned would run after all of
/// them (a publisher awake and idle would overtake a subscriber that dozed, every time).
///
/// That poll needs no waker: the spawned task polls the future again at once, which
/// registers the task's waker wherever the future waits (a future answers to the waker
/// of its latest poll). A panic in it ends this connection only, as it would end its
/// task.
pub(crate) fn serve_first<F>(task: F, tracker: &TaskTracker)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    let first =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx)));
    match first {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => {
            tracker.spawn(task);
        }
        Err(_) => tracing::error!("a woken dozing connection's task panicked; it is closed"),
    }
}

/// Tokens of dozing connections whose signal was raised, for the dozer's task.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    tokens: Mutex<Vec<u64>>,
    /// A deadline earlier than the dozer's timer was added.
    rearm: AtomicBool,
    task: AtomicWaker,
}

impl Ready {
    fn lock(&self) -> MutexGuard<'_, Vec<u64>> {
        // A push cannot panic halfway.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection dozing under `token` is wanted.
    pub(crate) fn push(&self, token: u64) {
        self.lock().push(token);
        self.task.wake();
    }

    /// The tokens pushed and not taken yet (tests).
    #[cfg(test)]
    pub(crate) fn tokens(&self) -> Vec<u64> {
        self.lock().clone()
    }

    /// Whether no token waits (tests).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Waits until a token was pushed or the timer must be re-armed; the tokens go to
    /// `into`.
    fn wait<'a>(&'a self, into: &'a mut Vec<u64>) -> impl std::future::Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            let mut take = || {
                into.append(&mut self.lock());
                self.rearm.swap(false, Ordering::AcqRel) || !into.is_empty()
            };
            if take() {
                return Poll::Ready(());
            }
            self.task.register(cx.waker());
            if take() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// One place in the slab.
#[derive(Debug)]
struct Entry<T> {
    /// Bumped when the place is reused, so a stale token finds nothing.
    generation: u32,
    item: Option<Box<T>>,
}

/// The dozer's state, under one lock.
#[derive(Debug)]
struct State<T> {
    entries: Vec<Entry<T>>,
    /// Free places in `entries`.
    free: Vec<u32>,
    /// Deadlines of dozing connections, with their tokens.
    timers: BTreeSet<(Instant, u64)>,
    /// Shut down: nothing dozes any more.
    closed: bool,
}

/// Connections with nothing to do, and the one task that waits for them (module docs).
#[derive(Debug)]
pub(crate) struct Dozer<T> {
    state: Mutex<State<T>>,
    ready: Arc<Ready>,
    /// Where sockets are registered (the epoll instance [`Dozer::run`] polls).
    registry: Registry,
    /// The broker's shutdown, for the tasks connections go back to.
    shutdown: CancellationToken,
}

/// A token: the slab place in the low 32 bits, its generation above.
fn token(index: u32, generation: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(index)
}

impl<T: Sleeper> Dozer<T> {
    /// A dozer until `shutdown`, and the epoll instance to hand to [`Dozer::run`].
    ///
    /// # Errors
    /// When no epoll instance can be made.
    pub(crate) fn new(shutdown: CancellationToken) -> std::io::Result<(Arc<Dozer<T>>, mio::Poll)> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let dozer = Arc::new(Dozer {
            state: Mutex::new(State {
                entries: Vec::new(),
                free: Vec::new(),
                timers: BTreeSet::new(),
                closed: false,
            }),
            ready: Arc::default(),
            registry,
            shutdown,
        });
        Ok((dozer, poll))
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing under this lock panics halfway (slab and set operations).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many connections doze.
    #[cfg(test)]
    fn dozing(&self) -> usize {
        let s = self.lock();
        s.entries.len() - s.free.len()
    }

    /// Lets `item` doze until its socket, its signal or its deadline needs it. After
    /// shutdown, or if its socket cannot be registered, it goes back to a task at once.
    pub(crate) fn park(self: &Arc<Self>, item: Box<T>, tracker: &TaskTracker) {
        if let Err(item) = self.try_park(item) {
            item.resume(self, tracker, &self.shutdown, Wakeup::Other);
        }
    }

    /// [`Dozer::park`]; `Err` gives the item back when it cannot doze.
    fn try_park(&self, item: Box<T>) -> Result<(), Box<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(item);
        }
        let index = match s.free.pop() {
            Some(i) => i,
            None => {
                let Ok(i) = u32::try_from(s.entries.len()) else {
                    return Err(item);
                };
                s.entries.push(Entry {
                    generation: 0,
                    item: None,
                });
                i
            }
        };
        let e = &mut s.entries[index as usize];
        e.generation = e.generation.wrapping_add(1);
        let tok = token(index, e.generation);
        let fd = item.fd();
        // 64-bit targets carry the whole token; elsewhere a stale generation could
        // wake a newer connection once for nothing.
        let registered =
            self.registry
                .register(&mut SourceFd(&fd), Token(tok as usize), Interest::READABLE);
        if let Err(e) = registered {
            tracing::warn!(error = %e, "cannot watch a dozing connection; it stays in its task");
            s.free.push(index);
            return Err(item);
        }
        if let Some(at) = item.deadline() {
            if s.timers.first().map_or(true, |&(first, _)| at < first) {
                self.ready.rearm.store(true, Ordering::Release);
                self.ready.task.wake();
            }
            s.timers.insert((at, tok));
        }
        item.dozing(&self.ready, tok);
        s.entries[index as usize].item = Some(item);
        Ok(())
    }

    /// Takes the connection dozing under `tok` out of the slab (`None`: it is not
    /// there any more, or the token is stale).
    fn take(&self, s: &mut State<T>, tok: u64) -> Option<Box<T>> {
        let index = (tok & u64::from(u32::MAX)) as u32;
        let e = s.entries.get_mut(index as usize)?;
        if token(index, e.generation) as usize != tok as usize {
            return None;
        }
        let item = e.item.take()?;
        s.free.push(index);
        if let Some(at) = item.deadline() {
            s.timers.remove(&(at, tok));
        }
        let fd = item.fd();
        // The socket may be closed by now only if the item was dropped, which it was
        // not: it is in hand. An error leaves a stale registration that wakes nothing.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        Some(item)
    }

    /// Sends the connections of `tokens` back to their tasks; `why` for the first
    /// [`SERVED_PER_TURN`], [`Wakeup::Other`] for the rest.
    fn wake(
        self: &Arc<Self>,
        tokens: impl IntoIterator<Item = u64>,
        tracker: &TaskTracker,
        why: Wakeup,
    ) {
        let items: Vec<Box<T>> = {
            let mut s = self.lock();
            tokens
                .into_iter()
                .filter_map(|t| self.take(&mut s, t))
                .collect()
        };
        for (i, item) in items.into_iter().enumerate() {
            let why = if i < SERVED_PER_TURN {
                why
            } else {
                Wakeup::Other
            };
            item.resume(self, tracker, &self.shutdown, why);
        }
    }

    /// The dozer's task: waits for the sockets, the signals and the deadlines of the
    /// dozing connections until shutdown, then sends every one back to a task of its
    /// own, spawned on `tracker`.
    pub(crate) async fn run(self: Arc<Self>, poll: mio::Poll, tracker: TaskTracker) {
        // SAFETY: `register_with_interest` asks that the descriptor `as_raw_fd` returns
        // be open, and the same one, for as long as the `AsyncFd` owns `poll`. It is the
        // epoll instance `mio::Poll` owns: opened when `poll` was made, closed only when
        // `poll` is dropped (which the `AsyncFd` does after deregistering it), and
        // `as_raw_fd` always returns that one field.
        #[allow(unsafe_code)]
        let registered =
            unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
        match registered {
            Ok(mut poll) => self.watch(&mut poll, &tracker).await,
            Err(e) => tracing::error!(error = %e, "cannot watch dozing connections"),
        }
        let items: Vec<Box<T>> = {
            let mut s = self.lock();
            s.closed = true;
            let tokens: Vec<u64> = s
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.item.is_some())
                .map(|(i, e)| token(i as u32, e.generation))
                .collect();
            tokens
                .into_iter()
                .filter_map(|t| self.take(&mut s, t))
                .collect()
        };
        for item in items {
            item.resume(&self, &tracker, &self.shutdown, Wakeup::Other);
        }
    }

    /// [`Dozer::run`] until shutdown (or a failed epoll instance).
    async fn watch(self: &Arc<Self>, poll: &mut AsyncFd<mio::Poll>, tracker: &TaskTracker) {
        let mut events = Events::with_capacity(EVENTS);
        let mut tokens = Vec::new();
        loop {
            let next = self.lock().timers.first().map(|&(at, _)| at);
            let timer = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = poll.readable_mut() => {
                    let mut guard = match r {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::error!(error = %e, "dozing connections: epoll failed");
                            return;
                        }
                    };
                    match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "dozing connections: epoll failed");
                            return;
                        }
                    }
                    if events.iter().count() < EVENTS {
                        // Drained: the next event makes the instance readable again.
                        guard.clear_ready();
                    }
                    let woken = events.iter().map(|e| e.token().0 as u64);
                    self.wake(woken, tracker, Wakeup::Input);
                }
                () = self.ready.wait(&mut tokens) => {
                    self.wake(tokens.drain(..), tracker, Wakeup::Other);
                }
                () = timer => {
                    let now = Instant::now();
                    let due: Vec<u64> = {
                        let s = self.lock();
                        s.timers.iter().take_while(|&&(at, _)| at <= now).map(|&(_, t)| t).collect()
                    };
                    self.wake(due, tracker, Wakeup::Other);
                }
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use tokio::sync::mpsc;

    /// Where a test socket's signal would hand its token (set by `dozing`).
    type TokenSlot = Arc<Mutex<Option<(Arc<Ready>, u64)>>>;

    /// A dozing socket that reports its resumption.
    #[derive(Debug)]
    struct Sock {
        name: &'static str,
        stream: std::net::TcpStream,
        deadline: Option<Instant>,
        token: TokenSlot,
        resumed: mpsc::UnboundedSender<(&'static str, bool)>,
    }

    impl Sleeper for Sock {
        fn fd(&self) -> RawFd {
            self.stream.as_raw_fd()
        }
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn dozing(&self, ready: &Arc<Ready>, token: u64) {
            *self.token.lock().unwrap() = Some((ready.clone(), token));
        }
        fn resume(
            self: Box<Self>,
            _: &Arc<Dozer<Self>>,
            _: &TaskTracker,
            shutdown: &CancellationToken,
            _: Wakeup,
        ) {
            let _ = self.resumed.send((self.name, shutdown.is_cancelled()));
        }
    }

    /// A connected pair: the server side (nonblocking, as a tokio socket's is) and the
    /// client side.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    struct Harness {
        dozer: Arc<Dozer<Sock>>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        resumed: mpsc::UnboundedReceiver<(&'static str, bool)>,
        tx: mpsc::UnboundedSender<(&'static str, bool)>,
    }

    impl Harness {
        fn start() -> Harness {
            let shutdown = CancellationToken::new();
            let (dozer, poll) = Dozer::new(shutdown.clone()).unwrap();
            let tracker = TaskTracker::new();
            tracker.spawn(dozer.clone().run(poll, tracker.clone()));
            let (tx, resumed) = mpsc::unbounded_channel();
            Harness {
                dozer,
                tracker,
                shutdown,
                resumed,
                tx,
            }
        }

        /// Parks a socket; returns where its signal would hand its token.
        fn park(
            &self,
            name: &'static str,
            stream: std::net::TcpStream,
            deadline: Option<Instant>,
        ) -> TokenSlot {
            let token = Arc::new(Mutex::new(None));
            let sock = Sock {
                name,
                stream,
                deadline,
                token: token.clone(),
                resumed: self.tx.clone(),
            };
            self.dozer.park(Box::new(sock), &self.tracker);
            token
        }

        async fn next(&mut self) -> (&'static str, bool) {
            tokio::time::timeout(Duration::from_secs(5), self.resumed.recv())
                .await
                .unwrap()
                .unwrap()
        }

        /// Nothing resumes within a moment.
        async fn quiet(&mut self) {
            let r = tokio::time::timeout(Duration::from_millis(150), self.resumed.recv()).await;
            assert!(r.is_err(), "resumed: {r:?}");
        }
    }

    /// Input, a raised signal and a deadline each bring back exactly the connection
    /// they concern, once; a stale token (its place reused since) brings back nothing.
    #[tokio::test]
    async fn input_signal_and_deadline_each_resume_their_connection_once() {
        let mut h = Harness::start();
        let (a, mut a_client) = pair();
        let (b, _b_client) = pair();
        let (c, _c_client) = pair();
        h.park("a", a, None);
        let b_token = h.park("b", b, None);
        h.park("c", c, Some(Instant::now() + Duration::from_millis(300)));
        assert_eq!(h.dozer.dozing(), 3);
        h.quiet().await;

        a_client.write_all(b"x").unwrap();
        assert_eq!(h.next().await, ("a", false));
        let (ready, token) = b_token.lock().unwrap().clone().unwrap();
        ready.push(token);
        assert_eq!(h.next().await, ("b", false));
        assert_eq!(h.next().await, ("c", false));
        assert_eq!(h.dozer.dozing(), 0);

        // b's place is reused; its old token must not wake the newcomer.
        let (d, _d_client) = pair();
        let d_token = h.park("d", d, None);
        let (_, new_token) = d_token.lock().unwrap().clone().unwrap();
        assert_ne!(new_token, token);
        ready.push(token);
        h.quiet().await;
        assert_eq!(h.dozer.dozing(), 1);
        h.shutdown.cancel();
        assert_eq!(h.next().await, ("d", true));
    }

    /// A hang-up is input too: the connection goes back to its task, which reads the end.
    #[tokio::test]
    async fn a_closed_socket_resumes() {
        let mut h = Harness::start();
        let (a, a_client) = pair();
        h.park("a", a, None);
        h.quiet().await;
        drop(a_client);
        assert_eq!(h.next().await, ("a", false));
    }

    /// A socket with input already waiting when it is parked resumes at once (epoll
    /// reports what is ready at registration). A signal raised before the doze is the
    /// signal's part (`runtime/table.rs`).
    #[tokio::test]
    async fn what_came_before_the_doze_is_not_lost() {
        let mut h = Harness::start();
        let (a, mut a_client) = pair();
        a_client.write_all(b"early").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        h.park("a", a, None);
        assert_eq!(h.next().await, ("a", false));
    }

    /// An earlier deadline re-arms the dozer's timer, which was set for a later one.
    #[tokio::test]
    async fn an_earlier_deadline_rearms_the_timer() {
        let mut h = Harness::start();
        let (late, _l) = pair();
        let (soon, _s) = pair();
        h.park("late", late, Some(Instant::now() + Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        h.park("soon", soon, Some(t0 + Duration::from_millis(100)));
        assert_eq!(h.next().await, ("soon", false));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(h.dozer.dozing(), 1);
    }

    /// At shutdown every dozing connection goes back to a task (which sees the
    /// shutdown), and one parked later does not doze at all.
    #[tokio::test]
    async fn shutdown_sends_every_connection_back_and_closes_the_dozer() {
        let mut h = Harness::start();
        let (a, _a) = pair();
        let (b, _b) = pair();
        h.park("a", a, None);
        h.park("b", b, Some(Instant::now() + Duration::from_secs(60)));
        h.shutdown.cancel();
        let mut names = vec![h.next().await.0, h.next().await.0];
        names.sort_unstable();
        assert_eq!(names, ["a", "b"]);
        h.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), h.tracker.wait())
            .await
            .unwrap();
        let (c, _c) = pair();
        h.park("c", c, None);
        assert_eq!(h.next().await, ("c", true));
        assert_eq!(h.dozer.dozing(), 0);
    }

    #[tokio::test]
    async fn serve_first_polls_once_in_place_and_spawns_what_goes_on() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let tracker = TaskTracker::new();
        let steps = Arc::new(AtomicUsize::new(0));
        // Done in its first poll: nothing is spawned.
        let s = steps.clone();
        serve_first(
            async move {
                s.fetch_add(1, SeqCst);
            },
            &tracker,
        );
        assert_eq!(steps.load(SeqCst), 1, "polled before serve_first returned");
        assert_eq!(tracker.len(), 0);
        // Waits after its first step: the rest runs in a task, woken through the waker
        // of the task's own poll (the first poll's waker did nothing).
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = steps.clone();
        serve_first(
            async move {
                s.fetch_add(1, SeqCst);
                let _ = rx.await;
                s.fetch_add(1, SeqCst);
            },
            &tracker,
        );
        assert_eq!(steps.load(SeqCst), 2);
        assert_eq!(tracker.len(), 1);
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        // A panic in the first poll ends that future only.
        serve_first(async { panic!("a connection's bug") }, &tracker);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
        assert_eq!(steps.load(SeqCst), 3);
    }
}
