//! `mote-lan9118`: an [`embassy_net_driver::Driver`] for the SMSC LAN9118 Ethernet controller,
//! written for the one QEMU emulates on its `mps2-an385` board (registers at `0x4020_0000`).
//!
//! - Polled, no interrupt line: the chip is asked whether a frame waits (RX status FIFO
//!   level) when the network stack polls, and [`Poller::poll`], called every millisecond or
//!   so from a task or a timer interrupt, wakes the stack when one arrived. See [`Poller`].
//! - One frame per TX segment: command words A and B, then the frame's words, into the TX
//!   data FIFO; the TX status FIFO is drained as it fills. RX pops one status word, then
//!   exactly that many data words (the 4-byte CRC is read and dropped).
//! - A frame with an error status, a runt or an oversized frame is read out and dropped, so
//!   the FIFOs never lose step.
//! - The only `unsafe` is the volatile MMIO in [`Mmio`]; every block says why it is sound.
//!   The driver logic is generic over [`Bus`] and unit-tested against a simulated chip.
//!
//! One controller per program: the waker the stack parks on is a `static`.
#![cfg_attr(not(test), no_std)]

mod regs;

use core::sync::atomic::{AtomicBool, Ordering};
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

pub use regs::Bus;
use regs::*;

/// Largest Ethernet frame handed to or taken from the stack (no CRC, no VLAN tag).
pub const MAX_FRAME: usize = 1514;
/// Size of the RX and TX frame buffers: a maximal frame plus its CRC, rounded to words.
const BUF_LEN: usize = 1536;
/// TX data FIFO bytes needed before a [`TxToken`] is handed out: a padded maximal frame
/// plus the two command words.
const TX_SPACE_NEEDED: u32 = (MAX_FRAME as u32).div_ceil(4) * 4 + 8;
/// Bound on the busy-waits for self-clearing bits (reset, MAC CSR, MII). QEMU clears them
/// at once; real silicon within microseconds.
const SPIN_LIMIT: u32 = 100_000;

/// The stack's task, parked until a frame arrives or TX space frees up.
static WAKER: AtomicWaker = AtomicWaker::new();
/// The stack is waiting for something only a later poll can notice (TX space, link up).
static WAITING: AtomicBool = AtomicBool::new(false);

/// Why the controller could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing that identifies as a LAN911x answers at the address.
    #[error("no LAN911x found (ID_REV {id_rev:#010x}, BYTE_TEST {byte_test:#010x})")]
    NotFound {
        /// What the ID_REV register read.
        id_rev: u32,
        /// What the BYTE_TEST register read (0x87654321 on a working bus).
        byte_test: u32,
    },
    /// A self-clearing bit (soft reset, MAC CSR or MII busy) never cleared.
    #[error("the controller did not finish {0}")]
    Timeout(&'static str),
}

/// The LAN9118's registers reached by volatile loads and stores at a fixed address.
#[derive(Debug)]
pub struct Mmio {
    base: usize,
}

/// Set once the mps2 controller has been handed out, so there is only ever one owner.
#[cfg(all(target_arch = "arm", target_os = "none"))]
static MPS2_TAKEN: AtomicBool = AtomicBool::new(false);

impl Mmio {
    /// Base address of the LAN9118 on QEMU's `mps2-an385`/`an386`/`an500`/`an511` boards.
    pub const MPS2_BASE: usize = 0x4020_0000;

    /// Claims the LAN9118 of an mps2 board. `None` if it was already claimed.
    #[cfg(all(target_arch = "arm", target_os = "none"))]
    pub fn take_mps2() -> Option<Self> {
        if MPS2_TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Self {
            base: Self::MPS2_BASE,
        })
    }

    /// Wraps the register block at `base`.
    ///
    /// # Safety
    /// `base` must be the address of a LAN9118's 256-byte register block, mapped as device
    /// memory, and nothing else may access that block while the returned value lives.
    pub unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    /// Address of the register at byte offset `reg`.
    fn addr(&self, reg: u32) -> *mut u32 {
        debug_assert!(reg < 0x100 && reg.is_multiple_of(4));
        (self.base + reg as usize) as *mut u32
    }
}

