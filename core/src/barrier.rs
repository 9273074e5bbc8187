//! Asymmetric fences: a light one on the hot path (every handler call), a
//! heavy one on the rare path (unsubscribing).
//!
//! The unsubscribe protocol is a store-then-load handshake on both sides (a
//! worker announces a call, then checks the subscription is active; an
//! unsubscriber closes it, then looks for announced calls), which needs a
//! full fence on each side. A full fence per handler call costs tens of
//! cycles. On Linux, `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` makes
//! every thread of the process run a full fence (it interrupts the CPUs
//! running them; a thread that is not running gets one when it is switched
//! back in). With it the worker's side only has to keep the compiler from
//! reordering, and the unsubscriber pays about a microsecond. This is how
//! liburcu's `memb` flavour and folly's asymmetric barriers work.
//!
//! Where the call is missing (other systems, a kernel before 4.14, a
//! sandbox that forbids it) both sides use a full fence. Setting the
//! environment variable `SWITCHBOARD_NO_MEMBARRIER` (to anything but `0` or
//! the empty string) before the first bus is built forces that fallback,
//! so that the tests can run the fallback path on a system that has the
//! call (CI runs the core tests both ways). Under loom both
//! are full fences: the models check the protocol given the fences'
//! semantics, which is what the system call guarantees.

use crate::loom::{fence, Ordering};

/// Which pair of fences a bus uses, chosen once when it is built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Barrier {
    expedited: bool,
}

impl Barrier {
    pub(crate) fn new() -> Barrier {
        Barrier { expedited: cfg!(not(loom)) && imp::register() }
    }

    /// Whether the light side is a compiler fence (the expedited system
    /// call is in use) rather than a full fence.
    #[cfg_attr(any(not(test), loom), allow(dead_code))]
    pub(crate) fn is_expedited(self) -> bool {
        self.expedited
    }

    /// The hot path's fence: orders a worker's store before its next load
    /// against any [`heavy`](Barrier::heavy) fence.
    #[inline(always)]
    pub(crate) fn light(self) {
        if self.expedited {
            crate::loom::compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The rare path's fence: after it returns, every other thread has run
    /// a full fence since the call began.
    pub(crate) fn heavy(self) {
        fence(Ordering::SeqCst);
        if self.expedited && !imp::barrier() {
            // Registration succeeded, so the kernel has no reason to refuse;
            // if it ever does, the protocol would be unsound: stop loudly.
            panic!("membarrier(PRIVATE_EXPEDITED) failed after a successful registration");
        }
    }
}

#[cfg(all(target_os = "linux", not(loom)))]
mod imp {
    use std::sync::OnceLock;

    const QUERY: libc::c_long = 0;
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn membarrier(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes two integers and a CPU id, touches no
        // memory of ours, and reports failure as -1.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
    }

    /// Registers the process for expedited barriers, once; whether it worked
    /// (`false` without trying when `SWITCHBOARD_NO_MEMBARRIER` asks for the
    /// fallback).
    pub(super) fn register() -> bool {
        static REGISTERED: OnceLock<bool> = OnceLock::new();
        *REGISTERED.get_or_init(|| {
            let forced_off = std::env::var_os("SWITCHBOARD_NO_MEMBARRIER")
                .is_some_and(|v| !v.is_empty() && v != "0");
            if forced_off {
                return false;
            }
            let supported = membarrier(QUERY);
            supported >= 0
                && supported & PRIVATE_EXPEDITED != 0
                && membarrier(REGISTER_PRIVATE_EXPEDITED) == 0
        })
    }

    pub(super) fn barrier() -> bool {
        membarrier(PRIVATE_EXPEDITED) == 0
    }
}

#[cfg(not(all(target_os = "linux", not(loom))))]
mod imp {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn barrier() -> bool {
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Barrier;

    /// The switch CI uses to run the tests on the fallback path: with it
    /// set, the light fence is a full fence (checked here, as that run is
    /// only meaningful if the switch really took effect).
    #[test]
    fn the_environment_switch_forces_the_fallback() {
        let forced = std::env::var_os("SWITCHBOARD_NO_MEMBARRIER")
            .is_some_and(|v| !v.is_empty() && v != "0");
        if forced {
            assert!(!Barrier::new().is_expedited(), "SWITCHBOARD_NO_MEMBARRIER was ignored");
        }
    }
}
