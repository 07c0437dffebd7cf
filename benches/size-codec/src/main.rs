//! A Cortex-M3 image that decodes a PUBLISH and a CONNECT and encodes a PUBLISH and a
//! CONNECT with mote-codec (feature `codec`), or, without the feature, does the same
//! reads and writes with no codec calls: the difference in `.text` is the codec's share.
//!
//! Inputs are read through `black_box`, and the protocol version is chosen at run time,
//! so the whole decoder (3.1.1 and 5.0, every packet type) is kept; with feature
//! `v311-only` the version is a constant 3.1.1 instead.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::panic::PanicInfo;
use core::ptr::addr_of_mut;

use cortex_m_rt::entry;

/// PUBLISH QoS 1, topic `t/1`, packet id 10, 16-byte payload (3.1.1 form).
static PUBLISH_IN: [u8; 25] = [
    0x32, 0x17, 0x00, 0x03, b't', b'/', b'1', 0x00, 0x0a, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    13, 14, 15,
];

/// CONNECT 3.1.1: clean session, keep alive 60, client id, will (QoS 1, retain), user, password.
static CONNECT_IN: [u8; 53] = [
    0x10, 0x33, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xee, 0x00, 0x3c, 0x00, 0x06, b'd', b'e',
    b'v', b'-', b'0', b'7', 0x00, 0x08, b's', b't', b'a', b't', b'u', b's', b'/', b'7', 0x00, 0x07,
    b'o', b'f', b'f', b'l', b'i', b'n', b'e', 0x00, 0x04, b'u', b's', b'e', b'r', 0x00, 0x06, b's',
    b'e', b'c', b'r', b'e', b't',
];

static mut OUT: [u8; 256] = [0; 256];

#[entry]
fn main() -> ! {
    // SAFETY: the only reference to OUT, taken once before the loop.
    let out: &mut [u8; 256] = unsafe { &mut *addr_of_mut!(OUT) };
    loop {
        run(out);
    }
}

#[cfg(feature = "codec")]
fn run(out: &mut [u8; 256]) {
    use mote_codec::{decode, Connect, Packet, Properties, Protocol, Publish, QoS, Will};

    let protocol = if cfg!(feature = "v311-only") {
        Protocol::V311
    } else {
        black_box(Protocol::V311)
    };
    let publish = decode(black_box(&PUBLISH_IN[..]), protocol, 1024);
    black_box(&publish);
    let connect = decode(black_box(&CONNECT_IN[..]), protocol, 1024);
    black_box(&connect);

    let payload = black_box(&PUBLISH_IN[9..]);
    let p = Packet::Publish(Publish {
        dup: false,
        qos: black_box(QoS::AtLeastOnce),
        retain: false,
        topic: black_box("t/1"),
        packet_id: black_box(10),
        properties: Properties::default(),
        payload,
    });
    black_box(p.encode(protocol, &mut out[..]).ok());
    let c = Packet::Connect(Connect {
        protocol,
        clean_start: true,
        keep_alive: black_box(60),
        properties: Properties::default(),
        client_id: black_box("dev-07"),
        will: Some(Will {
            topic: black_box("status/7"),
            payload: black_box(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some(black_box("user")),
        password: Some(black_box(b"secret")),
    });
    black_box(c.encode(protocol, &mut out[..]).ok());
}

#[cfg(not(feature = "codec"))]
fn run(out: &mut [u8; 256]) {
    black_box(black_box(&PUBLISH_IN[..]).len());
    black_box(black_box(&CONNECT_IN[..]).len());
    black_box(black_box(&PUBLISH_IN[9..]).len());
    black_box(&mut out[..]);
}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
