//! Kills the harness's servers when the test process exits.
//!
//! A server held by a `static` (one per test binary, shared by its tests) is never
//! dropped, so its `Drop` never kills it. Every spawned server is registered here, and an
//! `atexit` handler (installed once) kills whatever is still registered when the process
//! exits normally, which is how a test binary ends, whether its tests passed or not. A test
//! process killed by a signal still leaks its servers.

use std::collections::HashSet;
use std::sync::{Mutex, Once};

static PIDS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

extern "C" fn kill_all() {
    let pids = PIDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: kill(2) on a pid we spawned; at worst it no longer exists (ESRCH).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Registers a spawned server, to be killed at exit if still running.
pub(crate) fn register(pid: u32) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with the C runtime.
        unsafe {
            libc::atexit(kill_all);
        }
    });
    PIDS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert(pid);
}

/// Forgets a server that was killed and reaped.
pub(crate) fn unregister(pid: u32) {
    if let Some(pids) = PIDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_mut()
    {
        pids.remove(&pid);
    }
}
