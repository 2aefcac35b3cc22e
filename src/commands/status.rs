//! `uprun status`: the site as it is now. Only reads.

use crate::cli::StatusArgs;
use crate::config::Site;
use crate::report::Status;
use crate::Result;

pub fn exec(a: StatusArgs) -> Result<i32> {
    let out = super::output(a.json);
    let site = Site::load(&super::site_or_default(a.site, "uprun status", &out)?)?;
    let recovered = crate::run::recover_for_reading(&site)?;
    let status = Status::read(&site)?;
    if let Some(line) = &recovered {
        if a.json {
            out.notice(line);
        } else {
            out.say(line);
        }
    }
    if a.json {
        out.json(&status);
    } else {
        out.show(&status);
    }
    Ok(0)
}
