//! The baseline: the same transport, fake broker, executor and time driver as the client
//! firmwares, exercised with prepared frames instead of an MQTT client.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;
use embedded_io_async::{Read, Write};
use size_common::{block_on, clock_now, finish, Broker, Pipe};

/// CONNECT, SUBSCRIBE, PUBLISH QoS 1 and DISCONNECT, as a client would write them.
static FRAMES: [u8; 16] = [
    0x10, 0x02, 0x00, 0x04, // CONNECT (truncated body: the broker only looks at the type)
    0x82, 0x03, 0x00, 0x01, 0x00, // SUBSCRIBE id 1
    0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x02, // PUBLISH QoS 1 "t" id 2
];

async fn job(broker: &mut Broker) -> bool {
    let mut pipe = Pipe(broker);
    let mut buf = [0u8; 64];
    let frames: &[u8] = black_box(&FRAMES[..]);
    if pipe.write_all(frames).await.is_err() || pipe.flush().await.is_err() {
        return false;
    }
    let mut got = 0;
    while got < 5 + 6 + 4 + 29 {
        match pipe.read(&mut buf).await {
            Ok(n) => {
                black_box(&buf[..n]);
                got += n;
            }
            Err(_) => return false,
        }
    }
    true
}

#[entry]
fn main() -> ! {
    black_box(clock_now());
    let mut broker = Broker::new();
    let ok = block_on(job(&mut broker)) == Some(true);
    size_common::probe_frames!(&broker);
    finish(ok)
}
