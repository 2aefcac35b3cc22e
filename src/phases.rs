//! Where a command's time goes before its first change: each phase of the
//! start (load, digest, lock, database, connect, plan, ...) with its duration
//! and when it ended, for the `phase` events of `--json`. Recorded here by
//! whoever does the work, emitted by the command at points of its choosing.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// One finished phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub phase: String,
    /// `start` (before the planning pass), `plan` or `run`.
    pub pass: &'static str,
    pub ms: f64,
    /// When it ended, since the command started.
    pub at_ms: f64,
}

struct State {
    pass: &'static str,
    done: Vec<Phase>,
}

fn start_time() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        Mutex::new(State {
            pass: "start",
            done: Vec::new(),
        })
    })
}

/// The command starts now (phases' `at_ms` count from here).
pub fn start() {
    let _ = start_time();
}

/// Phases recorded from now on belong to `pass`.
pub fn set_pass(pass: &'static str) {
    state().lock().unwrap_or_else(|e| e.into_inner()).pass = pass;
}

/// Record a phase that began at `began` and ends now.
pub fn record(phase: &str, began: Instant) {
    let now = Instant::now();
    let ms = now.duration_since(began).as_secs_f64() * 1000.0;
    let at_ms = now.duration_since(start_time()).as_secs_f64() * 1000.0;
    let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
    let pass = s.pass;
    s.done.push(Phase {
        phase: phase.to_string(),
        pass,
        ms,
        at_ms,
    });
}

/// Run `f` as the phase `phase`.
pub fn time<T>(phase: &str, f: impl FnOnce() -> T) -> T {
    let began = Instant::now();
    let out = f();
    record(phase, began);
    out
}

/// The phases recorded since the last call, in the order they ended.
pub fn take() -> Vec<Phase> {
    std::mem::take(&mut state().lock().unwrap_or_else(|e| e.into_inner()).done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_recorded_in_order_with_their_pass() {
        start();
        take();
        set_pass("plan");
        let v = time("connect", || 7);
        assert_eq!(v, 7);
        set_pass("run");
        record("database", Instant::now());
        let got = take();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].phase.as_str(), got[0].pass), ("connect", "plan"));
        assert_eq!((got[1].phase.as_str(), got[1].pass), ("database", "run"));
        assert!(got[0].at_ms <= got[1].at_ms && got[0].ms >= 0.0);
        assert!(take().is_empty());
        set_pass("start");
    }
}
