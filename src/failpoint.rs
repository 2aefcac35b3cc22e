//! Failpoints for the fault-injection tests, compiled only with the
//! `failpoints` feature (which only the tests enable). `UPRUN_FAILPOINT=NAME`
//! kills the process with SIGKILL when the point `NAME` is reached, e.g.
//! `step3:before`, `step3:inner`, `step3:after`.

#[cfg(feature = "failpoints")]
pub fn hit(point: &str) {
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("UPRUN_FAILPOINT").ok());
    if target.as_deref() == Some(point) {
        // SAFETY: sending a signal to our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &str) {}

thread_local! {
    /// The number of the step running on this thread, for `inner`.
    static STEP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Record which step this thread is running (numbers `step<n>:inner`).
pub fn set_step(seq: usize) {
    STEP.with(|c| c.set(seq));
}

/// A failpoint in the middle of the current step's change (`step<n>:inner`).
pub fn inner() {
    if cfg!(feature = "failpoints") {
        let seq = STEP.with(|c| c.get());
        hit(&format!("step{seq}:inner"));
    }
}
