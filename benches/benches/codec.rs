//! Decode and encode of PUBLISH and CONNECT, `mote-codec` against `mqttbytes` 0.6, on the
//! same wire bytes, for MQTT 3.1.1 (`v4`) and 5.0 (`v5`).
//!
//! Groups are `decode/<case>` and `encode/<case>`; functions are `mote` and `mqttbytes`,
//! each with the version as parameter. Decode also has `floor`: the harness alone, reading
//! one byte of the input. Encode has `mote_slice` into a reused `[u8; 2048]`, and
//! `mote_bytesmut` and `mqttbytes` into a reused, cleared `BytesMut`.
//!
//! Decode: `mqttbytes::v4::read`/`v5::read` consume a `BytesMut`, so both decoders run under
//! `iter_batched_ref` with the same untimed setup (copying the frame into a fresh
//! `BytesMut`); what a routine returns is dropped outside the timing (for mqttbytes that is
//! the decoded packet with its `String`s, which favours mqttbytes).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{
    criterion_group, criterion_main, BatchSize, Bencher, BenchmarkId, Criterion, Throughput,
};
use mote_codec::{decode, Connect, Packet, Properties, Protocol, Publish, QoS, Will};
use mqttbytes::{v4, v5};

const SHORT_TOPIC: &str = "t/1";
const DEEP_TOPIC: &str = "fleet/site-42/device-0007/sensor/temperature";
const PACKET_ID: u16 = 10;
const MAX_PACKET: usize = 1 << 20;

const CLIENT_ID: &str = "device-0007";
const KEEP_ALIVE: u16 = 60;
const USERNAME: &str = "fleet-user";
const PASSWORD: &str = "s3cret-passw0rd";
const WILL_TOPIC: &str = "fleet/site-42/device-0007/status";
const WILL_PAYLOAD: &[u8] = b"offline";

#[derive(Clone, Copy)]
enum Version {
    V4,
    V5,
}

impl Version {
    fn protocol(self) -> Protocol {
        match self {
            Version::V4 => Protocol::V311,
            Version::V5 => Protocol::V5,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Version::V4 => "v4",
            Version::V5 => "v5",
        }
    }
}

/// The same packet as mqttbytes holds it.
enum Theirs {
    V4Publish(v4::Publish),
    V5Publish(v5::Publish),
    V4Connect(v4::Connect),
    V5Connect(v5::Connect),
}

enum Shape {
    Publish { topic: &'static str, payload: usize },
    Connect,
}

struct Case {
    name: &'static str,
    shape: Shape,
}

const CASES: [Case; 5] = [
    Case {
        name: "publish_16B_short",
        shape: Shape::Publish {
            topic: SHORT_TOPIC,
            payload: 16,
        },
    },
    Case {
        name: "publish_16B_5level",
        shape: Shape::Publish {
            topic: DEEP_TOPIC,
            payload: 16,
        },
    },
    Case {
        name: "publish_1KiB_short",
        shape: Shape::Publish {
            topic: SHORT_TOPIC,
            payload: 1024,
        },
    },
    Case {
        name: "publish_1KiB_5level",
        shape: Shape::Publish {
            topic: DEEP_TOPIC,
            payload: 1024,
        },
    },
    Case {
        name: "connect",
        shape: Shape::Connect,
    },
];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn mote_packet<'a>(shape: &'a Shape, payload: &'a [u8], v: Version) -> Packet<'a> {
    match *shape {
        Shape::Publish { topic, .. } => Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: PACKET_ID,
            properties: Properties::default(),
            payload,
        }),
        Shape::Connect => Packet::Connect(Connect {
            protocol: v.protocol(),
            clean_start: true,
            keep_alive: KEEP_ALIVE,
            properties: Properties::default(),
            client_id: CLIENT_ID,
            will: Some(Will {
                topic: WILL_TOPIC,
                payload: WILL_PAYLOAD,
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            }),
            username: Some(USERNAME),
            password: Some(PASSWORD.as_bytes()),
        }),
    }
}

