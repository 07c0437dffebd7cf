//! Connection-rate mode (`--connect-rate N`): how many whole MQTT connections a broker
//! takes per second. Each connection is a TCP connect, the TLS handshake with `--tls`,
//! CONNECT and its CONNACK, then DISCONNECT and the broker closing the socket.
//!
//! Invariants:
//! - N connections are opened by `--connect-concurrency` workers, each running its
//!   connections one after another: at most that many are in progress at any moment.
//!   (Mote closes a further socket from one address once 64 have not completed CONNECT,
//!   its default `max_pending_per_ip`; keep the concurrency below that.)
//! - The broker closes each connection first (after DISCONNECT), so the TIME_WAIT state
//!   stays on its side and a long run does not use up the client's ephemeral ports.
//! - A failed connection is counted and the run goes on; the run is valid only when none
//!   failed.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::mqtt::Conn;
use crate::stats::Histogram;
use crate::tls::{TlsInfo, TlsVerify, TlsVersion};
use crate::{latency_report, print_latencies, print_verdict, LatencyReport, Plan};

/// Error messages kept per worker (the count of failures is always complete).
const ERRORS_KEPT: usize = 3;

/// What the connection-rate mode reports.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectRateReport {
    broker: String,
    /// "3.1.1" or "5.0".
    protocol: &'static str,
    mode: &'static str,
    /// "tcp" or "tls".
    transport: &'static str,
    /// TLS versions the client offered: "1.2", "1.3" or "any".
    tls_versions_offered: Option<&'static str>,
    /// The client presented a certificate (mutual TLS).
    client_cert: bool,
    /// TLS sessions were resumed when the server allowed it (otherwise every handshake
    /// was a full one).
    tls_resume: bool,
    /// The broker's chain verified on every handshake ("full") or once ("cached").
    tls_verify: Option<&'static str>,
    /// What the first successful handshake settled on.
    tls: Option<TlsInfo>,
    /// Connections attempted.
    connections: u64,
    /// Connections in progress at once at most.
    concurrency: u64,
    /// Connections that got their CONNACK and were closed by the broker after
    /// DISCONNECT.
    completed: u64,
    failed: u64,
    /// From the first connect to the end of the last connection.
    secs: f64,
    /// `completed` per second.
    conns_per_sec: f64,
    /// From starting the TCP connect to reading the CONNACK.
    connect_us: Option<LatencyReport>,
    /// From starting the TCP connect to the transport being ready (TCP connected, and
    /// with TLS the handshake done).
    transport_us: Option<LatencyReport>,
    /// No connection failed.
    pub(crate) valid: bool,
    problems: Vec<String>,
}

/// What one worker did.
#[derive(Debug, Default)]
struct WorkerResult {
    completed: u64,
    failed: u64,
    errors: Vec<String>,
    connect: Histogram,
    transport: Histogram,
    done_at: Option<Instant>,
    tls: Option<TlsInfo>,
}

impl WorkerResult {
    fn fail(&mut self, i: u64, e: &anyhow::Error) {
        self.failed += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(format!("connection {i}: {e:#}"));
        }
    }
}

/// Opens `--connect-rate` connections, `--connect-concurrency` at a time, and reports
/// the rate and the latencies.
///
/// # Errors
/// Only when a worker task panicked; failed connections are counted instead.
pub(crate) async fn run(plan: Arc<Plan>) -> anyhow::Result<ConnectRateReport> {
    let a = &plan.args;
    let n = a.connect_rate;
    let workers = u64::from(a.connect_concurrency).min(n).max(1);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let plan = plan.clone();
            tokio::spawn(async move { worker(w, workers, &plan).await })
        })
        .collect();
    let mut total = WorkerResult::default();
    for t in tasks {
        let r = t.await?;
        total.completed += r.completed;
        total.failed += r.failed;
        total.errors.extend(r.errors);
        total.connect.merge(&r.connect);
        total.transport.merge(&r.transport);
        total.done_at = total.done_at.max(r.done_at);
        total.tls = total.tls.or(r.tls);
    }
    let secs = total.done_at.map_or(0.0, |t| (t - start).as_secs_f64());
    let mut problems = Vec::new();
    if total.failed > 0 {
        problems.push(format!("{} of {n} connections failed", total.failed));
        problems.extend(total.errors);
    }
    Ok(ConnectRateReport {
        broker: a.broker.to_string(),
        protocol: if a.v5 { "5.0" } else { "3.1.1" },
        mode: "connect-rate",
        transport: if plan.tls.is_some() { "tls" } else { "tcp" },
        tls_versions_offered: plan.tls.is_some().then_some(match a.tls.tls_version {
            TlsVersion::V12 => "1.2",
            TlsVersion::V13 => "1.3",
            TlsVersion::Any => "any",
        }),
        client_cert: plan.tls.is_some() && a.tls.cert.is_some(),
        tls_resume: plan.tls.is_some() && a.tls.tls_resume,
        tls_verify: plan.tls.is_some().then_some(match a.tls.tls_verify {
            TlsVerify::Full => "full",
            TlsVerify::Cached => "cached",
        }),
        tls: total.tls,
        connections: n,
        concurrency: workers,
        completed: total.completed,
        failed: total.failed,
        secs,
        conns_per_sec: if secs > 0.0 {
            total.completed as f64 / secs
        } else {
            0.0
        },
        connect_us: latency_report(&total.connect),
        transport_us: latency_report(&total.transport),
        valid: problems.is_empty(),
        problems,
    })
}

/// Worker `w` of `workers`: connections `w, w + workers, ...`, one after another.
async fn worker(w: u64, workers: u64, plan: &Plan) -> WorkerResult {
    let mut r = WorkerResult::default();
    for i in (w..plan.args.connect_rate).step_by(workers as usize) {
        let opts = plan.plain_opts("rate", i);
        let t0 = Instant::now();
        match Conn::connect(plan.args.broker, &opts).await {
            Ok((c, _)) => {
                r.connect.record(t0.elapsed().as_nanos() as u64);
                r.transport.record(c.transport_setup().as_nanos() as u64);
                if r.tls.is_none() {
                    r.tls = c.tls_info();
                }
                match c.disconnect_broker_closes().await {
                    Ok(()) => r.completed += 1,
                    Err(e) => r.fail(i, &e),
                }
            }
            Err(e) => r.fail(i, &e),
        }
        r.done_at = Some(Instant::now());
    }
    r
}

/// The report as text.
pub(crate) fn print_text(r: &ConnectRateReport) {
    println!(
        "mqtt-load {} protocol {} connect-rate over {}: {} connections, {} at a time",
        r.broker, r.protocol, r.transport, r.connections, r.concurrency
    );
    if let Some(t) = &r.tls {
        println!(
            "tls:      {} {} {}{}",
            t.version,
            t.cipher_suite,
            t.kx_group,
            if r.client_cert {
                ", client certificate"
            } else {
                ""
            }
        );
    }
    println!(
        "rate:     {:>10.0} connections/s  ({} completed, {} failed) in {:.3} s",
        r.conns_per_sec, r.completed, r.failed, r.secs
    );
    print_latencies(&[
        ("connack:  ", &r.connect_us),
        ("transport:", &r.transport_us),
    ]);
    print_verdict(&r.problems, r.valid);
}
