//! What the four size firmwares share, so that subtracting the baseline leaves only the
//! MQTT client:
//!
//! - [`Broker`]: a fake MQTT 5 broker in memory. It reads the frames a client writes and
//!   queues the answers a real broker would give: CONNACK to CONNECT, SUBACK (granted
//!   QoS 1) to SUBSCRIBE, PUBACK to a QoS 1 PUBLISH followed by one QoS 0 PUBLISH of
//!   [`PAYLOAD`] on [`SUB_TOPIC`], PINGRESP to PINGREQ. Packet identifiers are echoed, so
//!   it works whatever ids a client picks.
//! - [`Pipe`]: the transport, `embedded_io_async::{Read, Write}` (0.7) over a `&mut Broker`.
//!   A read with nothing queued stays pending.
//! - [`block_on`]: the executor, a poll loop with a no-op waker (bounded, so a stuck job
//!   ends instead of hanging).
//! - An `embassy-time` driver whose clock stands still (`now()` is an opaque 0): no
//!   keepalive or timeout fires, and the optimiser cannot fold the time checks away.
//! - [`finish`]: exits QEMU through semihosting (status 0 when the job completed).
//! - With feature `probe`: [`report`] prints a size over semihosting.
#![no_std]

#[cfg(feature = "probe")]
use cortex_m as _;

use core::future::{poll_fn, Future};
use core::hint::black_box;
use core::panic::PanicInfo;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use cortex_m_semihosting::debug;
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};

/// The client identifier every firmware connects with.
pub const CLIENT_ID: &str = "dev-0001";
/// The topic every firmware subscribes to (and the fake broker publishes on).
pub const SUB_TOPIC: &str = "mote/cmd";
/// The topic every firmware publishes to.
pub const PUB_TOPIC: &str = "mote/data";
/// The 16-byte payload, both ways.
pub const PAYLOAD: [u8; 16] = *b"0123456789abcdef";

/// A fake MQTT 5 broker for one client (see the crate docs).
#[derive(Debug)]
pub struct Broker {
    /// Bytes the client wrote that do not yet make a whole frame.
    rx: [u8; 128],
    rx_len: usize,
    /// Bytes queued for the client to read: `tx[tx_pos..tx_len]`.
    tx: [u8; 128],
    tx_pos: usize,
    tx_len: usize,
    /// Frames received from the client, by packet type (index = type).
    pub seen: [u8; 16],
}

impl Broker {
    /// A broker with nothing queued.
    pub const fn new() -> Self {
        Broker {
            rx: [0; 128],
            rx_len: 0,
            tx: [0; 128],
            tx_pos: 0,
            tx_len: 0,
            seen: [0; 16],
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.tx_pos == self.tx_len {
            self.tx_pos = 0;
            self.tx_len = 0;
        }
        if let Some(dst) = self.tx.get_mut(self.tx_len..self.tx_len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.tx_len += bytes.len();
        }
    }

    /// Answers one whole frame from the client (`first` byte, `body` after the header).
    fn on_frame(&mut self, first: u8, body: &[u8]) {
        let ty = first >> 4;
        if let Some(n) = self.seen.get_mut(usize::from(ty)) {
            *n = n.saturating_add(1);
        }
        let id = |at: usize| {
            [
                body.get(at).copied().unwrap_or(0),
                body.get(at + 1).copied().unwrap_or(0),
            ]
        };
        match ty {
            // CONNECT -> CONNACK, no session, success, no properties.
            1 => self.queue(&[0x20, 0x03, 0x00, 0x00, 0x00]),
            // PUBLISH: QoS 1 -> PUBACK, then deliver one message on the subscribed topic.
            3 => {
                let qos = (first >> 1) & 3;
                if qos == 1 {
                    let topic_len = usize::from(u16::from_be_bytes(id(0)));
                    let [hi, lo] = id(2 + topic_len);
                    self.queue(&[0x40, 0x02, hi, lo]);
                }
                let mut m = [0u8; 2 + 2 + SUB_TOPIC.len() + 1 + PAYLOAD.len()];
                m[0] = 0x30;
                m[1] = (m.len() - 2) as u8;
                m[3] = SUB_TOPIC.len() as u8;
                m[4..4 + SUB_TOPIC.len()].copy_from_slice(SUB_TOPIC.as_bytes());
                m[5 + SUB_TOPIC.len()..].copy_from_slice(&PAYLOAD);
                self.queue(&m);
            }
            // SUBSCRIBE -> SUBACK granting QoS 1.
            8 => {
                let [hi, lo] = id(0);
                self.queue(&[0x90, 0x04, hi, lo, 0x00, 0x01]);
            }
            // PINGREQ -> PINGRESP.
            12 => self.queue(&[0xD0, 0x00]),
            _ => {}
        }
    }

    /// Takes bytes written by the client; answers every whole frame.
    fn absorb(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(self.rx.len() - self.rx_len);
        self.rx[self.rx_len..self.rx_len + n].copy_from_slice(&buf[..n]);
        self.rx_len += n;
        loop {
            // Fixed header: type byte and a variable byte integer.
            let mut rem = 0usize;
            let mut hdr = 1;
            let mut whole = false;
            while let Some(&b) = self.rx.get(hdr).filter(|_| hdr < self.rx_len && hdr < 5) {
                rem |= usize::from(b & 0x7F) << (7 * (hdr - 1));
                hdr += 1;
                if b & 0x80 == 0 {
                    whole = true;
                    break;
                }
            }
            let end = hdr + rem;
            if !whole || end > self.rx_len {
                return n;
            }
            let mut frame = [0u8; 128];
            frame[..end].copy_from_slice(&self.rx[..end]);
            self.on_frame(frame[0], &frame[hdr..end]);
            self.rx.copy_within(end..self.rx_len, 0);
            self.rx_len -= end;
        }
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

/// The transport: a byte stream to the fake broker.
#[derive(Debug)]
pub struct Pipe<'a>(pub &'a mut Broker);

impl ErrorType for Pipe<'_> {
    type Error = ErrorKind;
}

impl Read for Pipe<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        poll_fn(|_| {
            let b = &mut *self.0;
            let avail = b.tx_len - b.tx_pos;
            if avail == 0 {
                return Poll::Pending;
            }
            let n = avail.min(buf.len());
            buf[..n].copy_from_slice(&b.tx[b.tx_pos..b.tx_pos + n]);
            b.tx_pos += n;
            Poll::Ready(Ok(n))
        })
        .await
    }
}

