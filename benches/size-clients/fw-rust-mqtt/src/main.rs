//! The size job with `rust-mqtt` 0.6: connect (MQTT 5), subscribe to one topic, publish a
//! 16-byte payload with QoS 1, receive one message, wait until the SUBACK and PUBACK
//! arrived, disconnect.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::num::NonZero;

use cortex_m_rt::entry;
use rust_mqtt::buffer::BumpBuffer;
use rust_mqtt::client::event::Event;
use rust_mqtt::client::options::{
    ConnectOptions, DisconnectOptions, PublicationOptions, SubscriptionOptions, TopicReference,
};
use rust_mqtt::client::Client;
use rust_mqtt::config::KeepAlive;
use rust_mqtt::types::{MqttString, TopicFilter, TopicName};
use rust_mqtt::Bytes;
use size_common::{
    block_on, clock_now, finish, probe_frames, probe_type, probe_val, Broker, Pipe, CLIENT_ID,
    PAYLOAD, PUB_TOPIC, SUB_TOPIC,
};

/// Subscribe maximum, receive maximum, send maximum, subscription identifiers, user
/// properties, incoming and outgoing topic aliases: the least the job needs.
type Mqtt<'c, 'b> = Client<'static, 'c, Pipe<'b>, BumpBuffer<'c>, 1, 1, 1, 0, 0, 0, 0>;

async fn job<'c>(client: &mut Mqtt<'c, 'c>, broker: &'c mut Broker) -> Option<()> {
    let options = ConnectOptions::new()
        .clean_start()
        .keep_alive(KeepAlive::Seconds(NonZero::new(black_box(60))?));
    let id = MqttString::try_from(black_box(CLIENT_ID)).ok()?;
    client
        .connect(Pipe(broker), &options, Some(id))
        .await
        .ok()?;

    let filter = TopicFilter::new(MqttString::try_from(black_box(SUB_TOPIC)).ok()?)?;
    client
        .subscribe(filter, &SubscriptionOptions::new().at_least_once())
        .await
        .ok()?;
    let topic = TopicName::new(MqttString::try_from(black_box(PUB_TOPIC)).ok()?)?;
    let payload: &[u8] = black_box(&PAYLOAD);
    client
        .publish(
            &PublicationOptions::new(TopicReference::Name(topic)).at_least_once(),
            Bytes::from(payload),
        )
        .await
        .ok()?;
    let (mut subacked, mut acked, mut received) = (false, false, false);
    while !(subacked && acked && received) {
        match client.poll().await.ok()? {
            Event::Suback(_) => subacked = true,
            Event::PublishAcknowledged(_) => acked = true,
            Event::Publish(p) => {
                black_box((&p.topic, &p.message));
                received = p.message.len() == 16;
            }
            _ => {}
        }
    }
    client.disconnect(&DisconnectOptions::new()).await.ok()?;
    Some(())
}

#[entry]
fn main() -> ! {
    black_box(clock_now());
    let mut broker = Broker::new();
    let mut memory = [0u8; 256];
    let mut buffer = BumpBuffer::new(&mut memory);
    let mut client: Mqtt<'_, '_> = Client::new(&mut buffer);
    probe_type!(
        "rust-mqtt Client<Pipe, BumpBuffer, 1, 1, 1, 0, 0, 0, 0>",
        Mqtt<'static, 'static>
    );
    probe_type!("rust-mqtt BumpBuffer", BumpBuffer<'static>);
    let fut = job(&mut client, &mut broker);
    probe_val!("rust-mqtt job future", &fut);
    let ok = block_on(fut) == Some(Some(()));
    probe_frames!(&broker);
    finish(ok)
}
