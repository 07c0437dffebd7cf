//! `mote queue ...`: the work queues of a running broker, over MQTT 5 with the codec on
//! a plain socket (a short-lived operator command needs no runtime).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::BytesMut;
use mote_codec::{
    check, decode_body, Connect, Packet, Properties, Protocol, Publish, QoS, SubOptions, Subscribe,
    SubscribeFilter,
};

use crate::config::{QueueAction, StreamAction};

/// How long the broker may take to answer.
const WAIT: Duration = Duration::from_secs(5);

/// How long `ls` collects `$SYS` values after the last one came.
const QUIET: Duration = Duration::from_millis(300);

/// Runs `mote queue ACTION` against the broker at `addr`.
///
/// # Errors
/// When the broker cannot be reached, refuses the connection or the request.
pub fn queue(
    addr: SocketAddr,
    username: Option<&str>,
    password: Option<&str>,
    action: &QueueAction,
) -> anyhow::Result<()> {
    let mut c = Conn::connect(addr, username, password)?;
    match action {
        QueueAction::Ls => ls(&mut c),
        QueueAction::Stats { name } => {
            let keys = ["depth", "inflight", "consumers", "dead_lettered", "delayed"];
            let rows = sys_table(&mut c, "$SYS/broker/queues/+/+", &keys)?;
            let mut found = false;
            for q in [name.clone(), format!("{name}.dlq")] {
                if let Some(v) = rows.get(&q) {
                    found = true;
                    println!("{q}");
                    for (k, v) in keys.iter().zip(v) {
                        println!("  {k:<14} {v}");
                    }
                }
            }
            if !found {
                bail!("no queue {name} (or no $SYS yet: it is published every sys_interval_secs)");
            }
            Ok(())
        }
        QueueAction::Declare { name, settings } => {
            serde_json::from_str::<crate::config::QueueDecl>(settings)
                .context("the settings are not a queue declaration")?;
            let (code, why) = c.publish(&format!("$admin/queue/{name}"), settings.as_bytes())?;
            answer(code, why, &format!("queue {name} declared"))
        }
        QueueAction::Redrive { name } => {
            let (code, why) = c.publish(&format!("$admin/queue/{name}/redrive"), b"")?;
            answer(code, why.clone(), why.as_deref().unwrap_or("done"))
        }
    }
}

/// Runs `mote stream ACTION` against the broker at `addr`.
///
/// # Errors
/// When the broker cannot be reached, refuses the connection or the request.
pub fn stream(
    addr: SocketAddr,
    username: Option<&str>,
    password: Option<&str>,
    action: &StreamAction,
) -> anyhow::Result<()> {
    let mut c = Conn::connect(addr, username, password)?;
    match action {
        StreamAction::Ls => {
            let keys = ["first_offset", "last_offset", "messages", "bytes"];
            let rows = sys_table(&mut c, "$SYS/broker/streams/+/+", &keys)?;
            println!(
                "{:<40} {:>14} {:>14} {:>12} {:>14}",
                "STREAM", "FIRST_OFFSET", "LAST_OFFSET", "MESSAGES", "BYTES"
            );
            for (name, v) in rows {
                println!(
                    "{name:<40} {:>14} {:>14} {:>12} {:>14}",
                    v[0], v[1], v[2], v[3]
                );
            }
            Ok(())
        }
        StreamAction::Stats { name } => {
            let filter = format!("$SYS/broker/streams/{name}/groups/+/+");
            let rows = sys_table(&mut c, &filter, &["committed", "lag"])?;
            println!("{:<40} {:>14} {:>12}", "GROUP", "COMMITTED", "LAG");
            for (group, v) in rows {
                println!("{group:<40} {:>14} {:>12}", v[0], v[1]);
            }
            Ok(())
        }
        StreamAction::Declare { name, settings } => {
            serde_json::from_str::<crate::config::StreamDecl>(settings)
                .context("the settings are not a stream declaration")?;
            let (code, why) = c.publish(&format!("$admin/stream/{name}"), settings.as_bytes())?;
            answer(code, why, &format!("stream {name} declared"))
        }
    }
}