impl Write for Pipe<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        match self.0.absorb(buf) {
            0 if !buf.is_empty() => Err(ErrorKind::OutOfMemory),
            n => Ok(n),
        }
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

/// Polls `f` with a no-op waker until it completes; `None` after too many polls.
pub fn block_on<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..black_box(100_000u32) {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

/// The clock of the time driver (touched by every firmware, so the driver is in the
/// baseline too).
pub fn clock_now() -> u64 {
    embassy_time_driver::now()
}

struct StillClock;

impl embassy_time_driver::Driver for StillClock {
    fn now(&self) -> u64 {
        black_box(0)
    }
    fn schedule_wake(&self, at: u64, waker: &Waker) {
        black_box((at, waker));
    }
}

embassy_time_driver::time_driver_impl!(static DRIVER: StillClock = StillClock);

/// Ends the run: semihosting exit with status 0 when `ok` (QEMU exits), then halts.
pub fn finish(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    finish(false)
}

/// Prints `name = bytes` over semihosting (feature `probe` only).
#[cfg(feature = "probe")]
pub fn report(name: &str, bytes: usize) {
    cortex_m_semihosting::hprintln!("{} = {}", name, bytes);
}

/// Prints how many frames of each type the client sent (feature `probe`).
#[cfg(feature = "probe")]
pub fn report_frames(b: &Broker) {
    const NAMES: [&str; 16] = [
        "?",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    for (name, n) in NAMES.iter().zip(b.seen) {
        if n > 0 {
            cortex_m_semihosting::hprintln!("  sent {} x{}", name, n);
        }
    }
}

/// Prints the frames the client sent (feature `probe`); nothing otherwise.
#[macro_export]
macro_rules! probe_frames {
    ($broker:expr) => {
        #[cfg(feature = "probe")]
        $crate::report_frames($broker);
    };
}

/// Prints `size_of::<T>()` under `name` (feature `probe`); nothing otherwise.
#[macro_export]
macro_rules! probe_type {
    ($name:expr, $t:ty) => {
        #[cfg(feature = "probe")]
        $crate::report($name, core::mem::size_of::<$t>());
    };
}

/// Prints `size_of_val(v)` under `name` (feature `probe`); nothing otherwise.
#[macro_export]
macro_rules! probe_val {
    ($name:expr, $v:expr) => {
        #[cfg(feature = "probe")]
        $crate::report($name, core::mem::size_of_val($v));
    };
}
