//! `mote-device-sim`: M simulated devices, each publishing N `SensorEvent`s at R per
//! second through `mote-client` on tokio, then a one-line summary.
//!
//! ```text
//! mote-device-sim --devices 10 --rate 50 --count 1000 --broker 127.0.0.1:1883 --qos 1 --v5
//! ```
//!
//! Device `i` is client `sim-i` and publishes on `<topic-prefix>/sim-i` (MQTT 5 adds the
//! content type `application/x-mote-event`). Each device waits for every QoS 1/2 event
//! to be acknowledged before disconnecting; the exit status is non-zero when one was
//! not, or a device failed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use mote_client::{
    Buffers, Config, ConnectFn, Event, FromTokio, Protocol, QoS, SensorEvent, Session, State,
    TokioClock, Value,
};

/// Simulated devices publishing SensorEvents to an MQTT broker through mote-client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of simulated devices (M), each with its own connection.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// Events per second per device (R); 0 publishes as fast as acknowledgements allow.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Events each device publishes (N).
    #[arg(long, default_value_t = 100)]
    count: u32,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// QoS of the events: 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Speak MQTT 5.0 (default 3.1.1).
    #[arg(long)]
    v5: bool,
    /// Topic prefix; device i publishes on `<prefix>/sim-i`.
    #[arg(long, default_value = "mote/events")]
    topic_prefix: String,
    /// Seconds to wait for the last acknowledgements.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// Counters shared by all devices.
#[derive(Debug, Default)]
struct Stats {
    published: AtomicU64,
    acknowledged: AtomicU64,
    refused: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.devices)
        .map(|i| tokio::spawn(device(i, args.clone(), stats.clone())))
        .collect();
    let mut failed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        if let Err(e) = t.await.context("device task")? {
            eprintln!("device sim-{i}: {e:#}");
            failed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let published = stats.published.load(Ordering::Relaxed);
    let acknowledged = stats.acknowledged.load(Ordering::Relaxed);
    let refused = stats.refused.load(Ordering::Relaxed);
    println!(
        "devices={} protocol={} qos={} published={published} acknowledged={acknowledged} \
         refused={refused} connects={} disconnects={} failed_devices={failed} \
         elapsed={elapsed:.3}s rate={:.1}/s",
        args.devices,
        if args.v5 { "5.0" } else { "3.1.1" },
        args.qos,
        stats.connects.load(Ordering::Relaxed),
        stats.disconnects.load(Ordering::Relaxed),
        published as f64 / elapsed.max(1e-9),
    );
    let expected = u64::from(args.devices) * u64::from(args.count);
    if failed > 0 || published != expected || (args.qos > 0 && acknowledged != expected) {
        bail!("{expected} events expected, {published} published, {acknowledged} acknowledged");
    }
    Ok(())
}

/// One simulated device: connect, publish `count` events at `rate`, wait for the acks.
async fn device(i: u32, args: Arc<Args>, stats: Arc<Stats>) -> anyhow::Result<()> {
    let id = format!("sim-{i}");
    let topic = format!("{}/sim-{i}", args.topic_prefix);
    let mut cfg = Config::new(&id);
    cfg.protocol = if args.v5 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    cfg.keep_alive = 30;
    cfg.event_topic = &topic;
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };

    let mut bufs = Box::new(Buffers::<1024, 2048, 32, 128, 2>::new());
    let (storage, io) = bufs.split();
    let state = State::<CriticalSectionRawMutex>::new(Session::new(cfg, storage));
    let (client, mut runner) = mote_client::new(&state, io, TokioClock::new());
    let broker = args.broker;
    let mut connector = ConnectFn(move || async move {
        let s = tokio::net::TcpStream::connect(broker).await?;
        s.set_nodelay(true)?;
        Ok::<_, std::io::Error>(FromTokio(s))
    });
    let on_event = |ev: Event<'_>| match ev {
        Event::Connected { .. } => {
            stats.connects.fetch_add(1, Ordering::Relaxed);
        }
        Event::Disconnected(_) => {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        Event::Published { reason, .. } if reason < 0x80 => {
            stats.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        Event::Published { .. } => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    };

    let app = async {
        let result = async {
            tokio::time::timeout(Duration::from_secs(10), client.wait_connected())
                .await
                .context("no CONNACK within 10 s")?;
            let mut tick = (args.rate > 0.0)
                .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate)));
            for seq in 0..args.count {
                if let Some(t) = &mut tick {
                    t.tick().await;
                }
                let event = SensorEvent {
                    device: i,
                    seq,
                    timestamp_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    channel: 0,
                    value: Value::F32(20.0 + (seq % 100) as f32 / 10.0),
                };
                client
                    .publish_event(&event, qos)
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                stats.published.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::timeout(Duration::from_secs(args.timeout), client.flush())
                .await
                .context("acknowledgements timed out")
        }
        .await;
        client.disconnect();
        result
    };
    let (ran, result) = tokio::join!(runner.run(&mut connector, on_event), app);
    ran.map_err(|e| anyhow::anyhow!("runner: {e}"))?;
    result
}
