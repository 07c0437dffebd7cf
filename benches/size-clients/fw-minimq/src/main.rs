//! The size job with `minimq` 0.13: connect (MQTT 5), subscribe to one topic, publish a
//! 16-byte payload with QoS 1, receive one message, wait until the SUBACK and PUBACK
//! arrived, disconnect.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;
use minimq::{Buffers, ConfigBuilder, Publication, QoS, Session, SubscriptionOptions, TopicFilter};
use size_common::{
    block_on, clock_now, finish, probe_frames, probe_type, probe_val, Broker, Pipe, CLIENT_ID,
    PAYLOAD, PUB_TOPIC, SUB_TOPIC,
};

async fn job(session: &mut Session<'_>, broker: &mut Broker) -> bool {
    let Ok(mut conn) = session.connect(Pipe(broker)).await else {
        return false;
    };
    let filters = [TopicFilter::new(black_box(SUB_TOPIC))
        .options(SubscriptionOptions::default().maximum_qos(QoS::AtLeastOnce))];
    let Ok(sub) = conn.subscribe(&filters, &[]).await else {
        return false;
    };
    let payload: &[u8] = black_box(&PAYLOAD);
    let publication = Publication::new(black_box(PUB_TOPIC), payload).qos(QoS::AtLeastOnce);
    let Ok(Some(publ)) = conn.publish(publication).await else {
        return false;
    };
    let mut received = false;
    while !(received && conn.is_complete(&sub) && conn.is_complete(&publ)) {
        match conn.poll().await {
            Ok(Some(m)) => {
                black_box((m.topic(), m.payload()));
                received = m.payload().len() == 16;
            }
            Ok(None) => {}
            Err(_) => return false,
        }
    }
    conn.disconnect().await.is_ok()
}

#[entry]
fn main() -> ! {
    black_box(clock_now());
    let mut broker = Broker::new();
    let mut rx = [0u8; 256];
    let mut tx = [0u8; 256];
    let Ok(config) =
        ConfigBuilder::new(Buffers::new(&mut rx, &mut tx)).client_id(black_box(CLIENT_ID))
    else {
        finish(false)
    };
    let mut session = Session::new(config.keepalive_interval(black_box(60)));
    let fut = job(&mut session, &mut broker);
    probe_type!("minimq Session", Session<'static>);
    probe_type!(
        "minimq Connection<Pipe>",
        minimq::Connection<'static, 'static, Pipe<'static>>
    );
    probe_val!("minimq job future", &fut);
    let ok = block_on(fut) == Some(true);
    probe_frames!(&broker);
    finish(ok)
}
