//! The attacker of the mutation flood (`tests/flood.rs`, issue #14): hostile connections
//! and what they write.
//!
//! [`script`] is what one hostile connection writes, as chunks with a pause before each:
//! deterministic and without I/O, the same seed and connection number give the same
//! bytes, so a failing run is replayed with its printed seed. The bytes are valid packets
//! of MQTT 3.1.1 and 5.0 built with `mote_codec`, random bytes, and mutations of valid
//! packets (see [`Mutation`]); chunk boundaries fall anywhere, also inside a packet or
//! its fixed header. [`run`] opens the connections of a [`Plan`] and plays their scripts
//! against a broker, counting what happens in a [`Tally`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mote_codec::{
    Ack, Connect, Disconnect, Packet, PropValues, Properties, Protocol, Publish, QoS,
    RetainHandling, SubOptions, Subscribe, SubscribeFilter, Unsubscribe, Will,
};

/// splitmix64: small, fast and good enough to pick mutations; one per connection, seeded
/// from the run's seed and the connection's number.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of connection `k` in the run of `seed`.
    pub(crate) fn new(seed: u64, k: u64) -> Rng {
        let mut r = Rng(seed ^ k.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next();
        r
    }

    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True `percent` times in a hundred.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// One of `items`.
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// `n` random bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What a hostile connection does first; every kind goes on with more bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Random bytes from the first one on.
    Garbage,
    /// A mutated CONNECT.
    MutatedConnect,
    /// Packets other than CONNECT before any CONNECT (types out of order).
    EarlyPackets,
    /// A valid CONNECT, then valid and mutated packets mixed.
    Session,
}

/// How a valid packet was damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// 1 to 4 bits flipped anywhere in the packet.
    BitFlips,
    /// Remaining Length made smaller than the body: the rest reads as the next packet.
    ShortLength,
    /// Remaining Length made larger: the next packet's bytes read as this one's body.
    LongLength,
    /// Remaining Length of 256 MiB (the largest), or a five-byte (malformed) varint.
    OversizedLength,
    /// Invalid UTF-8 (or U+0000) inside a topic, filter or client id.
    BadUtf8,
    /// A v5 property identifier replaced by an unknown one or one not allowed here.
    BadPropertyId,
    /// The packet type replaced by another (a server's type, 0, AUTH in 3.1.1...).
    WrongType,
    /// Reserved fixed-header flags set, or PUBLISH with QoS 3.
    BadFlags,
    /// A second CONNECT on a connected session (either version).
    SecondConnect,
    /// A valid packet encoded for the other protocol version.
    OtherVersion,
    /// A valid packet cut short, the next one following at once.
    Torn,
    /// Random bytes in place of a packet.
    Random,
}

/// Every mutation, in the order of the counters of a run's report.
pub(crate) const MUTATIONS: [Mutation; 12] = [
    Mutation::BitFlips,
    Mutation::ShortLength,
    Mutation::LongLength,
    Mutation::OversizedLength,
    Mutation::BadUtf8,
    Mutation::BadPropertyId,
    Mutation::WrongType,
    Mutation::BadFlags,
    Mutation::SecondConnect,
    Mutation::OtherVersion,
    Mutation::Torn,
    Mutation::Random,
];

/// The bytes one hostile connection writes and how it ends.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// What it does first.
    pub(crate) kind: Kind,
    /// The protocol of its CONNECT (and of the packets after it, mostly).
    pub(crate) protocol: Protocol,
    /// Sends slowly and stays open long.
    pub(crate) slow: bool,
    /// Pause before each chunk, and the chunk.
    pub(crate) chunks: Vec<(Duration, Vec<u8>)>,
    /// How long it keeps reading after its last chunk before it closes.
    pub(crate) linger: Duration,
    /// Closes with a reset (SO_LINGER 0) rather than a FIN.
    pub(crate) reset: bool,
    /// The mutations in its bytes.
    pub(crate) mutations: Vec<Mutation>,
}

/// Topics and filters of hostile clients live under `flood/<bucket>/`, with 997 buckets:
/// clients of one bucket see each other's messages, so the flood's own fan-out stays
/// small, and nothing of it matches the well-behaved pair's topics.
fn bucket(k: u64) -> u64 {
    k % 997
}

