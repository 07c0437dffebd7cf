//! `mote-client`: the MQTT 3.1.1 and 5.0 client that Mote devices run.
//!
//! - `#![no_std]`, no `alloc`, no `unsafe`. All memory is in one caller-owned
//!   [`Buffers`] value whose sizes are const generics (see its docs for how big each part
//!   must be); the code itself works on slices, so the sizes do not multiply the code.
//! - [`Session`] is the whole protocol as a sans-IO state machine in the style of
//!   `quinn-proto`: inputs through `handle_*` (bytes received, time passed, a transport
//!   that came up or went away), outputs through `poll_*` (bytes to transmit, the next
//!   timeout, events). It is deterministic and tested with virtual time.
//! - [`new`] splits a [`State`] into a [`Client`] handle (publish, subscribe, from any
//!   task) and a [`Runner`] that owns the transport, in the style of `embassy-net`'s
//!   `new() -> (Stack, Runner)`. The runner connects through a caller's [`Connect`],
//!   drives keepalive (PINGREQ; a missing PINGRESP closes the connection) and reconnects
//!   with exponential backoff. The transport is any `embedded_io_async::{Read, Write}`:
//!   an `embassy-net` `TcpSocket`, a UART, or a tokio socket through `FromTokio`.
//! - Messages survive reconnects: QoS 1/2 publishes stay in a bounded in-flight store
//!   until acknowledged. After a reconnect with Session Present = 1 they are re-sent
//!   with DUP set (and PUBREL re-sent for QoS 2 messages that got their PUBREC); with
//!   Session Present = 0 (the broker lost or discarded the session) unacknowledged
//!   publishes are re-sent as new publishes (DUP = 0), and QoS 2 messages that already
//!   got their PUBREC count as delivered, since the broker owned them from that point.
//! - [`SensorEvent`] is the schema devices publish, encoded with `postcard`
//!   (`docs/sensor-event.md` gives the byte layout).
//!
//! Features: `embassy` (`EmbassyClock`), `tokio` (default; `TokioClock`,
//! `FromTokio`; needs std). The codec is used without its `server` feature (a client
//! never decodes CONNECT, SUBSCRIBE or UNSUBSCRIBE).
//!
//! Size: in a Cortex-M3 firmware doing connect, subscribe, a QoS 1 publish and one
//! received message (`benches/size-clients`, opt-level "s", fat LTO) the client and
//! codec take about 17 KB of flash; the client's state is 280 bytes (the [`State`], with
//! the [`Session`], plus [`Runner`] and [`Client`]) besides the [`Buffers`] and the async
//! runner's future (about 380 bytes).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::std_instead_of_core)]

#[cfg(any(feature = "std", test))]
extern crate std;

mod buffers;
mod clock;
mod config;
mod error;
mod event;
mod runner;
mod session;
#[cfg(feature = "tokio")]
mod tokio_io;

pub use buffers::{Buffers, Io, Storage, ALIAS_SLOT};
pub use clock::Clock;
#[cfg(feature = "embassy")]
pub use clock::EmbassyClock;
#[cfg(feature = "tokio")]
pub use clock::TokioClock;
pub use config::{Config, Will};
pub use error::{CloseReason, Error};
pub use event::{SensorEvent, Value, CONTENT_TYPE};
pub use runner::{new, Client, Connect, ConnectFn, Runner, State};
pub use session::{Event, Incoming, Message, Received, Session, INBOUND_MAX};
#[cfg(feature = "tokio")]
pub use tokio_io::FromTokio;

/// The codec this client speaks through; its packet types appear in this API.
pub use mote_codec as codec;
pub use mote_codec::{Protocol, QoS, SubOptions, SubscribeFilter};
