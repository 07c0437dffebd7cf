//! A simulated LAN9118 for the unit tests: FIFOs, command words and the MAC CSR window,
//! behaving as the datasheet (and QEMU) describe. Unknown registers panic, as QEMU aborts.

use std::collections::VecDeque;
use std::vec::Vec;

use crate::regs::*;

/// Where the simulated transmitter is in the command A / command B / data sequence.
#[derive(Debug, Default)]
enum TxState {
    #[default]
    Idle,
    B {
        cmd_a: u32,
    },
    Data {
        cmd_b: u32,
        left: usize,
    },
}

/// The simulated chip; tests inspect and feed its fields directly.
#[derive(Debug)]
pub(crate) struct SimChip {
    pub(crate) id_rev: u32,
    pub(crate) resets: u32,
    pub(crate) mac_cr: u32,
    pub(crate) mac: [u8; 6],
    pub(crate) tx_cfg: u32,
    pub(crate) link_up: bool,
    pub(crate) tx_free: u32,
    /// Frames the driver transmitted.
    pub(crate) sent: Vec<Vec<u8>>,
    pub(crate) tx_status: VecDeque<u32>,
    rx_status: VecDeque<u32>,
    rx_data: VecDeque<u32>,
    tx_state: TxState,
    tx_frame: Vec<u8>,
    mac_csr_data: u32,
    mii_data: u32,
}

impl SimChip {
    pub(crate) fn new() -> Self {
        Self {
            id_rev: 0x0118_0001,
            resets: 0,
            mac_cr: 1 << 18, // promiscuous out of reset
            mac: [0; 6],
            tx_cfg: 0,
            link_up: true,
            tx_free: 4608,
            sent: Vec::new(),
            tx_status: VecDeque::new(),
            rx_status: VecDeque::new(),
            rx_data: VecDeque::new(),
            tx_state: TxState::Idle,
            tx_frame: Vec::new(),
            mac_csr_data: 0,
            mii_data: 0,
        }
    }

    /// Queues a received frame with the given extra status bits; appends a fake CRC.
    pub(crate) fn receive(&mut self, frame: &[u8], status_bits: u32) {
        let mut bytes = frame.to_vec();
        bytes.extend_from_slice(&[0xC0, 0xC1, 0xC2, 0xC3]);
        let len = bytes.len() as u32;
        while !bytes.len().is_multiple_of(4) {
            bytes.push(0);
        }
        for word in bytes.chunks(4) {
            self.rx_data
                .push_back(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
        }
        self.rx_status.push_back((len << 16) | status_bits);
    }

    pub(crate) fn rx_words_left(&self) -> usize {
        self.rx_data.len()
    }

    fn push_tx(&mut self, value: u32) {
        self.tx_state = match core::mem::take(&mut self.tx_state) {
            TxState::Idle => {
                assert_eq!(value & 0x3000, 0x3000, "frame must be one segment");
                TxState::B { cmd_a: value }
            }
            TxState::B { cmd_a } => {
                assert_eq!(
                    value & 0x7FF,
                    cmd_a & 0x7FF,
                    "command A and B lengths differ"
                );
                self.tx_frame.clear();
                TxState::Data {
                    cmd_b: value,
                    left: (cmd_a & 0x7FF) as usize,
                }
            }
            TxState::Data { cmd_b, left } => {
                let take = left.min(4);
                self.tx_frame
                    .extend_from_slice(&value.to_le_bytes()[..take]);
                if left - take == 0 {
                    self.sent.push(core::mem::take(&mut self.tx_frame));
                    self.tx_status.push_back(cmd_b & 0xFFFF_0000);
                    TxState::Idle
                } else {
                    TxState::Data {
                        cmd_b,
                        left: left - take,
                    }
                }
            }
        };
    }

    fn mac_access(&mut self, cmd: u32) {
        let reg = (cmd & 0xFF) as u8;
        if cmd & MAC_CSR_READ != 0 {
            self.mac_csr_data = match reg {
                MAC_CR => self.mac_cr,
                MAC_ADDRL => {
                    u32::from_le_bytes([self.mac[0], self.mac[1], self.mac[2], self.mac[3]])
                }
                MAC_ADDRH => u32::from_le_bytes([self.mac[4], self.mac[5], 0, 0]),
                MAC_MII_ACC => 0,
                MAC_MII_DATA => self.mii_data,
                other => panic!("read of MAC CSR {other}"),
            };
        } else {
            let v = self.mac_csr_data;
            match reg {
                MAC_CR => self.mac_cr = v,
                MAC_ADDRL => self.mac[..4].copy_from_slice(&v.to_le_bytes()),
                MAC_ADDRH => self.mac[4..].copy_from_slice(&v.to_le_bytes()[..2]),
                MAC_MII_ACC => {
                    assert_eq!(v & 2, 0, "driver only reads the PHY");
                    assert_eq!((v >> 11) & 0x1F, 1, "internal PHY is at address 1");
                    self.mii_data = match (v >> 6) & 0x1F {
                        1 if self.link_up => 0x782D,
                        1 => 0x7809,
                        other => panic!("read of PHY register {other}"),
                    };
                }
                other => panic!("write of MAC CSR {other}"),
            }
        }
    }
}

impl Bus for SimChip {
    fn read(&mut self, reg: u32) -> u32 {
        match reg {
            RX_DATA_FIFO => self.rx_data.pop_front().expect("RX data FIFO underrun"),
            RX_STATUS_FIFO => self.rx_status.pop_front().expect("RX status FIFO underrun"),
            TX_STATUS_FIFO => self.tx_status.pop_front().expect("TX status FIFO underrun"),
            ID_REV => self.id_rev,
            BYTE_TEST => BYTE_TEST_VALUE,
            HW_CFG => 0x0005_0004,
            PMT_CTRL => PMT_CTRL_READY,
            RX_FIFO_INF => ((self.rx_status.len() as u32) << 16) | (self.rx_data.len() as u32 * 4),
            TX_FIFO_INF => ((self.tx_status.len() as u32) << 16) | self.tx_free,
            MAC_CSR_CMD => 0,
            MAC_CSR_DATA => self.mac_csr_data,
            FREE_RUN => 12345,
            other => panic!("read of register {other:#x}"),
        }
    }

    fn write(&mut self, reg: u32, value: u32) {
        match reg {
            TX_DATA_FIFO => self.push_tx(value),
            IRQ_CFG | INT_EN | INT_STS => {}
            RX_CFG => {
                if value & RX_CFG_RX_DUMP != 0 {
                    self.rx_status.clear();
                    self.rx_data.clear();
                }
            }
            TX_CFG => self.tx_cfg = value & TX_CFG_TX_ON,
            HW_CFG => {
                assert_eq!(value & HW_CFG_SRST, HW_CFG_SRST);
                self.resets += 1;
                self.mac_cr = 1 << 18;
            }
            MAC_CSR_DATA => self.mac_csr_data = value,
            MAC_CSR_CMD => {
                assert_ne!(
                    value & MAC_CSR_BUSY,
                    0,
                    "a MAC CSR command needs the busy bit"
                );
                self.mac_access(value);
            }
            other => panic!("write of register {other:#x}"),
        }
    }
}