/// The script of connection `k` in the run of `seed`. `long_lived` in a hundred
/// connections are slow: they send one chunk every 1 to 3 s, mostly valid packets after
/// a valid CONNECT (one in ten drips random bytes instead), so that thousands are open at
/// once, each for 10 s to a minute; the others are done within about 3 s.
pub(crate) fn script(seed: u64, k: u64, long_lived: u64) -> Script {
    let mut rng = Rng::new(seed, k);
    let protocol = if rng.chance(50) {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let slow = rng.chance(long_lived);
    let kind = match (slow, rng.next() % 100) {
        (true, 0..=9) => Kind::Garbage,
        (true, _) => Kind::Session,
        (false, 0..=14) => Kind::Garbage,
        (false, 15..=29) => Kind::MutatedConnect,
        (false, 30..=39) => Kind::EarlyPackets,
        (false, _) => Kind::Session,
    };
    let mut mutations = Vec::new();
    let mut stream: Vec<u8> = Vec::new();
    match kind {
        Kind::Garbage => {
            let n = rng.range(1, 2048) as usize;
            let mut b = rng.bytes(n);
            if rng.chance(30) {
                // Looks like a CONNECT's first byte, so the length is what is read next.
                b[0] = 0x10;
            }
            stream.extend(b);
            mutations.push(Mutation::Random);
        }
        Kind::MutatedConnect => {
            let c = connect(&mut rng, protocol, k);
            let (bytes, m) = mutate(&mut rng, c, protocol, k);
            stream.extend(bytes);
            mutations.push(m);
        }
        Kind::EarlyPackets => {
            for _ in 0..rng.range(1, 3) {
                stream.extend(valid_packet(&mut rng, protocol, k));
            }
            stream.extend(connect(&mut rng, protocol, k));
        }
        Kind::Session => stream.extend(connect(&mut rng, protocol, k)),
    }
    // Then packets: valid and mutated ones mixed (the broker closes most connections at
    // the first bad byte; what it reads until then is the point), after 8 to 16 valid
    // ones for a slow connection.
    let valid = if slow { rng.range(8, 16) } else { 0 };
    for _ in 0..valid {
        stream.extend(valid_packet(&mut rng, protocol, k));
    }
    let mixed = if slow {
        rng.range(1, 4)
    } else {
        rng.range(1, 24)
    };
    for _ in 0..mixed {
        let p = valid_packet(&mut rng, protocol, k);
        if rng.chance(50) {
            let (bytes, m) = mutate(&mut rng, p, protocol, k);
            stream.extend(bytes);
            mutations.push(m);
        } else {
            stream.extend(p);
        }
    }
    let pieces = if slow {
        valid + mixed
    } else {
        rng.range(1, 12)
    };
    let chunks = cut(&mut rng, &stream, pieces as usize, slow);
    Script {
        kind,
        protocol,
        slow,
        chunks,
        linger: Duration::from_millis(rng.range(0, 500)),
        reset: rng.chance(50),
        mutations,
    }
}

/// Cuts `stream` into about `pieces` chunks at random places, each with the pause before
/// it: up to 300 ms, or 1 to 3 s for a slow connection (the first chunk at once).
fn cut(rng: &mut Rng, stream: &[u8], pieces: usize, slow: bool) -> Vec<(Duration, Vec<u8>)> {
    let mut at: Vec<usize> = (1..pieces)
        .map(|_| rng.range(1, stream.len().max(2) as u64 - 1) as usize)
        .collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2)
        .enumerate()
        .map(|(i, w)| {
            let pause = match (i, slow) {
                (0, _) => 0,
                (_, false) => rng.range(0, 300),
                (_, true) => rng.range(1000, 3000),
            };
            (Duration::from_millis(pause), stream[w[0]..w[1]].to_vec())
        })
        .collect()
}

