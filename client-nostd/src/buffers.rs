//! All the memory a client uses, in one caller-owned value sized by const generics.
//!
//! [`Buffers::split`] hands out slices: the in-flight store and topic-alias table go to
//! the [`crate::Session`] ([`Storage`]), the receive and transmit buffers to the
//! [`crate::Runner`] ([`Io`]). The code only sees slices, so choosing other sizes does
//! not instantiate the protocol code again.

/// Bytes of one topic-alias entry: a length byte and a topic of up to 63 bytes. Longer
/// topics are never aliased.
pub const ALIAS_SLOT: usize = 64;

/// Where one in-flight slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// Empty.
    Free,
    /// Waiting to be sent (never sent, or sent on a connection whose session is gone).
    Queued,
    /// Waiting to be re-sent with DUP on a resumed session.
    QueuedDup,
    /// Sent; waiting for PUBACK/PUBREC (publish) or SUBACK/UNSUBACK.
    AwaitAck,
    /// PUBREC received; PUBREL to be sent.
    Rel,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitComp,
    /// Finished without an acknowledgement to report it (e.g. too large for the
    /// broker); [`crate::Session::poll_event`] reports the reason code and frees it.
    Done(u8),
}

/// Book-keeping of one in-flight slot; the packet itself lives in the slot's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotMeta {
    /// Order of first submission (wrapping), for re-sending in the original order.
    pub(crate) seq: u32,
    /// Packet identifier (0 for QoS 0).
    pub(crate) pid: u16,
    /// Bytes of the encoded packet in the slot.
    pub(crate) len: u16,
    pub(crate) state: SlotState,
}

impl SlotMeta {
    pub(crate) const FREE: SlotMeta = SlotMeta {
        seq: 0,
        pid: 0,
        len: 0,
        state: SlotState::Free,
    };
}

/// Storage for one client.
///
/// - `RX`: receive buffer. Must hold the largest packet the broker sends (a PUBLISH to
///   a subscription: 2–5 header bytes + 2 + topic + 2 + properties + payload; at least
///   a CONNACK, so 64 is the floor for MQTT 5). MQTT 5 brokers are told this size as
///   Maximum Packet Size and drop larger messages; a 3.1.1 broker that sends one gets
///   its connection closed ([`crate::CloseReason::Protocol`]).
/// - `TX`: transmit buffer. Must hold the CONNECT (about 14 bytes + client id + will +
///   credentials, + ~20 bytes of MQTT 5 properties) and the largest PUBLISH, SUBSCRIBE or
///   UNSUBSCRIBE plus 4 bytes (a topic alias may be added). Several packets are batched
///   into it when they fit.
/// - `N`: in-flight slots: QoS 1/2 publishes not yet acknowledged, QoS 0 publishes not
///   yet transmitted, and subscribe/unsubscribe requests not yet acknowledged.
/// - `SLOT`: bytes of each slot: the largest encoded PUBLISH/SUBSCRIBE (for a PUBLISH: 2
///   (3 over 127 bytes) + 2 + topic + 2 + payload, + in MQTT 5: 1 + 27 for the event
///   content type + 5 for a message expiry). A [`crate::SensorEvent`] on a 16-byte topic
///   fits in 96 bytes.
/// - `ALIASES`: MQTT 5 topic aliases the client may use (each [`ALIAS_SLOT`] bytes); the
///   broker's Topic Alias Maximum caps the number in use. 0 turns aliases off.
///
/// RAM is `RX + TX + N * (SLOT + 12) + ALIASES * 64` bytes plus the [`crate::Session`].
#[derive(Debug)]
pub struct Buffers<
    const RX: usize = 1024,
    const TX: usize = 1024,
    const N: usize = 8,
    const SLOT: usize = 256,
    const ALIASES: usize = 2,
> {
    rx: [u8; RX],
    tx: [u8; TX],
    slots: [[u8; SLOT]; N],
    meta: [SlotMeta; N],
    aliases: [[u8; ALIAS_SLOT]; ALIASES],
}

impl<const RX: usize, const TX: usize, const N: usize, const SLOT: usize, const ALIASES: usize>
    Buffers<RX, TX, N, SLOT, ALIASES>
{
    /// Zeroed buffers; `const`, so they can live in a `static` or a `StaticCell`.
    pub const fn new() -> Self {
        Buffers {
            rx: [0; RX],
            tx: [0; TX],
            slots: [[0; SLOT]; N],
            meta: [SlotMeta::FREE; N],
            aliases: [[0; ALIAS_SLOT]; ALIASES],
        }
    }

    /// The session's part and the runner's part.
    pub fn split(&mut self) -> (Storage<'_>, Io<'_>) {
        let storage = Storage {
            meta: &mut self.meta,
            slots: self.slots.as_flattened_mut(),
            slot_size: SLOT,
            aliases: self.aliases.as_flattened_mut(),
            rx_capacity: RX,
            tx_capacity: TX,
        };
        let io = Io {
            rx: &mut self.rx,
            tx: &mut self.tx,
        };
        (storage, io)
    }
}

impl<const RX: usize, const TX: usize, const N: usize, const SLOT: usize, const ALIASES: usize>
    Default for Buffers<RX, TX, N, SLOT, ALIASES>
{
    fn default() -> Self {
        Self::new()
    }
}

/// The session's memory: in-flight slots and the topic-alias table.
#[derive(Debug)]
pub struct Storage<'b> {
    pub(crate) meta: &'b mut [SlotMeta],
    pub(crate) slots: &'b mut [u8],
    pub(crate) slot_size: usize,
    pub(crate) aliases: &'b mut [u8],
    pub(crate) rx_capacity: usize,
    pub(crate) tx_capacity: usize,
}

/// The runner's memory: receive and transmit buffers.
#[derive(Debug)]
pub struct Io<'b> {
    /// Receive buffer.
    pub rx: &'b mut [u8],
    /// Transmit buffer.
    pub tx: &'b mut [u8],
}
