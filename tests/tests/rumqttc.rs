//! End to end with the Rust client rumqttc 0.24, MQTT 3.1.1 (`rumqttc`) and 5.0
//! (`rumqttc::v5`): round trips at every QoS, retained messages, persistent sessions,
//! v5 user properties, and QoS 2 exactly-once under a window of 100 in flight.
//!
//! Each client's event loop runs in its own task and forwards every event to the test,
//! which records what it saw; a client ends (and its socket closes) when it is dropped.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mote_tests::Broker;

/// Generous bound for anything that should happen "now".
const SOON: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(500);

/// A rumqttc connection driven by a task, with everything its event loop reported.
/// Generated for the v4 and the v5 client, whose types differ but share names.
macro_rules! conn_module {
    ($name:ident, $root:path, $packets:path, $qos:path) => {
        pub mod $name {
            use std::time::Duration;

            use tokio::sync::mpsc;
            use tokio::task::JoinHandle;
            use tokio::time::Instant;

            use rumqttc::Outgoing;
            use $packets::{Publish, SubscribeReasonCode};
            use $qos as QoS;
            use $root::{AsyncClient, Event, Incoming, MqttOptions};

            #[derive(Debug)]
            pub struct Conn {
                pub client: AsyncClient,
                rx: mpsc::UnboundedReceiver<Result<Event, String>>,
                task: JoinHandle<()>,
                /// Session Present of the CONNACK.
                pub session_present: Option<bool>,
                /// PUBLISHes received, in order.
                pub publishes: Vec<Publish>,
                /// PUBACKs received.
                pub pubacks: usize,
                /// PUBCOMPs received.
                pub pubcomps: usize,
                /// SUBACK return codes, per SUBACK.
                pub subacks: Vec<Vec<SubscribeReasonCode>>,
                /// Our DISCONNECT went out.
                pub disconnect_sent: bool,
                /// The event loop ended with this error.
                pub closed: Option<String>,
            }

            impl Drop for Conn {
                fn drop(&mut self) {
                    self.task.abort();
                }
            }

            /// Connects with `opts` and waits for the CONNACK.
            pub async fn connect(opts: MqttOptions) -> Conn {
                let (client, mut el) = AsyncClient::new(opts, 1000);
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match el.poll().await {
                            Ok(ev) => {
                                let done = matches!(ev, Event::Outgoing(Outgoing::Disconnect));
                                if tx.send(Ok(ev)).is_err() || done {
                                    break;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                                break;
                            }
                        }
                    }
                });
                let mut c = Conn {
                    client,
                    rx,
                    task,
                    session_present: None,
                    publishes: Vec::new(),
                    pubacks: 0,
                    pubcomps: 0,
                    subacks: Vec::new(),
                    disconnect_sent: false,
                    closed: None,
                };
                c.until(super::SOON, |c| {
                    c.session_present.is_some() || c.closed.is_some()
                })
                .await;
                assert!(c.session_present.is_some(), "no CONNACK: {:?}", c.closed);
                c
            }

            impl Conn {
                fn record(&mut self, ev: Event) {
                    match ev {
                        Event::Incoming(Incoming::ConnAck(a)) => {
                            self.session_present = Some(a.session_present)
                        }
                        Event::Incoming(Incoming::Publish(p)) => self.publishes.push(p),
                        Event::Incoming(Incoming::PubAck(_)) => self.pubacks += 1,
                        Event::Incoming(Incoming::PubComp(_)) => self.pubcomps += 1,
                        Event::Incoming(Incoming::SubAck(s)) => self.subacks.push(s.return_codes),
                        Event::Outgoing(Outgoing::Disconnect) => self.disconnect_sent = true,
                        _ => {}
                    }
                }

                /// Takes events until `pred` holds or `within` passed; returns `pred`.
                pub async fn until(
                    &mut self,
                    within: Duration,
                    mut pred: impl FnMut(&Conn) -> bool,
                ) -> bool {
                    let deadline = Instant::now() + within;
                    loop {
                        if pred(self) {
                            return true;
                        }
                        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Err(_) => return pred(self),
                            Ok(None) => {
                                self.closed.get_or_insert_with(|| "event loop ended".into());
                                return pred(self);
                            }
                            Ok(Some(Err(e))) => {
                                self.closed = Some(e);
                                return pred(self);
                            }
                            Ok(Some(Ok(ev))) => self.record(ev),
                        }
                    }
                }

                /// Takes events for `d` whatever happens.
                pub async fn settle(&mut self, d: Duration) {
                    self.until(d, |_| false).await;
                }

                /// Subscribes and waits for the SUBACK.
                pub async fn subscribe(
                    &mut self,
                    filter: &str,
                    qos: QoS,
                ) -> Vec<SubscribeReasonCode> {
                    let n = self.subacks.len();
                    self.client.subscribe(filter, qos).await.unwrap();
                    assert!(
                        self.until(super::SOON, |c| c.subacks.len() > n).await,
                        "no SUBACK for {filter}: {:?}",
                        self.closed
                    );
                    self.subacks[n].clone()
                }

                /// The received publishes so far, emptying the list.
                pub fn take(&mut self) -> Vec<Publish> {
                    std::mem::take(&mut self.publishes)
                }

                /// Sends DISCONNECT and waits until it went out.
                pub async fn disconnect(mut self) {
                    self.client.disconnect().await.unwrap();
                    assert!(
                        self.until(super::SOON, |c| c.disconnect_sent || c.closed.is_some())
                            .await,
                        "DISCONNECT not sent"
                    );
                }
            }
        }
    };
}

