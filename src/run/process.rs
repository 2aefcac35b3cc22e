//! The few facts about this process a run records: its id, its operator,
//! whether there is a terminal to ask on; and the recovery a read-only
//! command does before it opens the database.

use crate::config::Site;
use crate::Result;

/// Before a read-only command (`status`, `plan`) opens the database: roll
/// back a transaction left by a killed process, holding the site lock for
/// that moment. When a run holds the lock its transaction is alive, not
/// left over, and nothing is done. Returns the line to show.
pub fn recover_for_reading(site: &Site) -> Result<Option<String>> {
    if !crate::db::may_need_recovery(site) {
        return Ok(None);
    }
    match crate::lock::SiteLock::try_brief(site)? {
        Some(_lock) => crate::db::recover(site),
        None => Ok(None),
    }
}

/// Whether we may ask questions: both stdin and stderr are terminals.
pub fn interactive() -> bool {
    crate::output::Output::interactive()
}

/// Who runs uprun, for the journal: `$USER`, else the login name of the
/// process's user (a service or `env -i` leaves `$USER` unset), else `uid N`.
pub fn operator_name() -> String {
    if let Ok(user) = std::env::var("USER") {
        if !user.is_empty() {
            return user;
        }
    }
    login_name().unwrap_or_else(|| format!("uid {}", real_uid()))
}

fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The login name of the process's real user, from the password database.
fn login_name() -> Option<String> {
    let uid = real_uid();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the reads
    // of `pwd.pw_name` below, which points into it.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so `pw_name` is a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    let name = name.to_string_lossy().into_owned();
    (!name.is_empty()).then_some(name)
}

/// A run id: UTC time plus a few bits of the process id, sortable by start.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    format!(
        "{stamp}-{:04x}",
        (std::process::id() ^ now.nanosecond()) & 0xffff
    )
}