/// The retained `$SYS` values under `filter` (`PREFIX/ROW/KEY`), by row, in the
/// order of `keys`.
fn sys_table<const N: usize>(
    c: &mut Conn,
    filter: &str,
    keys: &[&str; N],
) -> anyhow::Result<std::collections::BTreeMap<String, [String; N]>> {
    c.subscribe(filter)?;
    let prefix = filter.trim_end_matches("+/+");
    let mut rows: std::collections::BTreeMap<String, [String; N]> = Default::default();
    while let Some((topic, payload)) = c.next_publish(QUIET)? {
        let mut parts = topic.rsplitn(2, '/');
        let (Some(key), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let row = rest.trim_start_matches(prefix).to_owned();
        if let Some(i) = keys.iter().position(|k| *k == key) {
            rows.entry(row)
                .or_insert_with(|| std::array::from_fn(|_| String::new()))[i] =
                String::from_utf8_lossy(&payload).into_owned();
        }
    }
    Ok(rows)
}

fn answer(code: u8, why: Option<String>, ok: &str) -> anyhow::Result<()> {
    if code >= 0x80 {
        bail!(
            "refused (reason {code:#04x}): {}",
            why.unwrap_or_else(|| "no reason given".to_owned())
        );
    }
    println!("{ok}");
    Ok(())
}

/// Prints the queues' counters: the retained `$SYS/broker/queues/NAME/KEY` values.
fn ls(c: &mut Conn) -> anyhow::Result<()> {
    let keys = ["depth", "inflight", "consumers", "dead_lettered", "delayed"];
    let rows = sys_table(c, "$SYS/broker/queues/+/+", &keys)?;
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>14} {:>10}",
        "QUEUE", "DEPTH", "INFLIGHT", "CONSUMERS", "DEAD_LETTERED", "DELAYED"
    );
    for (name, v) in rows {
        println!(
            "{name:<40} {:>10} {:>10} {:>10} {:>14} {:>10}",
            v[0], v[1], v[2], v[3], v[4]
        );
    }
    Ok(())
}

/// An MQTT 5 connection, one request at a time.
struct Conn {
    sock: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn connect(
        addr: SocketAddr,
        username: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<Conn> {
        let sock = TcpStream::connect_timeout(&addr, WAIT)
            .with_context(|| format!("cannot reach the broker at {addr}"))?;
        let mut c = Conn {
            sock,
            buf: BytesMut::new(),
        };
        let id = format!("mote-admin-{}", std::process::id());
        c.send(&Packet::Connect(Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: &id,
            will: None,
            username,
            password: password.map(str::as_bytes),
        }))?;
        let deadline = Instant::now() + WAIT;
        loop {
            match c.next(deadline)? {
                Some(Reply::ConnAck(0)) => return Ok(c),
                Some(Reply::ConnAck(code)) => {
                    bail!("the broker refused the connection (reason {code:#04x})")
                }
                Some(_) => {}
                None => bail!("no CONNACK within {WAIT:?}"),
            }
        }
    }

    fn send(&mut self, p: &Packet<'_>) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        p.encode_to(Protocol::V5, &mut out)
            .map_err(|e| anyhow::anyhow!("cannot encode: {e}"))?;
        self.sock.write_all(&out).context("write to the broker")
    }

    /// Publishes at QoS 1: the PUBACK's reason code and reason string.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<(u8, Option<String>)> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: 1,
            properties: Properties::default(),
            payload,
        }))?;
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next(deadline)? {
                Some(Reply::PubAck(code, why)) => return Ok((code, why)),
                Some(_) => {}
                None => bail!("no PUBACK within {WAIT:?}"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        let filters = [SubscribeFilter {
            filter,
            options: SubOptions::qos(QoS::AtMostOnce),
        }];
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: mote_codec::List::Slice(&filters),
        }))
    }

    /// The next PUBLISH, or `None` once nothing came for `quiet`.
    fn next_publish(&mut self, quiet: Duration) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        loop {
            match self.next(Instant::now() + quiet)? {
                Some(Reply::Publish(t, p)) => return Ok(Some((t, p))),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next packet the broker sent, by `deadline`.
    fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<Reply>> {
        loop {
            if let Some(h) =
                check(&self.buf, u32::MAX >> 4).map_err(|e| anyhow::anyhow!("bad packet: {e}"))?
            {
                if self.buf.len() >= h.frame_len() {
                    let frame = self.buf.split_to(h.frame_len());
                    let body = &frame[h.header_len..];
                    let p = decode_body(&h, body, Protocol::V5)
                        .map_err(|e| anyhow::anyhow!("bad packet: {e}"))?;
                    return Ok(Some(match p {
                        Packet::ConnAck(a) => Reply::ConnAck(a.code),
                        Packet::PubAck(a) => Reply::PubAck(
                            a.reason,
                            a.properties.values().reason_string.map(str::to_owned),
                        ),
                        Packet::Publish(p) => {
                            Reply::Publish(p.topic.to_owned(), p.payload.to_vec())
                        }
                        Packet::Disconnect(d) => {
                            bail!("the broker disconnected (reason {:#04x})", d.reason)
                        }
                        _ => Reply::Other,
                    }));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => bail!("the broker closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e).context("read from the broker"),
            }
        }
    }
}

/// What the admin command cares about in the broker's packets.
enum Reply {
    ConnAck(u8),
    PubAck(u8, Option<String>),
    Publish(String, Vec<u8>),
    Other,
}