/// `p` encoded for `protocol`; `None` when the codec refuses it (a packet this version
/// has not).
fn encode(p: &Packet<'_>, protocol: Protocol) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; p.encoded_len(protocol)];
    let n = p.encode(protocol, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// A random QoS.
fn qos(rng: &mut Rng) -> QoS {
    rng.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

/// A valid CONNECT of connection `k`: client id `flood-<k>` (one in fifty takes another
/// flood client's id, which takes its session over), clean start mostly, keep alive 0 to
/// 30 s (short ones expire while the client dawdles), a will sometimes.
pub(crate) fn connect(rng: &mut Rng, protocol: Protocol, k: u64) -> Vec<u8> {
    let id = if rng.chance(2) {
        format!("flood-{}", k.saturating_sub(rng.range(1, 50)))
    } else {
        format!("flood-{k}")
    };
    let will_topic = format!("flood/{}/will", bucket(k));
    let props = PropValues {
        session_expiry_interval: rng.chance(20).then(|| rng.range(1, 30) as u32),
        receive_maximum: rng.chance(20).then(|| rng.range(1, 100) as u16),
        maximum_packet_size: rng.chance(20).then(|| rng.range(64, 65536) as u32),
        topic_alias_maximum: rng.chance(20).then(|| rng.range(0, 10) as u16),
        request_problem_information: rng.chance(20).then(|| rng.chance(50)),
        ..PropValues::default()
    };
    let will = rng.chance(20).then(|| Will {
        topic: &will_topic,
        payload: b"flood will",
        qos: qos(rng),
        retain: rng.chance(20),
        properties: Properties::default(),
    });
    let c = Connect {
        protocol,
        // A persistent 3.1.1 session never expires: keep those rare.
        clean_start: !rng.chance(5),
        keep_alive: rng.range(0, 30) as u16,
        properties: if protocol == Protocol::V5 {
            Properties::Values(&props)
        } else {
            Properties::default()
        },
        client_id: &id,
        will,
        username: rng.chance(10).then_some("flood"),
        password: None,
    };
    encode(&Packet::Connect(c), protocol).unwrap_or_default()
}

/// One valid packet (not CONNECT) a client of connection `k` might send.
pub(crate) fn valid_packet(rng: &mut Rng, protocol: Protocol, k: u64) -> Vec<u8> {
    let v5 = protocol == Protocol::V5;
    let b = bucket(k);
    let id = rng.range(1, 65535) as u16;
    let p = match rng.next() % 100 {
        0..=44 => return publish(rng, protocol, k, false),
        45..=59 => {
            let filters = [
                format!("flood/{b}/#"),
                format!("flood/{b}/+/x"),
                format!("$share/g{}/flood/{b}/q", k % 7),
                format!("flood/{b}/{}", rng.range(0, 9)),
            ];
            let n = rng.range(1, 3) as usize;
            let entries: Vec<SubscribeFilter<'_>> = (0..n)
                .map(|_| SubscribeFilter {
                    filter: &filters[(rng.next() % 4) as usize],
                    options: SubOptions {
                        qos: qos(rng),
                        no_local: v5 && rng.chance(30),
                        retain_as_published: v5 && rng.chance(30),
                        retain_handling: if v5 {
                            rng.pick(&[
                                RetainHandling::SendAtSubscribe,
                                RetainHandling::SendIfNew,
                                RetainHandling::DoNotSend,
                            ])
                        } else {
                            RetainHandling::SendAtSubscribe
                        },
                    },
                })
                .collect();
            let ids = [rng.range(1, 1000) as u32];
            let props = PropValues {
                subscription_identifiers: mote_codec::PropList::Slice(&ids),
                ..PropValues::default()
            };
            let s = Subscribe {
                packet_id: id,
                properties: if v5 && rng.chance(30) {
                    Properties::Values(&props)
                } else {
                    Properties::default()
                },
                filters: mote_codec::List::Slice(&entries),
            };
            return encode(&Packet::Subscribe(s), protocol).unwrap_or_default();
        }
        60..=69 => {
            let f = format!("flood/{b}/#");
            let filters = [f.as_str()];
            let u = Unsubscribe {
                packet_id: id,
                properties: Properties::default(),
                filters: mote_codec::List::Slice(&filters),
            };
            return encode(&Packet::Unsubscribe(u), protocol).unwrap_or_default();
        }
        70..=73 => Packet::PubAck(Ack::new(id)),
        74..=77 => Packet::PubRec(Ack::new(id)),
        78..=81 => Packet::PubRel(Ack::new(id)),
        82..=84 => Packet::PubComp(Ack::new(id)),
        85..=95 => Packet::PingReq,
        96..=97 => Packet::Disconnect(Disconnect::new(if v5 {
            rng.pick(&[0x00, 0x04, 0x80, 0x83])
        } else {
            0
        })),
        // AUTH without an authentication method in CONNECT: a protocol error (v5).
        _ if v5 => Packet::Auth(Disconnect::new(0x18)),
        _ => Packet::PingReq,
    };
    encode(&p, protocol).unwrap_or_default()
}

/// A valid PUBLISH of connection `k` (with a Content Type property in v5 when
/// `content_type`, which [`Mutation::BadPropertyId`] damages).
fn publish(rng: &mut Rng, protocol: Protocol, k: u64, content_type: bool) -> Vec<u8> {
    let v5 = protocol == Protocol::V5;
    let topic = format!("flood/{}/{}", bucket(k), rng.range(0, 9));
    let qos = qos(rng);
    let len = match rng.next() % 100 {
        0..=69 => rng.range(0, 64),
        70..=96 => rng.range(64, 1024),
        _ => rng.range(1024, 16384),
    } as usize;
    let payload = rng.bytes(len);
    let user = [("flood", "mutated")];
    let props = PropValues {
        content_type: (content_type || rng.chance(20)).then_some("flood/ct"),
        message_expiry_interval: rng.chance(20).then(|| rng.range(1, 60) as u32),
        response_topic: rng.chance(10).then_some("flood/r"),
        correlation_data: rng.chance(10).then_some(&b"corr"[..]),
        user_properties: if rng.chance(20) {
            mote_codec::PropList::Slice(&user)
        } else {
            mote_codec::PropList::default()
        },
        topic_alias: rng.chance(10).then(|| rng.range(1, 10) as u16),
        ..PropValues::default()
    };
    let p = Publish {
        dup: qos != QoS::AtMostOnce && rng.chance(10),
        qos,
        retain: rng.chance(10),
        topic: &topic,
        packet_id: if qos == QoS::AtMostOnce {
            0
        } else {
            rng.range(1, 65535) as u16
        },
        properties: if v5 {
            Properties::Values(&props)
        } else {
            Properties::default()
        },
        payload: &payload,
    };
    encode(&Packet::Publish(p), protocol).unwrap_or_default()
}

/// Where the body of `packet` starts (after its fixed header) and its Remaining Length;
/// `None` when the header is not a valid one.
fn header(packet: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *packet.get(1 + i)?;
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((2 + i, len));
        }
    }
    None
}

/// The variable byte integer of `v` (at most 268,435,455).
fn varint(mut v: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return out;
        }
    }
}

