//! Ctrl-C during a run. The first stops the run after the current step; the
//! second aborts the current step where that is safe (a backup copy; a
//! command running on a node, local or SSH, which is killed there); a third
//! exits at once. Either way the journal says where the run stopped.
//!
//! The flags are set on the handler's thread and polled by the work they
//! stop (a backup between chunks, a node command while it waits).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::output::Output;

static PRESSES: AtomicUsize = AtomicUsize::new(0);

/// Install the handler (once per process; later calls are ignored). What
/// each press does is said on `out`'s stderr.
pub fn install(out: Arc<Output>) {
    let _ = ctrlc::set_handler(move || {
        let n = PRESSES.fetch_add(1, Ordering::SeqCst) + 1;
        match n {
            1 => out.notice("\nuprun: stopping after the current step (Ctrl-C again to abort it where that is safe)"),
            2 => out.notice("\nuprun: aborting the current step where that is safe (a backup copy, a running node command); otherwise it finishes first (Ctrl-C again to exit at once)"),
            _ => {
                out.notice("\nuprun: exiting now; the journal shows the step in flight, `--resume` reconciles it");
                std::process::exit(130);
            }
        }
    });
}

/// The operator asked to stop after the current step.
pub fn stop_requested() -> bool {
    PRESSES.load(Ordering::SeqCst) >= 1
}

/// The operator asked to abort the current step.
pub fn abort_requested() -> bool {
    PRESSES.load(Ordering::SeqCst) >= 2
}
