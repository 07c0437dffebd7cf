//! The `embassy-time` driver: SysTick interrupts at 1 kHz count milliseconds.
//!
//! `embassy-time` is built with `tick-hz-1_000`, so one SysTick period is one tick. Timers
//! sit in `embassy-time-queue-utils`' queue (integrated into embassy-executor's tasks); the
//! SysTick handler wakes the expired ones. QEMU's mps2-an385 clocks the CPU (and SysTick's
//! processor clock source) at 25 MHz of virtual time, which tracks the host's clock.

use core::cell::{Cell, RefCell};
use core::task::Waker;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;
use critical_section::Mutex;
use embassy_time_queue_utils::Queue;

/// CPU clock of the AN385 image (and of QEMU's model of it).
const CPU_HZ: u32 = 25_000_000;

/// Milliseconds since [`init`], plus the timer queue and the earliest deadline in it.
struct SysTickDriver {
    ticks: Mutex<Cell<u64>>,
    next_alarm: Mutex<Cell<u64>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: SysTickDriver = SysTickDriver {
    ticks: Mutex::new(Cell::new(0)),
    next_alarm: Mutex::new(Cell::new(u64::MAX)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl embassy_time_driver::Driver for SysTickDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.ticks.borrow(cs).get())
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let mut queue = self.queue.borrow_ref_mut(cs);
            if queue.schedule_wake(at, waker) {
                let now = self.ticks.borrow(cs).get();
                self.next_alarm.borrow(cs).set(queue.next_expiration(now));
            }
        });
    }
}

/// Starts SysTick: processor clock, one interrupt per millisecond.
pub(crate) fn init(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CPU_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let ticks = DRIVER.ticks.borrow(cs);
        let now = ticks.get() + 1;
        ticks.set(now);
        let next_alarm = DRIVER.next_alarm.borrow(cs);
        if now >= next_alarm.get() {
            next_alarm.set(DRIVER.queue.borrow_ref_mut(cs).next_expiration(now));
        }
    });
}
