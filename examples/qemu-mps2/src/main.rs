//! Mote firmware for QEMU's `mps2-an385` (Cortex-M3).
//!
//! Boot, bring up the LAN9118 (`mote-lan9118`), get an address by DHCP from QEMU's user-mode
//! network, and run an MQTT 5 session through `mote-client` with the broker on the host
//! (10.0.2.2, which QEMU forwards to the host's 127.0.0.1): [`EVENTS`] `SensorEvent`s with
//! QoS 1, every one acknowledged, then DISCONNECT; leave QEMU through semihosting with
//! status 0 — or print why and leave with status 1 (also on a firmware-side timeout).
//!
//! Settings are taken at build time: `MOTE_BROKER_PORT` (default 1883) and `MOTE_EVENTS`
//! (default 10). Progress goes to the host's stdout through semihosting.
//!
//! Without the default `client` feature this is the size baseline: the same firmware up
//! to the TCP connect, which it closes again without speaking MQTT.
#![no_std]
#![no_main]

#[cfg(feature = "client")]
mod mqtt;
mod time_driver;

use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::Spawner;
#[cfg(not(feature = "client"))]
use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Runner, Stack, StackResources};
use embassy_time::{with_timeout, Duration, Instant, Ticker};
use mote_lan9118::{Lan9118, Mmio, Poller};
use static_cell::StaticCell;

/// TCP port of the broker on the host (`MOTE_BROKER_PORT` at build time).
const BROKER_PORT: u16 = parse_u16(option_env!("MOTE_BROKER_PORT"), 1883);
/// Number of events to publish (`MOTE_EVENTS` at build time).
#[cfg_attr(not(feature = "client"), allow(dead_code))]
const EVENTS: u16 = parse_u16(option_env!("MOTE_EVENTS"), 10);
/// The host as seen from QEMU's user-mode network; the only address this firmware talks to.
const BROKER_ADDR: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);
/// Locally administered station address ("MOTE" in the middle).
const MAC: [u8; 6] = [0x02, 0x4D, 0x4F, 0x54, 0x45, 0x01];

const DHCP_TIMEOUT: Duration = Duration::from_secs(30);
#[cfg(not(feature = "client"))]
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP: a connection whose data stays unacknowledged this long is aborted.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a decimal `u16` at compile time; a bad value stops the build.
const fn parse_u16(value: Option<&str>, default: u16) -> u16 {
    let Some(text) = value else { return default };
    let bytes = text.as_bytes();
    assert!(
        !bytes.is_empty(),
        "MOTE_BROKER_PORT / MOTE_EVENTS must not be empty"
    );
    let mut n: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let d = bytes[i];
        assert!(
            d.is_ascii_digit(),
            "MOTE_BROKER_PORT / MOTE_EVENTS must be decimal"
        );
        n = n * 10 + (d - b'0') as u32;
        assert!(
            n <= u16::MAX as u32,
            "MOTE_BROKER_PORT / MOTE_EVENTS must fit in a u16"
        );
        i += 1;
    }
    n as u16
}

/// Prints the reason and leaves QEMU with a failure status.
fn fail(what: core::fmt::Arguments<'_>) -> ! {
    hprintln!("mote: FAILED: {}", what);
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail(format_args!("panic: {}", info))
}

/// Drives the network stack: smoltcp polling, DHCP, ARP, TCP timers.
#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Lan9118<Mmio>>) -> ! {
    runner.run().await
}

/// Stands in for the LAN9118's interrupt line: looks at its RX FIFO every millisecond.
#[embassy_executor::task]
async fn poll_task(poller: Poller) -> ! {
    let mut ticker = Ticker::every(Duration::from_millis(1));
    loop {
        ticker.next().await;
        poller.poll();
    }
}

/// Milliseconds since reset (SysTick starts first thing in `main`).
fn uptime_ms() -> u64 {
    Instant::now().as_millis()
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let Some(core) = cortex_m::Peripherals::take() else {
        fail(format_args!("core peripherals already taken"))
    };
    time_driver::init(core.SYST);
    #[cfg(feature = "client")]
    hprintln!(
        "mote: boot; broker 10.0.2.2:{}, {} events on '{}'",
        BROKER_PORT,
        EVENTS,
        mqtt::TOPIC
    );
    #[cfg(not(feature = "client"))]
    hprintln!(
        "mote: boot (baseline: no MQTT); broker 10.0.2.2:{}",
        BROKER_PORT
    );

    let Some(mmio) = Mmio::take_mps2() else {
        fail(format_args!("LAN9118 already taken"))
    };
    let mut nic = match Lan9118::new(mmio, MAC) {
        Ok(nic) => nic,
        Err(e) => fail(format_args!("LAN9118: {}", e)),
    };
    let poller = nic.poller();
    let seed = u64::from(nic.free_running_counter()) ^ 0x6d6f_7465_6d70_7332;
    hprintln!("mote: LAN9118 up, mac {:02x?}", nic.mac());

    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, runner) =
        embassy_net::new(nic, config, RESOURCES.init(StackResources::new()), seed);
    match (net_task(runner), poll_task(poller)) {
        (Ok(net), Ok(poll)) => {
            spawner.spawn(net);
            spawner.spawn(poll);
        }
        _ => fail(format_args!("task pool exhausted")),
    }

    match run(stack).await {
        Ok(()) => {
            hprintln!("mote: done at {} ms", uptime_ms());
            debug::exit(debug::EXIT_SUCCESS);
        }
        Err(()) => debug::exit(debug::EXIT_FAILURE),
    }
}

/// DHCP, then the MQTT session (or the baseline's bare TCP connect). Failures are printed
/// here; `Err` means "exit non-zero".
async fn run(stack: Stack<'static>) -> Result<(), ()> {
    if with_timeout(DHCP_TIMEOUT, stack.wait_config_up())
        .await
        .is_err()
    {
        hprintln!(
            "mote: FAILED: no DHCP lease within {} s",
            DHCP_TIMEOUT.as_secs()
        );
        return Err(());
    }
    if let Some(cfg) = stack.config_v4() {
        hprintln!(
            "mote: dhcp {} gateway {:?} at {} ms",
            cfg.address,
            cfg.gateway,
            uptime_ms()
        );
    }
    #[cfg(feature = "client")]
    return mqtt::session(stack).await;
    #[cfg(not(feature = "client"))]
    return tcp_only(stack).await;
}

/// The size baseline: the TCP connect the client's runner would make, then an orderly
/// close; no MQTT.
#[cfg(not(feature = "client"))]
async fn tcp_only(stack: Stack<'static>) -> Result<(), ()> {
    let mut rx_buf = [0u8; 512];
    let mut tx_buf = [0u8; 1024];
    let mut socket = TcpSocket::new(stack, &mut rx_buf, &mut tx_buf);
    socket.set_timeout(Some(IO_TIMEOUT));
    match with_timeout(CONNECT_TIMEOUT, socket.connect((BROKER_ADDR, BROKER_PORT))).await {
        Ok(Ok(())) => hprintln!("mote: tcp connected at {} ms", uptime_ms()),
        Ok(Err(e)) => {
            hprintln!(
                "mote: FAILED: tcp connect to 10.0.2.2:{}: {:?}",
                BROKER_PORT,
                e
            );
            return Err(());
        }
        Err(_) => {
            hprintln!(
                "mote: FAILED: tcp connect to 10.0.2.2:{} timed out",
                BROKER_PORT
            );
            return Err(());
        }
    }
    socket.close();
    if with_timeout(IO_TIMEOUT, socket.flush()).await.is_err() {
        hprintln!("mote: warning: close not acknowledged in time");
    }
    Ok(())
}
