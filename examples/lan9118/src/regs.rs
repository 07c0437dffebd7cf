//! The LAN9118 register map, the bits this driver uses, and the [`Bus`] it reaches them through.
//!
//! Offsets and bits follow the SMSC LAN9118 datasheet (system control and status registers,
//! section 5.3; MAC control and status registers, section 5.4). Only registers that QEMU's
//! model implements are named here: QEMU aborts the whole machine on an access to an offset
//! it does not know, so this list doubles as "safe to touch".

/// Receive data FIFO port (reads pop one 32-bit word; 0x00..0x1C are aliases).
pub(crate) const RX_DATA_FIFO: u32 = 0x00;
/// Transmit data FIFO port (writes push one 32-bit word; 0x20..0x3C are aliases).
pub(crate) const TX_DATA_FIFO: u32 = 0x20;
/// Receive status FIFO port: one status word per received frame.
pub(crate) const RX_STATUS_FIFO: u32 = 0x40;
/// Transmit status FIFO port: one status word per transmitted frame.
pub(crate) const TX_STATUS_FIFO: u32 = 0x48;
/// Chip id (high half) and revision (low half).
pub(crate) const ID_REV: u32 = 0x50;
/// Interrupt pin configuration.
pub(crate) const IRQ_CFG: u32 = 0x54;
/// Interrupt status, write 1 to clear.
pub(crate) const INT_STS: u32 = 0x58;
/// Interrupt enables.
pub(crate) const INT_EN: u32 = 0x5C;
/// Reads 0x8765_4321 whatever the bus width and byte order.
pub(crate) const BYTE_TEST: u32 = 0x64;
/// Receive configuration (end alignment, data offset, dump).
pub(crate) const RX_CFG: u32 = 0x6C;
/// Transmit configuration (TX_ON, dumps).
pub(crate) const TX_CFG: u32 = 0x70;
/// Hardware configuration (soft reset, FIFO sizes).
pub(crate) const HW_CFG: u32 = 0x74;
/// Receive FIFO fill levels.
pub(crate) const RX_FIFO_INF: u32 = 0x7C;
/// Transmit FIFO fill levels.
pub(crate) const TX_FIFO_INF: u32 = 0x80;
/// Power management control; bit 0 is READY.
pub(crate) const PMT_CTRL: u32 = 0x84;
/// Free-running 25 MHz counter.
pub(crate) const FREE_RUN: u32 = 0x9C;
/// Indirect access to the MAC CSRs: command.
pub(crate) const MAC_CSR_CMD: u32 = 0xA4;
/// Indirect access to the MAC CSRs: data.
pub(crate) const MAC_CSR_DATA: u32 = 0xA8;

/// Value of [`BYTE_TEST`] on a correctly wired chip.
pub(crate) const BYTE_TEST_VALUE: u32 = 0x8765_4321;

/// [`HW_CFG`]: soft reset, self-clearing.
pub(crate) const HW_CFG_SRST: u32 = 1 << 0;
/// [`PMT_CTRL`]: the chip finished its reset and answers.
pub(crate) const PMT_CTRL_READY: u32 = 1 << 0;
/// [`TX_CFG`]: transmitter on.
pub(crate) const TX_CFG_TX_ON: u32 = 1 << 1;
/// [`TX_CFG`]: discard the transmit status FIFO.
pub(crate) const TX_CFG_TXS_DUMP: u32 = 1 << 15;
/// [`TX_CFG`]: discard the transmit data FIFO.
pub(crate) const TX_CFG_TXD_DUMP: u32 = 1 << 14;
/// [`RX_CFG`]: discard the receive FIFOs.
pub(crate) const RX_CFG_RX_DUMP: u32 = 1 << 15;

/// [`MAC_CSR_CMD`]: transaction in progress; writing it starts one.
pub(crate) const MAC_CSR_BUSY: u32 = 1 << 31;
/// [`MAC_CSR_CMD`]: the transaction reads (else writes) the CSR.
pub(crate) const MAC_CSR_READ: u32 = 1 << 30;

/// MAC CSR: MAC control.
pub(crate) const MAC_CR: u8 = 1;
/// MAC CSR: station address, bytes 4 and 5.
pub(crate) const MAC_ADDRH: u8 = 2;
/// MAC CSR: station address, bytes 0 to 3.
pub(crate) const MAC_ADDRL: u8 = 3;
/// MAC CSR: MII (PHY) access command.
pub(crate) const MAC_MII_ACC: u8 = 6;
/// MAC CSR: MII (PHY) data.
pub(crate) const MAC_MII_DATA: u8 = 7;

/// `MAC_CR`: transmitter enable.
pub(crate) const MAC_CR_TXEN: u32 = 1 << 3;
/// `MAC_CR`: receiver enable.
pub(crate) const MAC_CR_RXEN: u32 = 1 << 2;
/// `MAC_CR`: full duplex.
pub(crate) const MAC_CR_FDPX: u32 = 1 << 20;

/// `MII_ACC`: the internal PHY's address (bits 15:11).
pub(crate) const MII_ACC_PHY_ADDR: u32 = 1 << 11;
/// `MII_ACC`: busy; writing it starts a PHY transaction.
pub(crate) const MII_ACC_BUSY: u32 = 1 << 0;
/// PHY register: basic status.
pub(crate) const PHY_BSR: u32 = 1;
/// PHY basic status: link is up.
pub(crate) const PHY_BSR_LINK: u32 = 1 << 2;