/// `packet` with its Remaining Length replaced by `len` (the body unchanged).
fn with_length(packet: &[u8], len: usize) -> Vec<u8> {
    let Some((body, _)) = header(packet) else {
        return packet.to_vec();
    };
    let mut out = vec![packet[0]];
    out.extend(varint(len));
    out.extend_from_slice(&packet[body..]);
    out
}

/// Damages `packet` (a valid one of `protocol`, of connection `k`) in one random way;
/// the bytes and the mutation.
pub(crate) fn mutate(
    rng: &mut Rng,
    packet: Vec<u8>,
    protocol: Protocol,
    k: u64,
) -> (Vec<u8>, Mutation) {
    let other = if protocol == Protocol::V5 {
        Protocol::V311
    } else {
        Protocol::V5
    };
    let m = rng.pick(&MUTATIONS);
    let Some((body, len)) = header(&packet) else {
        return (rng.bytes(64), Mutation::Random);
    };
    let bytes = match m {
        Mutation::BitFlips => {
            let mut p = packet;
            for _ in 0..rng.range(1, 4) {
                let i = (rng.next() % p.len() as u64) as usize;
                p[i] ^= 1 << (rng.next() % 8);
            }
            p
        }
        Mutation::ShortLength => {
            with_length(&packet, rng.range(0, len.saturating_sub(1) as u64) as usize)
        }
        Mutation::LongLength => with_length(&packet, len + rng.range(1, 200) as usize),
        Mutation::OversizedLength => {
            if rng.chance(50) {
                with_length(&packet, 268_435_455)
            } else {
                let mut p = vec![packet[0], 0xff, 0xff, 0xff, 0xff, 0x01];
                p.extend_from_slice(&packet[body..]);
                p
            }
        }
        Mutation::BadUtf8 => {
            // Every topic, filter, will topic and client id holds "flood".
            let mut p = packet;
            match p.windows(5).position(|w| w == b"flood") {
                Some(at) => {
                    let bad: &[u8] =
                        rng.pick(&[&[0xff][..], &[0x00], &[0xc0, 0x80], &[0xed, 0xa0, 0x80]]);
                    let at = at + (rng.next() % 3) as usize;
                    p[at..at + bad.len()].copy_from_slice(bad);
                }
                None => p[0] ^= 0x0f,
            }
            p
        }
        Mutation::BadPropertyId => {
            // A v5 PUBLISH with Content Type (0x03) "flood/ct", its identifier replaced
            // (in a 3.1.1 session the property block reads as part of the topic/payload).
            let mut p = publish(rng, Protocol::V5, k, true);
            if let Some(at) = p.windows(3).position(|w| w == [0x00, 0x08, b'f']) {
                if at > 0 && p[at - 1] == 0x03 {
                    // Unknown, reserved, or valid but not in a PUBLISH (Session Expiry,
                    // Receive Maximum, Assigned Client Identifier).
                    p[at - 1] = rng.pick(&[0x00, 0x04, 0x7f, 0xff, 0x11, 0x21, 0x12]);
                }
            }
            p
        }
        Mutation::WrongType => {
            let mut p = packet;
            let t = rng.pick(&[0u8, 1, 2, 9, 11, 13, 15]);
            p[0] = (t << 4) | (p[0] & 0x0f);
            p
        }
        Mutation::BadFlags => {
            let mut p = packet;
            if p[0] >> 4 == 3 {
                p[0] |= 0b0110; // QoS 3
            } else {
                p[0] ^= 1 << (rng.next() % 4);
            }
            p
        }
        Mutation::SecondConnect => {
            let version = rng.pick(&[protocol, other]);
            connect(rng, version, k)
        }
        Mutation::OtherVersion => {
            let p = valid_packet(rng, other, k);
            if p.is_empty() {
                packet
            } else {
                p
            }
        }
        Mutation::Torn => {
            let mut p = packet;
            let keep = rng.range(1, p.len().max(2) as u64 - 1) as usize;
            p.truncate(keep);
            p
        }
        Mutation::Random => {
            let n = rng.range(1, 512) as usize;
            rng.bytes(n)
        }
    };
    (bytes, m)
}