impl Bus for Mmio {
    fn read(&mut self, reg: u32) -> u32 {
        // SAFETY: `self.base` is a LAN9118 register block owned by this `Mmio` alone (the
        // contract of `new`, or the one-shot claim in `take_mps2`), `reg` is a register
        // offset inside that 256-byte block and a multiple of 4, so the address is valid and
        // aligned for a 32-bit volatile load, and no Rust reference aliases device memory.
        unsafe { core::ptr::read_volatile(self.addr(reg)) }
    }

    fn write(&mut self, reg: u32, value: u32) {
        // SAFETY: as in `read`: an aligned register of the block this `Mmio` exclusively
        // owns; a volatile store to device memory touches no Rust-visible memory.
        unsafe { core::ptr::write_volatile(self.addr(reg), value) }
    }
}

/// Wakes the network stack when the controller has something for it.
///
/// The driver has no interrupt line, so something must look at the chip from time to time:
/// call [`Poller::poll`] every millisecond or so (from a ticker task or a timer interrupt).
/// It only reads the RX FIFO level, a register without side effects, so it may run while
/// the driver is in the middle of a frame.
#[derive(Debug, Clone, Copy)]
pub struct Poller {
    base: usize,
}

impl Poller {
    /// Wakes the stack if a received frame waits or it asked to be polled again.
    pub fn poll(&self) {
        // SAFETY: `base` was copied from an `Mmio`, so it is a LAN9118 register block;
        // RX_FIFO_INF is an aligned, read-only status register whose read has no side
        // effect, so this load cannot disturb the owner's FIFO transfers.
        let inf =
            unsafe { core::ptr::read_volatile((self.base + RX_FIFO_INF as usize) as *const u32) };
        if rx_frames_waiting(inf) > 0 || WAITING.swap(false, Ordering::AcqRel) {
            WAKER.wake();
        }
    }
}

/// Frames waiting in the RX status FIFO, from an `RX_FIFO_INF` value.
fn rx_frames_waiting(rx_fifo_inf: u32) -> u32 {
    (rx_fifo_inf >> 16) & 0xFF
}

/// A LAN9118 brought up and ready to be handed to `embassy_net::new`.
#[derive(Debug)]
pub struct Lan9118<B: Bus> {
    bus: B,
    mac: [u8; 6],
    rx: [u8; BUF_LEN],
    tx: [u8; BUF_LEN],
    tag: u16,
}

impl Lan9118<Mmio> {
    /// A [`Poller`] for this controller, to call periodically (see its docs).
    pub fn poller(&self) -> Poller {
        Poller {
            base: self.bus.base,
        }
    }
}

impl<B: Bus> Lan9118<B> {
    /// Resets the controller and brings it up: station address `mac`, transmitter and
    /// receiver on, unicast to `mac` and broadcast accepted, no interrupts.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the registers do not identify a LAN911x; [`Error::Timeout`] if
    /// reset or a MAC register access never completes.
    pub fn new(mut bus: B, mac: [u8; 6]) -> Result<Self, Error> {
        let byte_test = bus.read(BYTE_TEST);
        let id_rev = bus.read(ID_REV);
        let chip = id_rev >> 16;
        // LAN9115..9118 (and their "A" revisions), and the register-compatible LAN9210..9221
        // and LAN9250 (real MPS2 boards carry a LAN9220; QEMU models a LAN9118).
        let known = matches!(chip, 0x0115..=0x0118 | 0x115A..=0x118A | 0x9210..=0x9221 | 0x9250);
        if byte_test != BYTE_TEST_VALUE || !known {
            return Err(Error::NotFound { id_rev, byte_test });
        }
        let mut dev = Self {
            bus,
            mac,
            rx: [0; BUF_LEN],
            tx: [0; BUF_LEN],
            tag: 0,
        };
        dev.reset()?;
        Ok(dev)
    }

