//! FIFOs that let a test hold a run at a known point (a command of the run
//! writes to a `ready` FIFO, then reads a `gate` FIFO) without sleeping, and
//! bounded waits on runs started in the background.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

/// Make a FIFO `name` in `dir`.
pub fn make(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let st = std::process::Command::new("mkfifo")
        .arg(&p)
        .status()
        .expect("mkfifo");
    assert!(st.success(), "mkfifo {}", p.display());
    p
}

/// A gate FIFO, opened when dropped without blocking when nothing reads it:
/// a command left waiting on it by a failed assertion ends too.
pub struct OpenOnDrop(pub PathBuf);

impl OpenOnDrop {
    /// Let the waiting command go on. Waits (bounded) for it to open the
    /// FIFO: it may not have reached its read yet.
    pub fn open(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = self.0.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::write(gate, "go\n"));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(written) => written.expect("open the gate"),
            Err(_) => panic!("nothing read the gate {} within 60 s", self.0.display()),
        }
    }
}

impl Drop for OpenOnDrop {
    /// Free a command still reading the gate, without waiting for one.
    fn drop(&mut self) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0)
        {
            let _ = f.write_all(b"go\n");
        }
    }
}

/// Wait (bounded) until a command of the run writes to the `ready` FIFO.
pub fn wait_ready(ready: &Path, run: &mut Child, what: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(ready));
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = run.kill();
        panic!("the run never reached {what}");
    }
}

/// Wait (bounded) for the run to end.
pub fn finish(run: Child) -> Output {
    let pid = run.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.expect("run output"),
        Err(_) => {
            // SAFETY: killing our own child, which did not end.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("the run did not end within 120 s");
        }
    }
}