// ------------------------------------------------------------------- the connections

/// How a flood goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Hostile connections opened in all.
    pub(crate) connections: u64,
    /// Connections opened per wave, and the time between waves.
    pub(crate) wave: u64,
    pub(crate) wave_every: Duration,
    /// Percent of connections that are slow (see [`script`]).
    pub(crate) long_lived: u64,
    /// Most connections open at once.
    pub(crate) max_open: usize,
    /// Past this (from the start), connections still open are closed by the flooder.
    pub(crate) limit: Duration,
}

/// Counters of a flood, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Connections the broker accepted, and those that could not connect within 5 s.
    pub(crate) opened: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    /// Connections open now, and the most open at once.
    pub(crate) open_now: AtomicU64,
    pub(crate) peak_open: AtomicU64,
    /// Bytes written and read.
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    /// Connections whose first byte from the broker was a CONNACK's.
    pub(crate) connacks: AtomicU64,
    /// The broker closed the connection (EOF, reset or a failed write) first.
    pub(crate) broker_closed: AtomicU64,
    /// The flooder closed it after its script, with a FIN or a reset.
    pub(crate) closed_fin: AtomicU64,
    pub(crate) closed_rst: AtomicU64,
    /// Still open at the plan's time limit, closed by the flooder.
    pub(crate) cut: AtomicU64,
    /// A write that did not complete within 5 s (the broker stopped reading).
    pub(crate) write_stalled: AtomicU64,
    /// Connections by [`Kind`], in the order of its variants.
    pub(crate) kinds: [AtomicU64; 4],
    /// Connections that send slowly.
    pub(crate) slow: AtomicU64,
    /// Mutations written, in the order of [`MUTATIONS`].
    pub(crate) mutations: [AtomicU64; MUTATIONS.len()],
}

/// Adds `n` to counter `c`.
fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The source address of hostile connection `k`: one of 500 in 127.2.0.0/16 (all of
/// 127.0.0.0/8 is loopback on Linux), so that no address holds more sockets before
/// CONNECT than the broker's per-address cap (64) and no address runs out of ports.
fn source(k: u64) -> SocketAddr {
    let a = k % 500;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 2, (a / 250) as u8, (a % 250) as u8 + 1)),
        0,
    )
}

/// What a hostile connection reads (and throws away).
struct Seen {
    buf: [u8; 1024],
    /// Nothing read yet.
    first: bool,
}