    /// The station address the controller filters on and sends from.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Value of the chip's free-running 25 MHz counter (a cheap seed for the stack's RNG).
    pub fn free_running_counter(&mut self) -> u32 {
        self.bus.read(FREE_RUN)
    }

    /// Soft reset, then the configuration described on [`Lan9118::new`].
    fn reset(&mut self) -> Result<(), Error> {
        self.bus.write(HW_CFG, HW_CFG_SRST);
        self.spin_until("soft reset", |bus| bus.read(HW_CFG) & HW_CFG_SRST == 0)?;
        self.spin_until("power-up", |bus| bus.read(PMT_CTRL) & PMT_CTRL_READY != 0)?;

        // Polled driver: interrupt pin off, every source masked, stale status cleared.
        self.bus.write(IRQ_CFG, 0);
        self.bus.write(INT_EN, 0);
        self.bus.write(INT_STS, u32::MAX);

        let (low, high) = mac_to_addr_regs(self.mac);
        self.mac_write(MAC_ADDRL, low)?;
        self.mac_write(MAC_ADDRH, high)?;

        // RX data starts at offset 0 of the first word, frames end on a word boundary.
        self.bus.write(RX_CFG, RX_CFG_RX_DUMP);
        self.bus
            .write(TX_CFG, TX_CFG_TXS_DUMP | TX_CFG_TXD_DUMP | TX_CFG_TX_ON);
        // Out of reset MAC_CR is promiscuous; keep only what the stack wants: our unicast
        // address and broadcast (DHCP offers, ARP requests).
        self.mac_write(MAC_CR, MAC_CR_TXEN | MAC_CR_RXEN | MAC_CR_FDPX)?;
        Ok(())
    }

    /// Busy-waits, boundedly, until `done` holds.
    fn spin_until(
        &mut self,
        what: &'static str,
        mut done: impl FnMut(&mut B) -> bool,
    ) -> Result<(), Error> {
        for _ in 0..SPIN_LIMIT {
            if done(&mut self.bus) {
                return Ok(());
            }
        }
        Err(Error::Timeout(what))
    }

    /// Writes MAC CSR `reg` through the MAC_CSR_CMD/MAC_CSR_DATA window.
    fn mac_write(&mut self, reg: u8, value: u32) -> Result<(), Error> {
        self.spin_until("a MAC register access", |bus| {
            bus.read(MAC_CSR_CMD) & MAC_CSR_BUSY == 0
        })?;
        self.bus.write(MAC_CSR_DATA, value);
        self.bus.write(MAC_CSR_CMD, MAC_CSR_BUSY | u32::from(reg));
        self.spin_until("a MAC register access", |bus| {
            bus.read(MAC_CSR_CMD) & MAC_CSR_BUSY == 0
        })
    }

    /// Reads MAC CSR `reg` through the MAC_CSR_CMD/MAC_CSR_DATA window.
    fn mac_read(&mut self, reg: u8) -> Result<u32, Error> {
        self.spin_until("a MAC register access", |bus| {
            bus.read(MAC_CSR_CMD) & MAC_CSR_BUSY == 0
        })?;
        self.bus
            .write(MAC_CSR_CMD, MAC_CSR_BUSY | MAC_CSR_READ | u32::from(reg));
        self.spin_until("a MAC register access", |bus| {
            bus.read(MAC_CSR_CMD) & MAC_CSR_BUSY == 0
        })?;
        Ok(self.bus.read(MAC_CSR_DATA))
    }

    /// Reads register `reg` of the internal PHY over MII.
    fn phy_read(&mut self, reg: u32) -> Result<u32, Error> {
        self.mac_write(MAC_MII_ACC, MII_ACC_PHY_ADDR | (reg << 6) | MII_ACC_BUSY)?;
        for _ in 0..SPIN_LIMIT {
            if self.mac_read(MAC_MII_ACC)? & MII_ACC_BUSY == 0 {
                return Ok(self.mac_read(MAC_MII_DATA)? & 0xFFFF);
            }
        }
        Err(Error::Timeout("a PHY register access"))
    }

