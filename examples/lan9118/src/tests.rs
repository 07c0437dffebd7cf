//! Driver behaviour against the simulated chip: bring-up, TX framing, RX framing and drops.

use core::task::{Context, Waker};

use embassy_net_driver::{Driver, LinkState, RxToken as _, TxToken as _};

use crate::regs::*;
use crate::sim::SimChip;
use crate::{Error, Lan9118, MAX_FRAME};

const MAC: [u8; 6] = [0x02, 0x4D, 0x4F, 0x54, 0x45, 0x01];

fn up() -> Lan9118<SimChip> {
    Lan9118::new(SimChip::new(), MAC).expect("simulated chip comes up")
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// A frame of `len` bytes whose byte i is i mod 251 (so offsets show up in comparisons).
fn frame(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn send(dev: &mut Lan9118<SimChip>, payload: &[u8]) {
    let token = dev.transmit(&mut cx()).expect("TX space");
    token.consume(payload.len(), |buf| buf.copy_from_slice(payload));
}

#[test]
fn bring_up_resets_sets_mac_and_enables_only_unicast_and_broadcast() {
    let dev = up();
    assert_eq!(dev.bus.resets, 1);
    assert_eq!(dev.bus.mac, MAC);
    assert_eq!(
        dev.bus.mac_cr & (MAC_CR_TXEN | MAC_CR_RXEN),
        MAC_CR_TXEN | MAC_CR_RXEN
    );
    assert_eq!(dev.bus.mac_cr & (1 << 18), 0, "promiscuous mode left on");
    assert_eq!(dev.bus.tx_cfg, TX_CFG_TX_ON);
}

#[test]
fn bring_up_refuses_a_chip_that_is_not_a_lan911x() {
    let mut chip = SimChip::new();
    chip.id_rev = 0x1234_0000;
    let err = Lan9118::new(chip, MAC).expect_err("wrong id must be refused");
    assert!(matches!(
        err,
        Error::NotFound {
            id_rev: 0x1234_0000,
            ..
        }
    ));
}

#[test]
fn transmit_pushes_command_words_and_every_byte_of_odd_lengths() {
    let mut dev = up();
    let lens = [60, 61, 62, 63, 64, MAX_FRAME];
    for len in lens {
        send(&mut dev, &frame(len));
    }
    assert_eq!(dev.bus.sent.len(), lens.len());
    for (sent, len) in dev.bus.sent.iter().zip(lens) {
        assert_eq!(sent, &frame(len));
    }
}

#[test]
fn transmit_drains_the_tx_status_fifo() {
    let mut dev = up();
    send(&mut dev, &frame(60));
    assert_eq!(dev.bus.tx_status.len(), 1);
    send(&mut dev, &frame(60));
    assert_eq!(
        dev.bus.tx_status.len(),
        1,
        "the first status was drained before the second frame"
    );
    let _ = dev.transmit(&mut cx());
    assert!(dev.bus.tx_status.is_empty());
}

#[test]
fn transmit_waits_when_the_fifo_lacks_room_for_a_maximal_frame() {
    let mut dev = up();
    dev.bus.tx_free = 1000;
    assert!(dev.transmit(&mut cx()).is_none());
    assert!(dev.receive(&mut cx()).is_none());
}

#[test]
fn receive_returns_nothing_when_the_fifo_is_empty() {
    let mut dev = up();
    assert!(dev.receive(&mut cx()).is_none());
}

#[test]
fn receive_hands_up_the_frame_without_its_crc() {
    let mut dev = up();
    for len in [60, 61, 342, MAX_FRAME] {
        dev.bus.receive(&frame(len), 0);
        let (rx, _tx) = dev.receive(&mut cx()).expect("a frame waits");
        let got = rx.consume(|buf| buf.to_vec());
        assert_eq!(got, frame(len));
        assert_eq!(dev.bus.rx_words_left(), 0);
    }
}

#[test]
fn receive_drops_errored_and_oversized_frames_and_keeps_step() {
    let mut dev = up();
    dev.bus.receive(&frame(100), RX_STS_ERROR);
    dev.bus.receive(&frame(1600), 0);
    dev.bus.receive(&frame(7), 0);
    dev.bus.receive(&frame(77), 1 << 13); // broadcast flag: fine
    let (rx, _tx) = dev.receive(&mut cx()).expect("the good frame");
    assert_eq!(rx.consume(|buf| buf.to_vec()), frame(77));
    assert_eq!(dev.bus.rx_words_left(), 0);
    assert!(dev.receive(&mut cx()).is_none());
}

#[test]
fn receive_token_pair_can_answer_at_once() {
    let mut dev = up();
    dev.bus.receive(&frame(60), 0);
    let (rx, tx) = dev.receive(&mut cx()).expect("a frame waits");
    let echo = rx.consume(|buf| buf.to_vec());
    tx.consume(echo.len(), |buf| buf.copy_from_slice(&echo));
    assert_eq!(dev.bus.sent, vec![frame(60)]);
}

#[test]
fn link_state_follows_the_phy() {
    let mut dev = up();
    assert!(dev.link_state(&mut cx()) == LinkState::Up);
    dev.bus.link_up = false;
    assert!(dev.link_state(&mut cx()) == LinkState::Down);
}

#[test]
fn capabilities_and_address_describe_ethernet() {
    let dev = up();
    assert_eq!(dev.capabilities().max_transmission_unit, 1514);
    assert_eq!(
        dev.hardware_address(),
        embassy_net_driver::HardwareAddress::Ethernet(MAC)
    );
}
