//! The exclusive lock of a site for the whole of a run: an OS file lock on
//! `<state_dir>/run.lock` (released by the kernel if the process dies), whose
//! contents name the holder. A run that died without closing its journal
//! leaves the site "held" by that unfinished run: the next run is refused and
//! told how to resume or abandon it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

use crate::config::Site;
use crate::db::now_rfc3339;
use crate::journal;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    run_id: String,
    pid: u32,
    since: String,
}

/// Open (creating it and its folder) `<state_dir>/run.lock`, unlocked.
fn open_lock_file(site: &Site) -> Result<(std::path::PathBuf, File)> {
    let dir = &site.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create state folder", dir, e))?;
    let path = dir.join("run.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    Ok((path, file))
}

/// Held for as long as it lives.
pub struct SiteLock {
    _file: File,
}

impl SiteLock {
    /// Hold the site's lock for a moment without taking the site over (the
    /// lock file keeps naming its last run): for `status` and `plan`, which
    /// only read but may have to roll back a database transaction left by a
    /// killed process. `None` when a run holds the lock now.
    pub fn try_brief(site: &Site) -> Result<Option<SiteLock>> {
        let (path, file) = open_lock_file(site)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(SiteLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }

    /// Take the site's lock for `run_id`. `resuming` names the run being
    /// resumed: an unfinished run may only be taken over by its own resume.
    pub fn acquire(site: &Site, run_id: &str, resuming: Option<&str>) -> Result<SiteLock> {
        let (path, mut file) = open_lock_file(site)?;
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let previous: Option<Holder> = serde_json::from_str(&text).ok();
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let gone = previous.as_ref().filter(|h| !process_alive(h.pid));
                match gone {
                    // The run named there is gone, yet its lock is held: by a
                    // command it was starting when it died, which holds the
                    // file (inherited) until its `exec` closes it. Briefly.
                    Some(h) if !wait_for_lock(&file, &path)? => {
                        return Err(Error::Refused(format!(
                            "site `{}` is locked, though the process of run {} (pid {}, since {}) is gone: a process it started still holds `{}`. Find it (`fuser -v {}`), let it finish or stop it, then run again",
                            site.file.display(),
                            h.run_id,
                            h.pid,
                            h.since,
                            path.display(),
                            path.display()
                        )));
                    }
                    Some(_) => {}
                    None => {
                        let who = previous
                            .map(|h| format!("run {} (pid {}, since {})", h.run_id, h.pid, h.since))
                            .unwrap_or_else(|| "another uprun process".into());
                        return Err(Error::Refused(format!(
                            "site `{}` is locked by {who}, which is still running; wait for it to finish (`uprun runs --site {}` shows it)",
                            site.file.display(),
                            site.file.display()
                        )));
                    }
                }
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        if let Some(h) = previous {
            let path = journal::journal_path(site, &h.run_id);
            // A journal that is gone was never written: nothing to hold.
            let info = match journal::read(&path) {
                Ok(entries) => Some(journal::summarize(&h.run_id, &entries)),
                Err(_) if !path.exists() => None,
                Err(e) => Some(journal::damaged(&h.run_id, &e)),
            };
            if let Some(info) = info.filter(|i| i.holds_site()) {
                if resuming != Some(h.run_id.as_str()) && h.run_id != run_id {
                    let site_file = site.file.display();
                    let how = match (&info.damage, info.resume_command(&site.file)) {
                        (Some(damage), _) => format!(
                            "its journal cannot be read ({damage}). After checking the site by hand (`uprun status --site {site_file}`), abandon it with `{}`",
                            info.abandon_command(&site.file)
                        ),
                        (None, Some(resume)) => format!(
                            "Resume it with `{resume}`, or, after checking the site by hand (`uprun status --site {site_file}`), abandon it with `{}`",
                            info.abandon_command(&site.file)
                        ),
                        (None, None) => format!(
                            "Abandon it with `{}`",
                            info.abandon_command(&site.file)
                        ),
                    };
                    return Err(Error::Refused(format!(
                        "site `{site_file}` holds a stale lock: run {} (pid {}, since {}) stopped without finishing and its process is gone. {how}",
                        h.run_id, h.pid, h.since,
                    )));
                }
            }
        }
        let me = Holder {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            since: now_rfc3339(),
        };
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(serde_json::to_string(&me).unwrap_or_default().as_bytes())?;
            f.sync_data()
        };
        write(&mut file).map_err(|e| Error::io("write lock file", &path, e))?;
        Ok(SiteLock { _file: file })
    }
}

/// How long a lock left to a dead run's child is waited for.
const ORPHAN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Take `file`'s lock once whoever holds it lets go, within
/// [`ORPHAN_LOCK_WAIT`]; whether it was taken.
fn wait_for_lock(file: &File, path: &std::path::Path) -> Result<bool> {
    let deadline = std::time::Instant::now() + ORPHAN_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
    }
}

/// Whether process `pid` exists (on this machine); true where it cannot be
/// told.
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // Signal 0 checks without sending; EPERM: it exists, not ours.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
