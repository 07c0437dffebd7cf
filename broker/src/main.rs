//! The `mote` binary: flags, logging, runtime, signals.

use clap::Parser;
use mote_broker::config::{Cli, Command, Config};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    fixed_malloc_thresholds();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Passwd { delete, file, user }) => {
            return mote_broker::runtime::passwd(file, user, *delete)
        }
        Some(Command::Stream {
            broker,
            username,
            password,
            action,
        }) => {
            return mote_broker::admin::stream(
                *broker,
                username.as_deref(),
                password.as_deref(),
                action,
            )
        }
        Some(Command::Queue {
            broker,
            username,
            password,
            action,
        }) => {
            return mote_broker::admin::queue(
                *broker,
                username.as_deref(),
                password.as_deref(),
                action,
            )
        }
        None => {}
    }
    let config = Config::load(&cli)?;
    if cli.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = runtime(config.mqtt.threads())?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        let signalled = shutdown_signal()?;
        tokio::spawn(async move {
            signalled.await;
            tracing::info!("signal received");
            signals.cancel();
        });
        mote_broker::runtime::run(config, shutdown).await
    })
}

/// The runtime that serves connections.
///
/// With one thread it is tokio's current-thread scheduler, which runs woken tasks first
/// in, first out, in the order the I/O driver reported them ready, which is the order
/// their data arrived: packets that arrive together on different connections are handled
/// in arrival order. The multi-threaded scheduler keeps no such order by itself (a task
/// woken by I/O goes into its worker's LIFO slot, and another worker may steal and run a
/// task in parallel: a SUBSCRIBE that reached the broker just before another client's
/// PUBLISH to that topic lost the race in 15 of 50 trials, issue #10 fault 11), so there
/// every connection task takes a ticket when it is woken and hands its input to the core
/// in ticket order (`runtime/arrival.rs`).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Keeps glibc's malloc from holding on to freed memory, and from consolidating its
/// fastbins again and again.
///
/// glibc serves allocations above a threshold (128 KiB) with `mmap` and returns them
/// to the system when freed; but the first time such a block is freed it raises that
/// threshold to the block's size (up to 32 MiB) and the heap's trim threshold to twice
/// that. The broker has such blocks (4 MiB recovery reads, its index, 1 MiB snapshot
/// chunks), so after recovery or a compaction allocations of several MiB came from the
/// heap and up to 64 MiB of freed heap stayed resident: with a 64 MiB queue budget and
/// 1,000,000 queued messages, RSS after a restart was 104 MiB with the thresholds
/// moving and 81 MiB with them fixed (`benches/memory_bench.py`). Setting either
/// threshold explicitly turns the adjustment off.
///
/// Fastbins are turned off too (`M_MXFAST` 0). A message is freed once its last
/// receiver has it, thousands in a row; freeing them coalesces large free chunks, and
/// each free chunk above 64 KiB makes glibc walk every fastbin to consolidate it: 7 %
/// of the broker's CPU in a fan-in run went to `malloc_consolidate` and the unlinking it
/// does. The thread cache (tcache) still serves small sizes first. `benches/cores.py`,
/// two interleaved rounds: fan-in 2.11-2.22M -> 2.22-2.39M msgs/s, pairs 1.25-1.33M ->
/// 1.30-1.41M, fan-out 6.11-6.46M -> 6.11-6.50M; RSS per idle connection unchanged.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_malloc_thresholds() {
    extern "C" {
        fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
    const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
    const M_MXFAST: std::os::raw::c_int = 1;
    // SAFETY: `mallopt` is glibc's documented interface for these settings; it takes two
    // integers (no pointers), changes only malloc's own parameters, and is called once
    // here, before any other thread exists. A failure (return value 0) leaves glibc's
    // defaults, which are also correct, so it is ignored.
    #[allow(unsafe_code)]
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        mallopt(M_TRIM_THRESHOLD, 256 * 1024);
        mallopt(M_MXFAST, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_malloc_thresholds() {}

/// Installs the SIGINT and SIGTERM handlers now (before the listener reports ready, so a
/// signal sent right after the ready line is caught) and returns a future that resolves
/// on either.
///
/// # Errors
/// When a handler cannot be installed.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
