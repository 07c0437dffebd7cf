//! The size job with `mote-client`: connect (MQTT 5), subscribe to one topic, publish a
//! 16-byte payload with QoS 1, receive one message, disconnect.
//!
//! The application task (subscribe, publish, wait until both are acknowledged) runs
//! joined with the client's runner; the runner hands the received message to its event
//! callback, which then asks for the DISCONNECT that ends the run.
#![no_std]
#![no_main]

use core::cell::Cell;
use core::hint::black_box;

use cortex_m_rt::entry;
use embassy_futures::join::join;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use mote_client::{
    Buffers, Client, Config, Connect, EmbassyClock, Event, Message, QoS, Runner, Session, State,
    SubOptions, SubscribeFilter,
};
use size_common::{
    block_on, clock_now, finish, probe_frames, probe_type, probe_val, Broker, Pipe, CLIENT_ID,
    PAYLOAD, PUB_TOPIC, SUB_TOPIC,
};

/// RX, TX, in-flight slots, slot size, topic aliases.
type Bufs = Buffers<256, 256, 2, 64, 0>;

/// Hands the runner a transport (once per connection attempt).
struct Dial<'a>(&'a mut Broker);

impl Connect for Dial<'_> {
    type Transport<'t>
        = Pipe<'t>
    where
        Self: 't;
    type Error = ();

    async fn connect(&mut self) -> Result<Pipe<'_>, ()> {
        Ok(Pipe(self.0))
    }
}

async fn job(
    client: Client<'_, '_, NoopRawMutex>,
    runner: &mut Runner<'_, '_, NoopRawMutex, EmbassyClock>,
    dial: &mut Dial<'_>,
) -> bool {
    let received = Cell::new(false);
    let app = async {
        let filters = [SubscribeFilter {
            filter: black_box(SUB_TOPIC),
            options: SubOptions::qos(QoS::AtLeastOnce),
        }];
        client.subscribe(&filters).await?;
        let payload = black_box(&PAYLOAD);
        let msg = Message::new(black_box(PUB_TOPIC), payload).qos(QoS::AtLeastOnce);
        client.publish(&msg).await?;
        client.flush().await;
        Ok::<(), mote_client::Error>(())
    };
    let run = runner.run(dial, |ev| {
        if let Event::Message(m) = ev {
            black_box((m.topic, m.payload));
            received.set(m.payload.len() == 16);
            client.disconnect();
        }
    });
    let (ran, app) = join(run, app).await;
    ran.is_ok() && app.is_ok() && received.get()
}

#[entry]
fn main() -> ! {
    black_box(clock_now());
    let mut broker = Broker::new();
    let mut bufs = Bufs::new();
    let (storage, io) = bufs.split();
    let mut cfg = Config::new(black_box(CLIENT_ID));
    cfg.keep_alive = black_box(60);
    // Chosen at run time as far as the optimiser knows: the 3.1.1 code stays in the image.
    cfg.protocol = black_box(mote_client::Protocol::V5);
    let state = State::<NoopRawMutex>::new(Session::new(cfg, storage));
    let (client, mut runner) = mote_client::new(&state, io, EmbassyClock);
    let mut dial = Dial(&mut broker);
    let fut = job(client, &mut runner, &mut dial);
    probe_type!("mote Session", Session<'static>);
    probe_type!(
        "mote State (Session + wakers)",
        State<'static, NoopRawMutex>
    );
    probe_type!(
        "mote Runner",
        Runner<'static, 'static, NoopRawMutex, EmbassyClock>
    );
    probe_type!("mote Client", Client<'static, 'static, NoopRawMutex>);
    probe_type!("mote Buffers<256, 256, 2, 64, 0>", Bufs);
    probe_val!("mote job future", &fut);
    let ok = block_on(fut) == Some(true);
    probe_frames!(&broker);
    finish(ok)
}