conn_module!(c4, rumqttc, rumqttc, rumqttc::QoS);
conn_module!(
    c5,
    rumqttc::v5,
    rumqttc::v5::mqttbytes::v5,
    rumqttc::v5::mqttbytes::QoS
);

fn opts4(port: u16, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(clean)
        .set_keep_alive(Duration::from_secs(30));
    o
}

fn opts5(
    port: u16,
    id: &str,
    clean: bool,
    session_expiry: Option<u32>,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_start(clean)
        .set_keep_alive(Duration::from_secs(30));
    if let Some(e) = session_expiry {
        let mut p = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
        p.session_expiry_interval = Some(e);
        o.set_connect_properties(p);
    }
    o
}

fn q4(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).unwrap()
}

fn q5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------- round trips

async fn round_trip_v4(qos: u8) {
    let broker = Broker::start();
    let port = broker.port();
    let topic = format!("rt4/q{qos}");
    let mut sub = c4::connect(opts4(port, "rt4-sub", true)).await;
    let mut publ = c4::connect(opts4(port, "rt4-pub", true)).await;
    assert_eq!(
        sub.subscribe(&topic, q4(qos)).await,
        vec![rumqttc::SubscribeReasonCode::Success(q4(qos))]
    );
    let n = 50;
    for i in 0..n {
        publ.client
            .publish(&topic, q4(qos), false, format!("m{i}"))
            .await
            .unwrap();
    }
    let acked = |c: &c4::Conn| match qos {
        0 => true,
        1 => c.pubacks >= n,
        _ => c.pubcomps >= n,
    };
    assert!(publ.until(SOON, acked).await, "publisher flows incomplete");
    sub.until(SOON, |c| c.publishes.len() >= n).await;
    sub.settle(QUIET).await;
    let got = sub.take();
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want, "payloads, in order, once each");
    for p in &got {
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos, q4(qos));
        assert!(!p.retain, "RETAIN must be 0 on a live subscription");
        assert!(!p.dup, "no DUP on a first delivery");
    }
    sub.disconnect().await;
    publ.disconnect().await;
}