fn theirs_packet(shape: &Shape, payload: &[u8], v: Version) -> Theirs {
    match (shape, v) {
        (Shape::Publish { topic, .. }, Version::V4) => {
            let mut p = v4::Publish::new(*topic, mqttbytes::QoS::AtLeastOnce, payload);
            p.pkid = PACKET_ID;
            Theirs::V4Publish(p)
        }
        (Shape::Publish { topic, .. }, Version::V5) => {
            let mut p = v5::Publish::new(*topic, mqttbytes::QoS::AtLeastOnce, payload);
            p.pkid = PACKET_ID;
            Theirs::V5Publish(p)
        }
        (Shape::Connect, Version::V4) => {
            let mut c = v4::Connect::new(CLIENT_ID);
            c.keep_alive = KEEP_ALIVE;
            c.clean_session = true;
            c.last_will = Some(v4::LastWill::new(
                WILL_TOPIC,
                WILL_PAYLOAD,
                mqttbytes::QoS::AtLeastOnce,
                true,
            ));
            c.set_login(USERNAME, PASSWORD);
            Theirs::V4Connect(c)
        }
        (Shape::Connect, Version::V5) => {
            let mut c = v5::Connect::new(CLIENT_ID);
            c.keep_alive = KEEP_ALIVE;
            c.clean_session = true;
            c.last_will = Some(v5::LastWill::new(
                WILL_TOPIC,
                WILL_PAYLOAD,
                mqttbytes::QoS::AtLeastOnce,
                true,
            ));
            c.set_login(USERNAME, PASSWORD);
            Theirs::V5Connect(c)
        }
    }
}

fn theirs_write(t: &Theirs, out: &mut BytesMut) {
    match t {
        Theirs::V4Publish(p) => p.write(out).map(drop),
        Theirs::V5Publish(p) => p.write(out).map(drop),
        Theirs::V4Connect(c) => c.write(out).map(drop),
        Theirs::V5Connect(c) => c.write(out).map(drop),
    }
    .unwrap();
}

/// Checks that both crates agree on the bytes and on what they mean.
fn check_fixture(ours: &Packet<'_>, theirs: &Theirs, v: Version, wire: &[u8]) {
    let mut out = BytesMut::new();
    theirs_write(theirs, &mut out);
    assert_eq!(&out[..], wire, "mqttbytes encodes other bytes");
    let mut via = BytesMut::new();
    ours.encode_to(v.protocol(), &mut via).unwrap();
    assert_eq!(
        &via[..],
        wire,
        "mote's encode_to into a BytesMut differs from encode"
    );
    let (back, used) = decode(wire, v.protocol(), MAX_PACKET as u32)
        .unwrap()
        .unwrap();
    assert_eq!(used, wire.len());
    assert_eq!(&back, ours);
    let mut buf = BytesMut::from(wire);
    match theirs {
        Theirs::V4Publish(p) => {
            assert_eq!(
                v4::read(&mut buf, MAX_PACKET),
                Ok(v4::Packet::Publish(p.clone()))
            );
        }
        Theirs::V4Connect(c) => {
            assert_eq!(
                v4::read(&mut buf, MAX_PACKET),
                Ok(v4::Packet::Connect(c.clone()))
            );
        }
        Theirs::V5Publish(p) => {
            assert_eq!(
                v5::read(&mut buf, MAX_PACKET),
                Ok(v5::Packet::Publish(p.clone()))
            );
        }
        Theirs::V5Connect(c) => {
            assert_eq!(
                v5::read(&mut buf, MAX_PACKET),
                Ok(v5::Packet::Connect(c.clone()))
            );
        }
    }
}