impl Seen {
    /// Reads `stream` until `until`; `false` when the broker closed the connection first.
    async fn read_until(
        &mut self,
        stream: &mut tokio::net::TcpStream,
        tally: &Tally,
        until: tokio::time::Instant,
    ) -> bool {
        loop {
            tokio::select! {
                r = stream.read(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        if self.first && self.buf[0] == 0x20 {
                            add(&tally.connacks, 1);
                        }
                        self.first = false;
                        add(&tally.bytes_read, n as u64);
                    }
                },
                () = tokio::time::sleep_until(until) => return true,
            }
        }
    }
}

/// How a hostile connection ended.
enum End {
    Broker,
    Script,
    Cut,
    Stalled,
}

/// Hostile connection `k` of the run of `seed`: connects, writes its script while
/// reading whatever comes back, and closes as the script says, unless the broker closed
/// first; closes at `limit` whatever happens.
async fn hostile(
    addr: SocketAddr,
    seed: u64,
    k: u64,
    long_lived: u64,
    tally: Arc<Tally>,
    limit: tokio::time::Instant,
) {
    let script = script(seed, k, long_lived);
    let kind = match script.kind {
        Kind::Garbage => 0,
        Kind::MutatedConnect => 1,
        Kind::EarlyPackets => 2,
        Kind::Session => 3,
    };
    add(&tally.kinds[kind], 1);
    add(&tally.slow, u64::from(script.slow));
    for m in &script.mutations {
        let i = MUTATIONS.iter().position(|x| x == m).unwrap();
        add(&tally.mutations[i], 1);
    }
    let connected = async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(source(k))?;
        s.connect(addr).await
    };
    let mut stream = match tokio::time::timeout(Duration::from_secs(5), connected).await {
        Ok(Ok(s)) => s,
        _ => {
            add(&tally.connect_failed, 1);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    add(&tally.opened, 1);
    let now_open = tally.open_now.fetch_add(1, Ordering::Relaxed) + 1;
    tally.peak_open.fetch_max(now_open, Ordering::Relaxed);

    let mut seen = Seen {
        buf: [0u8; 1024],
        first: true,
    };
    let mut end = End::Script;
    for (pause, chunk) in &script.chunks {
        let at = tokio::time::Instant::now() + *pause;
        if at >= limit {
            end = if seen.read_until(&mut stream, &tally, limit).await {
                End::Cut
            } else {
                End::Broker
            };
            break;
        }
        if !seen.read_until(&mut stream, &tally, at).await {
            end = End::Broker;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.write_all(chunk)).await {
            Ok(Ok(())) => add(&tally.bytes_sent, chunk.len() as u64),
            Ok(Err(_)) => {
                end = End::Broker;
                break;
            }
            Err(_) => {
                end = End::Stalled;
                break;
            }
        }
    }
    if matches!(end, End::Script) {
        let at = (tokio::time::Instant::now() + script.linger).min(limit);
        if !seen.read_until(&mut stream, &tally, at).await {
            end = End::Broker;
        }
    }
    match end {
        End::Broker => add(&tally.broker_closed, 1),
        End::Cut => add(&tally.cut, 1),
        End::Stalled => add(&tally.write_stalled, 1),
        End::Script if script.reset => {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            add(&tally.closed_rst, 1);
        }
        End::Script => add(&tally.closed_fin, 1),
    }
    drop(stream);
    tally.open_now.fetch_sub(1, Ordering::Relaxed);
}

/// Runs the flood of `plan` and `seed` against `addr` on this thread, lowered to the
/// least CPU priority (the flood stands for machines elsewhere: it must not take the CPU
/// from the broker or from whoever measures it); counts in `tally`.
pub(crate) fn run(addr: SocketAddr, seed: u64, plan: Plan, tally: Arc<Tally>) {
    // SAFETY: gettid and setpriority only read their arguments; raising one's own
    // niceness needs no privilege.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let limit = start + plan.limit;
        let slots = Arc::new(tokio::sync::Semaphore::new(plan.max_open));
        let mut tasks = Vec::with_capacity(plan.connections as usize);
        for k in 0..plan.connections {
            tokio::time::sleep_until(start + plan.wave_every * (k / plan.wave) as u32).await;
            let slot = slots.clone().acquire_owned().await.unwrap();
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                hostile(addr, seed, k, plan.long_lived, tally, limit).await;
                drop(slot);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}