    /// Pops and ignores TX status words (the stack has no use for per-frame results; a
    /// full status FIFO would stop the transmitter on real silicon).
    fn drain_tx_status(&mut self) {
        let used = (self.bus.read(TX_FIFO_INF) >> 16) & 0xFF;
        for _ in 0..used {
            let _status = self.bus.read(TX_STATUS_FIFO) & TX_STS_ERROR;
        }
    }

    /// Whether a maximal frame fits in the TX data FIFO now.
    fn tx_space(&mut self) -> bool {
        self.bus.read(TX_FIFO_INF) & 0xFFFF >= TX_SPACE_NEEDED
    }

    /// Reads the next good frame into `self.rx`, dropping bad ones; its length, or `None`
    /// if no frame waits.
    fn pop_frame(&mut self) -> Option<usize> {
        let waiting = rx_frames_waiting(self.bus.read(RX_FIFO_INF));
        for _ in 0..waiting {
            let status = RxStatus(self.bus.read(RX_STATUS_FIFO));
            let accepted = status.accept(BUF_LEN);
            for i in 0..status.fifo_words() {
                let word = self.bus.read(RX_DATA_FIFO);
                if accepted.is_some() {
                    self.rx[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
                }
            }
            if accepted.is_some() {
                return accepted;
            }
        }
        None
    }

    /// A token for one frame, if the TX FIFO has room for a maximal one.
    fn tx_token(&mut self, cx: &mut Context<'_>) -> Option<TxToken<'_, B>> {
        self.drain_tx_status();
        if !self.tx_space() {
            WAKER.register(cx.waker());
            WAITING.store(true, Ordering::Release);
            return None;
        }
        self.tag = self.tag.wrapping_add(1);
        Some(TxToken {
            bus: &mut self.bus,
            buf: &mut self.tx,
            tag: self.tag,
        })
    }
}

impl<B: Bus> embassy_net_driver::Driver for Lan9118<B> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, B>
    where
        Self: 'a;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A received frame usually wants an answer (an ACK); only take it when one can go out.
        self.drain_tx_status();
        if !self.tx_space() {
            WAKER.register(cx.waker());
            WAITING.store(true, Ordering::Release);
            return None;
        }
        // Register before looking, so a frame that lands in between still wakes us.
        WAKER.register(cx.waker());
        let len = self.pop_frame()?;
        self.tag = self.tag.wrapping_add(1);
        let rx = RxToken {
            buf: &mut self.rx[..len],
        };
        let tx = TxToken {
            bus: &mut self.bus,
            buf: &mut self.tx,
            tag: self.tag,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<Self::TxToken<'_>> {
        self.tx_token(cx)
    }

    fn link_state(&mut self, cx: &mut Context<'_>) -> LinkState {
        match self.phy_read(PHY_BSR) {
            Ok(bsr) if bsr & PHY_BSR_LINK != 0 => LinkState::Up,
            _ => {
                // No link interrupt either: ask the poller to look again soon.
                WAKER.register(cx.waker());
                WAITING.store(true, Ordering::Release);
                LinkState::Down
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(1);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}

/// One received frame, already copied out of the RX FIFO.
#[derive(Debug)]
pub struct RxToken<'a> {
    buf: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        f(self.buf)
    }
}

/// Room for one frame in the TX FIFO; the frame is pushed when the token is consumed.
#[derive(Debug)]
pub struct TxToken<'a, B: Bus> {
    bus: &'a mut B,
    buf: &'a mut [u8; BUF_LEN],
    tag: u16,
}

impl<B: Bus> embassy_net_driver::TxToken for TxToken<'_, B> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // The stack never asks for more than `capabilities().max_transmission_unit`.
        let len = len.min(MAX_FRAME);
        let frame = &mut self.buf[..len];
        let result = f(frame);
        self.bus.write(TX_DATA_FIFO, tx_cmd_a(len));
        self.bus.write(TX_DATA_FIFO, tx_cmd_b(self.tag, len));
        for chunk in self.buf[..len].chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            self.bus.write(TX_DATA_FIFO, u32::from_le_bytes(word));
        }
        result
    }
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests;