async fn round_trip_v5(qos: u8) {
    let broker = Broker::start();
    let port = broker.port();
    let topic = format!("rt5/q{qos}");
    let mut sub = c5::connect(opts5(port, "rt5-sub", true, None)).await;
    let mut publ = c5::connect(opts5(port, "rt5-pub", true, None)).await;
    assert_eq!(
        sub.subscribe(&topic, q5(qos)).await,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            q5(qos)
        )]
    );
    let n = 50;
    for i in 0..n {
        publ.client
            .publish(&topic, q5(qos), false, format!("m{i}"))
            .await
            .unwrap();
    }
    let acked = |c: &c5::Conn| match qos {
        0 => true,
        1 => c.pubacks >= n,
        _ => c.pubcomps >= n,
    };
    assert!(publ.until(SOON, acked).await, "publisher flows incomplete");
    sub.until(SOON, |c| c.publishes.len() >= n).await;
    sub.settle(QUIET).await;
    let got = sub.take();
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want, "payloads, in order, once each");
    for p in &got {
        assert_eq!(text(&p.topic), topic);
        assert_eq!(p.qos, q5(qos));
        assert!(!p.retain, "RETAIN must be 0 on a live subscription");
        assert!(!p.dup, "no DUP on a first delivery");
    }
    sub.disconnect().await;
    publ.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_round_trip_qos0() {
    round_trip_v4(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_round_trip_qos1() {
    round_trip_v4(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_round_trip_qos2() {
    round_trip_v4(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_round_trip_qos0() {
    round_trip_v5(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_round_trip_qos1() {
    round_trip_v5(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_round_trip_qos2() {
    round_trip_v5(2).await;
}

// ---------------------------------------------------------------- retained

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_retained_set_and_delete() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = c4::connect(opts4(port, "ret4-pub", true)).await;
    publ.client
        .publish("ret4/t", q4(1), true, "kept")
        .await
        .unwrap();
    assert!(publ.until(SOON, |c| c.pubacks >= 1).await);

    let mut sub = c4::connect(opts4(port, "ret4-sub", true)).await;
    sub.subscribe("ret4/#", q4(2)).await;
    sub.until(SOON, |c| !c.publishes.is_empty()).await;
    sub.settle(QUIET).await;
    let got = sub.take();
    assert_eq!(got.len(), 1, "one retained message: {got:?}");
    assert_eq!(
        (
            got[0].topic.as_str(),
            text(&got[0].payload),
            got[0].retain,
            got[0].qos
        ),
        ("ret4/t", "kept".to_owned(), true, q4(1)),
        "retained message on subscribe: RETAIN 1, QoS min(1, 2)"
    );

    // Delete: the live subscriber still sees the empty message (RETAIN 0), a new
    // subscriber gets nothing.
    publ.client
        .publish("ret4/t", q4(1), true, Vec::<u8>::new())
        .await
        .unwrap();
    assert!(publ.until(SOON, |c| c.pubacks >= 2).await);
    sub.until(SOON, |c| !c.publishes.is_empty()).await;
    let got = sub.take();
    assert_eq!(got.len(), 1);
    assert!(got[0].payload.is_empty() && !got[0].retain);

    let mut late = c4::connect(opts4(port, "ret4-late", true)).await;
    late.subscribe("ret4/#", q4(1)).await;
    late.settle(QUIET).await;
    assert!(late.take().is_empty(), "deleted retained message was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_retained_set_and_delete() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = c5::connect(opts5(port, "ret5-pub", true, None)).await;
    publ.client
        .publish("ret5/t", q5(2), true, "kept")
        .await
        .unwrap();
    assert!(publ.until(SOON, |c| c.pubcomps >= 1).await);

    let mut sub = c5::connect(opts5(port, "ret5-sub", true, None)).await;
    sub.subscribe("ret5/+", q5(1)).await;
    sub.until(SOON, |c| !c.publishes.is_empty()).await;
    sub.settle(QUIET).await;
    let got = sub.take();
    assert_eq!(got.len(), 1, "one retained message: {got:?}");
    assert_eq!(
        (
            text(&got[0].topic),
            text(&got[0].payload),
            got[0].retain,
            got[0].qos
        ),
        ("ret5/t".to_owned(), "kept".to_owned(), true, q5(1)),
        "retained message on subscribe: RETAIN 1, QoS min(2, 1)"
    );

    publ.client
        .publish("ret5/t", q5(1), true, Vec::<u8>::new())
        .await
        .unwrap();
    assert!(publ.until(SOON, |c| c.pubacks >= 1).await);
    sub.until(SOON, |c| !c.publishes.is_empty()).await;
    let got = sub.take();
    assert_eq!(got.len(), 1);
    assert!(got[0].payload.is_empty() && !got[0].retain);

    let mut late = c5::connect(opts5(port, "ret5-late", true, None)).await;
    late.subscribe("ret5/+", q5(1)).await;
    late.settle(QUIET).await;
    assert!(late.take().is_empty(), "deleted retained message was sent");
}

// ---------------------------------------------------------------- persistent sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_persistent_session_resume() {
    let broker = Broker::start();
    let port = broker.port();
    let mut first = c4::connect(opts4(port, "ps4-sub", false)).await;
    assert_eq!(first.session_present, Some(false), "no session existed");
    first.subscribe("ps4/q1", q4(1)).await;
    first.subscribe("ps4/q2", q4(2)).await;
    first.disconnect().await;

    let mut publ = c4::connect(opts4(port, "ps4-pub", true)).await;
    let n = 10;
    for i in 0..n {
        publ.client
            .publish("ps4/q1", q4(1), false, format!("a{i}"))
            .await
            .unwrap();
        publ.client
            .publish("ps4/q2", q4(2), false, format!("b{i}"))
            .await
            .unwrap();
    }
    assert!(
        publ.until(SOON, |c| c.pubacks >= n && c.pubcomps >= n)
            .await
    );

    let mut again = c4::connect(opts4(port, "ps4-sub", false)).await;
    assert_eq!(again.session_present, Some(true), "session resumed");
    again.until(SOON, |c| c.publishes.len() >= 2 * n).await;
    again.settle(QUIET).await;
    let got = again.take();
    let of = |t: &str| -> Vec<(String, rumqttc::QoS)> {
        got.iter()
            .filter(|p| p.topic == t)
            .map(|p| (text(&p.payload), p.qos))
            .collect()
    };
    let want1: Vec<_> = (0..n).map(|i| (format!("a{i}"), q4(1))).collect();
    let want2: Vec<_> = (0..n).map(|i| (format!("b{i}"), q4(2))).collect();
    assert_eq!(of("ps4/q1"), want1);
    assert_eq!(of("ps4/q2"), want2);
    assert_eq!(got.len(), 2 * n);
    again.disconnect().await;

    // Clean session afterwards: no session present, nothing delivered.
    let mut clean = c4::connect(opts4(port, "ps4-sub", true)).await;
    assert_eq!(clean.session_present, Some(false));
    publ.client
        .publish("ps4/q1", q4(1), false, "gone")
        .await
        .unwrap();
    clean.settle(QUIET).await;
    assert!(clean.take().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_persistent_session_resume() {
    let broker = Broker::start();
    let port = broker.port();
    let mut first = c5::connect(opts5(port, "ps5-sub", false, Some(300))).await;
    assert_eq!(first.session_present, Some(false), "no session existed");
    first.subscribe("ps5/q1", q5(1)).await;
    first.subscribe("ps5/q2", q5(2)).await;
    first.disconnect().await;

    let mut publ = c5::connect(opts5(port, "ps5-pub", true, None)).await;
    let n = 10;
    for i in 0..n {
        publ.client
            .publish("ps5/q1", q5(1), false, format!("a{i}"))
            .await
            .unwrap();
        publ.client
            .publish("ps5/q2", q5(2), false, format!("b{i}"))
            .await
            .unwrap();
    }
    assert!(
        publ.until(SOON, |c| c.pubacks >= n && c.pubcomps >= n)
            .await
    );

    let mut again = c5::connect(opts5(port, "ps5-sub", false, Some(300))).await;
    assert_eq!(again.session_present, Some(true), "session resumed");
    again.until(SOON, |c| c.publishes.len() >= 2 * n).await;
    again.settle(QUIET).await;
    let got = again.take();
    let of = |t: &str| -> Vec<(String, rumqttc::v5::mqttbytes::QoS)> {
        got.iter()
            .filter(|p| text(&p.topic) == t)
            .map(|p| (text(&p.payload), p.qos))
            .collect()
    };
    let want1: Vec<_> = (0..n).map(|i| (format!("a{i}"), q5(1))).collect();
    let want2: Vec<_> = (0..n).map(|i| (format!("b{i}"), q5(2))).collect();
    assert_eq!(of("ps5/q1"), want1);
    assert_eq!(of("ps5/q2"), want2);
    assert_eq!(got.len(), 2 * n);
    again.disconnect().await;

    // Session Expiry 0 on the last connection: the session is gone after it.
    let gone = c5::connect(opts5(port, "ps5-sub", false, Some(0))).await;
    assert_eq!(
        gone.session_present,
        Some(true),
        "session of expiry 300 still there"
    );
    gone.disconnect().await;
    // Let the broker handle that DISCONNECT first: a CONNECT overtaking it would be a
    // takeover, which hits the bug pinned by paho.rs `takeover_of_expiry_zero_session_*`.
    tokio::time::sleep(QUIET).await;
    let mut after = c5::connect(opts5(port, "ps5-sub", false, Some(300))).await;
    assert_eq!(
        after.session_present,
        Some(false),
        "a session with expiry 0 must end with its connection"
    );
    publ.client
        .publish("ps5/q1", q5(1), false, "nobody")
        .await
        .unwrap();
    after.settle(QUIET).await;
    assert!(after.take().is_empty(), "subscriptions must be gone");
}

// ---------------------------------------------------------------- v5 properties

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_user_properties_pass_through() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = c5::connect(opts5(port, "up5-sub", true, None)).await;
    let publ = c5::connect(opts5(port, "up5-pub", true, None)).await;
    sub.subscribe("up5/#", q5(2)).await;
    let user = vec![
        ("trace".to_owned(), "1".to_owned()),
        ("device".to_owned(), "sensor-7".to_owned()),
        ("trace".to_owned(), "2".to_owned()),
        ("empty".to_owned(), String::new()),
        ("trace".to_owned(), "1".to_owned()),
    ];
    for qos in 0..=2u8 {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("up5/reply".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x00id\xff")),
            user_properties: user.clone(),
            ..Default::default()
        };
        publ.client
            .publish_with_properties("up5/t", q5(qos), false, format!("q{qos}"), props)
            .await
            .unwrap();
        sub.until(SOON, |c| !c.publishes.is_empty()).await;
        let got = sub.take();
        assert_eq!(got.len(), 1, "qos {qos}: one message");
        let p = &got[0];
        assert_eq!(text(&p.payload), format!("q{qos}"));
        let props = p.properties.clone().unwrap_or_default();
        assert_eq!(
            props.user_properties, user,
            "qos {qos}: user properties in order"
        );
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.response_topic.as_deref(), Some("up5/reply"));
        assert_eq!(props.correlation_data.as_deref(), Some(&b"\x00id\xff"[..]));
        assert_eq!(props.payload_format_indicator, Some(1));
    }
    // Without properties, none appear.
    publ.client
        .publish("up5/t", q5(1), false, "bare")
        .await
        .unwrap();
    sub.until(SOON, |c| !c.publishes.is_empty()).await;
    let got = sub.take();
    assert_eq!(got.len(), 1);
    let props = got[0].properties.clone().unwrap_or_default();
    assert!(props.user_properties.is_empty() && props.content_type.is_none());
}

// ---------------------------------------------------------------- QoS 2 exactly once

const QOS2_N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_qos2_exactly_once_200_in_order() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = c4::connect(opts4(port, "eo4-sub", true)).await;
    let mut publ = c4::connect(opts4(port, "eo4-pub", true)).await;
    sub.subscribe("eo4/t", q4(2)).await;
    let c = publ.client.clone();
    let sender = tokio::spawn(async move {
        for i in 0..QOS2_N {
            c.publish("eo4/t", q4(2), false, format!("{i}"))
                .await
                .unwrap();
        }
    });
    let (p_done, s_done) = tokio::join!(
        publ.until(Duration::from_secs(15), |c| c.pubcomps >= QOS2_N),
        sub.until(Duration::from_secs(15), |c| c.publishes.len() >= QOS2_N)
    );
    sender.await.unwrap();
    assert!(p_done, "publisher got {} PUBCOMPs", publ.pubcomps);
    assert!(s_done, "subscriber got {} messages", sub.publishes.len());
    sub.settle(QUIET).await;
    let got: Vec<usize> = sub
        .take()
        .iter()
        .map(|p| text(&p.payload).parse().unwrap())
        .collect();
    assert_eq!(got, (0..QOS2_N).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(publ.pubcomps, QOS2_N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_exactly_once_200_in_order() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = c5::connect(opts5(port, "eo5-sub", true, None)).await;
    let mut publ = c5::connect(opts5(port, "eo5-pub", true, None)).await;
    sub.subscribe("eo5/t", q5(2)).await;
    let c = publ.client.clone();
    let sender = tokio::spawn(async move {
        for i in 0..QOS2_N {
            c.publish("eo5/t", q5(2), false, format!("{i}"))
                .await
                .unwrap();
        }
    });
    let (p_done, s_done) = tokio::join!(
        publ.until(Duration::from_secs(15), |c| c.pubcomps >= QOS2_N),
        sub.until(Duration::from_secs(15), |c| c.publishes.len() >= QOS2_N)
    );
    sender.await.unwrap();
    assert!(p_done, "publisher got {} PUBCOMPs", publ.pubcomps);
    assert!(s_done, "subscriber got {} messages", sub.publishes.len());
    sub.settle(QUIET).await;
    let got: Vec<usize> = sub
        .take()
        .iter()
        .map(|p| text(&p.payload).parse().unwrap())
        .collect();
    assert_eq!(got, (0..QOS2_N).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(publ.pubcomps, QOS2_N);
}

// ---------------------------------------------------------------- large payloads

/// The payloads of [`large_payloads_reach_every_kind_of_subscriber_intact`]: sizes
/// around the broker's splice threshold (1,024 bytes: copied below, referred to from
/// the output at or above) and well past it, each byte a function of the message.
fn large_payloads() -> Vec<Vec<u8>> {
    [10, 1023, 1024, 1025, 4096, 65_536, 300_000, 1024, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| ((i * 31 + j * 7) % 251) as u8).collect())
        .collect()
}

/// A 3.1.1 subscriber of `filter` (QoS 0) on a raw socket with a 4 KiB receive buffer
/// that reads 8 KiB at most every 5 ms: the broker's writes to it stop part-way and go
/// on later, spliced payloads included. Returns the payloads of the first `n` PUBLISHes.
fn slow_raw_subscriber(port: u16, filter: &str, n: usize) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    use mote_codec::{Packet, Protocol};
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    sock.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    let mut id = "slow-raw".as_bytes().to_vec();
    // CONNECT 3.1.1, clean session, keep alive 60, then SUBSCRIBE `filter` at QoS 0.
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8, 0, 4];
    connect.extend_from_slice(b"MQTT\x04\x02\x00\x3c");
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.append(&mut id);
    let mut subscribe = vec![0x82, (2 + 2 + filter.len() + 1) as u8, 0, 1];
    subscribe.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    subscribe.extend_from_slice(filter.as_bytes());
    subscribe.push(0);
    s.write_all(&connect).unwrap();
    s.write_all(&subscribe).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        let mut chunk = [0u8; 8192];
        while got.len() < n && std::time::Instant::now() < deadline {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                Err(_) => {}
            }
            while let Ok(Some((p, used))) = mote_codec::decode(&buf, Protocol::V311, u32::MAX) {
                if let Packet::Publish(p) = p {
                    got.push(p.payload.to_vec());
                }
                buf.drain(..used);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    })
}

/// Large payloads, fanned out at QoS 0 and 1 to a 3.1.1 subscriber, a 5.0 one with a
/// subscription identifier (its PUBLISH has properties), a plain 5.0 one and a slow raw
/// one, arrive whole, in order and byte for byte, the 5.0 properties with them: the
/// payloads the broker splices into its output instead of copying (`OutBuf`) are
/// written at their place, also when a write stops part-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_reach_every_kind_of_subscriber_intact() {
    use rumqttc::v5::mqttbytes::v5::{PublishProperties, SubscribeProperties};
    let broker = Broker::start();
    let port = broker.port();
    let payloads = large_payloads();
    let each = payloads.len();
    let mut o4 = opts4(port, "lp-v4", true);
    o4.set_max_packet_size(1 << 20, 1 << 20);
    let mut v4 = c4::connect(o4).await;
    let mut o5 = opts5(port, "lp-v5-id", true, None);
    o5.set_max_packet_size(Some(1 << 20));
    let mut with_id = c5::connect(o5).await;
    let mut o5 = opts5(port, "lp-v5", true, None);
    o5.set_max_packet_size(Some(1 << 20));
    let mut plain = c5::connect(o5).await;
    let mut o5 = opts5(port, "lp-pub", true, None);
    o5.set_max_packet_size(Some(1 << 20));
    let mut publ = c5::connect(o5).await;
    v4.subscribe("lp/#", q4(1)).await;
    plain.subscribe("lp/+", q5(1)).await;
    let sub_props = SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    with_id
        .client
        .subscribe_with_properties("lp/#", q5(1), sub_props)
        .await
        .unwrap();
    assert!(
        with_id.until(SOON, |c| !c.subacks.is_empty()).await,
        "no SUBACK"
    );
    let slow = slow_raw_subscriber(port, "lp/#", 2 * each);
    // Its SUBACK comes before anything published after this (arrival order).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for qos in [0u8, 1] {
        for (i, p) in payloads.iter().enumerate() {
            let props = PublishProperties {
                user_properties: vec![("i".into(), i.to_string())],
                ..Default::default()
            };
            // Every other one with a property: both ways of writing a PUBLISH.
            let topic = format!("lp/q{qos}");
            let payload = bytes::Bytes::from(p.clone());
            if i % 2 == 0 {
                publ.client
                    .publish_with_properties(&topic, q5(qos), false, payload, props)
                    .await
                    .unwrap();
            } else {
                publ.client
                    .publish(&topic, q5(qos), false, payload)
                    .await
                    .unwrap();
            }
        }
    }
    assert!(
        publ.until(SOON, |c| c.pubacks >= each).await,
        "publisher not acked"
    );
    let want: Vec<&[u8]> = payloads
        .iter()
        .chain(&payloads)
        .map(Vec::as_slice)
        .collect();
    let long = Duration::from_secs(20);
    assert!(v4.until(long, |c| c.publishes.len() >= 2 * each).await);
    let got: Vec<&[u8]> = v4.publishes.iter().map(|p| &p.payload[..]).collect();
    assert!(got == want, "3.1.1 subscriber: payloads differ");
    for (c, id) in [(&mut with_id, Some(42)), (&mut plain, None)] {
        assert!(c.until(long, |c| c.publishes.len() >= 2 * each).await);
        let got: Vec<&[u8]> = c.publishes.iter().map(|p| &p.payload[..]).collect();
        assert!(got == want, "5.0 subscriber (id {id:?}): payloads differ");
        for (k, p) in c.publishes.iter().enumerate() {
            let props = p.properties.clone().unwrap_or_default();
            let ids: Vec<usize> = props.subscription_identifiers.clone();
            assert_eq!(ids, id.into_iter().collect::<Vec<_>>(), "message {k}");
            let i = k % each;
            let user = if i % 2 == 0 {
                vec![("i".to_owned(), i.to_string())]
            } else {
                vec![]
            };
            assert_eq!(props.user_properties, user, "message {k}");
        }
    }
    let slow = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        slow.len(),
        2 * each,
        "slow subscriber got {} messages",
        slow.len()
    );
    assert!(
        slow.iter().map(Vec::as_slice).eq(want.iter().copied()),
        "slow subscriber: payloads differ"
    );
}