/// TX command A: first segment of a frame.
pub(crate) const TX_CMD_A_FIRST: u32 = 1 << 13;
/// TX command A: last segment of a frame.
pub(crate) const TX_CMD_A_LAST: u32 = 1 << 12;

/// RX status: error summary (CRC, runt, too long, collision, ...).
pub(crate) const RX_STS_ERROR: u32 = 1 << 15;
/// RX status: the frame failed the address filter (only seen with "receive all").
pub(crate) const RX_STS_FILTER_FAIL: u32 = 1 << 30;
/// TX status: error summary.
pub(crate) const TX_STS_ERROR: u32 = 1 << 15;

/// 32-bit register access to one LAN9118, by byte offset from its base.
///
/// Reads of the FIFO ports have side effects (they pop), hence `&mut self` for both.
/// [`crate::Mmio`] is the real thing; the tests use a simulated chip.
pub trait Bus {
    /// Reads the 32-bit register at byte offset `reg` (a multiple of 4, below 0x100).
    fn read(&mut self, reg: u32) -> u32;
    /// Writes the 32-bit register at byte offset `reg` (a multiple of 4, below 0x100).
    fn write(&mut self, reg: u32, value: u32);
}

/// Command word A for a frame sent as one segment: `len` bytes, word-aligned start and end.
pub(crate) fn tx_cmd_a(len: usize) -> u32 {
    TX_CMD_A_FIRST | TX_CMD_A_LAST | (len as u32 & 0x7FF)
}

/// Command word B: a 16-bit tag echoed in the TX status word, and the frame length.
pub(crate) fn tx_cmd_b(tag: u16, len: usize) -> u32 {
    (u32::from(tag) << 16) | (len as u32 & 0x7FF)
}

/// Number of 32-bit FIFO words that carry `bytes` bytes.
pub(crate) fn words(bytes: usize) -> usize {
    bytes.div_ceil(4)
}

/// What one RX status word says about the frame waiting in the RX data FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RxStatus(pub(crate) u32);

impl RxStatus {
    /// Bytes of the frame in the data FIFO, including its 4-byte CRC.
    pub(crate) fn len_with_crc(self) -> usize {
        ((self.0 >> 16) & 0x3FFF) as usize
    }

    /// Data FIFO words this frame occupies (with RX_CFG offset 0 and 4-byte end alignment).
    pub(crate) fn fifo_words(self) -> usize {
        words(self.len_with_crc())
    }

    /// The frame's length without CRC if it is good to hand up: no error, passed the
    /// filter, at least an Ethernet header, and no longer than `max` bytes in FIFO words.
    pub(crate) fn accept(self, max: usize) -> Option<usize> {
        let len = self.len_with_crc();
        let bad = self.0 & (RX_STS_ERROR | RX_STS_FILTER_FAIL) != 0;
        if bad || len < 14 + 4 || self.fifo_words() * 4 > max {
            return None;
        }
        Some(len - 4)
    }
}

/// `ADDRL` and `ADDRH` values for a station address (byte 0 in the low bits of `ADDRL`).
pub(crate) fn mac_to_addr_regs(mac: [u8; 6]) -> (u32, u32) {
    let low = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let high = u32::from_le_bytes([mac[4], mac[5], 0, 0]);
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_a_marks_single_segment_and_length() {
        assert_eq!(tx_cmd_a(60), 0x0000_303C);
        assert_eq!(tx_cmd_a(1514), 0x0000_35EA);
    }

    #[test]
    fn cmd_b_carries_tag_and_length() {
        assert_eq!(tx_cmd_b(0xBEEF, 342), 0xBEEF_0156);
    }

    #[test]
    fn rx_status_length_includes_crc_and_rounds_to_words() {
        let st = RxStatus(64 << 16);
        assert_eq!(st.len_with_crc(), 64);
        assert_eq!(st.fifo_words(), 16);
        assert_eq!(st.accept(1536), Some(60));
        assert_eq!(RxStatus(65 << 16).fifo_words(), 17);
    }

    #[test]
    fn rx_status_rejects_errors_runts_and_oversize() {
        assert_eq!(RxStatus((64 << 16) | RX_STS_ERROR).accept(1536), None);
        assert_eq!(RxStatus((64 << 16) | RX_STS_FILTER_FAIL).accept(1536), None);
        assert_eq!(RxStatus(17 << 16).accept(1536), None);
        assert_eq!(RxStatus(18 << 16).accept(1536), Some(14));
        assert_eq!(RxStatus(1537 << 16).accept(1536), None);
        // Broadcast (bit 13) and multicast (bit 10) flags are not errors.
        assert_eq!(
            RxStatus((64 << 16) | (1 << 13) | (1 << 10)).accept(1536),
            Some(60)
        );
    }

    #[test]
    fn mac_bytes_land_low_byte_first() {
        let (low, high) = mac_to_addr_regs([0x02, 0x4D, 0x4F, 0x54, 0x45, 0x01]);
        assert_eq!(low, 0x544F_4D02);
        assert_eq!(high, 0x0000_0145);
    }
}