/// Times `read` on a fresh `BytesMut` copy of `wire`; the copy is made outside the timing.
fn run_decode<R>(b: &mut Bencher<'_>, wire: &[u8], mut read: impl FnMut(&mut BytesMut) -> R) {
    b.iter_batched_ref(
        || BytesMut::from(wire),
        |buf| read(black_box(buf)),
        BatchSize::SmallInput,
    );
}

/// Times `write` into a reused `BytesMut`, cleared before each packet.
fn run_encode(b: &mut Bencher<'_>, mut write: impl FnMut(&mut BytesMut)) {
    let mut out = BytesMut::with_capacity(2048);
    b.iter(|| {
        out.clear();
        write(&mut out);
        black_box(&out);
    });
}

fn codec(c: &mut Criterion) {
    for case in &CASES {
        let len = match case.shape {
            Shape::Publish { payload, .. } => payload,
            Shape::Connect => 0,
        };
        let body = payload(len);
        let fixtures: Vec<(Version, Packet<'_>, Theirs, Vec<u8>)> = [Version::V4, Version::V5]
            .into_iter()
            .map(|v| {
                let ours = mote_packet(&case.shape, &body, v);
                let theirs = theirs_packet(&case.shape, &body, v);
                let mut wire = vec![0u8; ours.encoded_len(v.protocol())];
                ours.encode(v.protocol(), &mut wire).unwrap();
                check_fixture(&ours, &theirs, v, &wire);
                (v, ours, theirs, wire)
            })
            .collect();

        let mut g = c.benchmark_group(format!("decode/{}", case.name));
        for (v, _, _, wire) in &fixtures {
            let (v, wire) = (*v, wire.as_slice());
            g.throughput(Throughput::Bytes(wire.len() as u64));
            g.bench_with_input(BenchmarkId::new("mote", v.label()), &v, |b, v| {
                let protocol = v.protocol();
                run_decode(b, wire, |buf| {
                    let (p, n) = decode(buf, protocol, MAX_PACKET as u32).unwrap().unwrap();
                    black_box(&p);
                    n
                });
            });
            g.bench_with_input(
                BenchmarkId::new("mqttbytes", v.label()),
                &v,
                |b, v| match v {
                    Version::V4 => run_decode(b, wire, |buf| v4::read(buf, MAX_PACKET).unwrap()),
                    Version::V5 => run_decode(b, wire, |buf| v5::read(buf, MAX_PACKET).unwrap()),
                },
            );
            // The harness alone: same setup and batching, reading only the first byte.
            g.bench_with_input(BenchmarkId::new("floor", v.label()), &v, |b, _| {
                run_decode(b, wire, |buf| buf[0]);
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("encode/{}", case.name));
        for (v, ours, theirs, wire) in &fixtures {
            let protocol = v.protocol();
            g.throughput(Throughput::Bytes(wire.len() as u64));
            g.bench_with_input(BenchmarkId::new("mote_slice", v.label()), ours, |b, p| {
                let mut buf = [0u8; 2048];
                b.iter(|| black_box(p).encode(protocol, black_box(&mut buf)).unwrap());
            });
            g.bench_with_input(
                BenchmarkId::new("mote_bytesmut", v.label()),
                ours,
                |b, p| {
                    run_encode(b, |out| black_box(p).encode_to(protocol, out).unwrap());
                },
            );
            g.bench_with_input(
                BenchmarkId::new("mqttbytes", v.label()),
                theirs,
                |b, t| match t {
                    Theirs::V4Publish(p) => run_encode(b, |out| {
                        black_box(p).write(out).unwrap();
                    }),
                    Theirs::V5Publish(p) => run_encode(b, |out| {
                        black_box(p).write(out).unwrap();
                    }),
                    Theirs::V4Connect(c) => run_encode(b, |out| {
                        black_box(c).write(out).unwrap();
                    }),
                    Theirs::V5Connect(c) => run_encode(b, |out| {
                        black_box(c).write(out).unwrap();
                    }),
                },
            );
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = codec
}
criterion_main!(benches);
