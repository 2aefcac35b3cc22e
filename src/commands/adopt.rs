//! `uprun adopt`: record the instances that already run on a site's nodes
//! (see `crate::run::adopt`). Without --yes, says what it would record.

use crate::cli::AdoptArgs;
use crate::config::Site;
use crate::run::{check_adoption, AdoptRequest};
use crate::Result;

pub fn exec(a: AdoptArgs) -> Result<i32> {
    let out = super::output(false);
    let site = Site::load(&super::site_or_default(
        a.site.clone(),
        "uprun adopt",
        &out,
    )?)?;
    let request = AdoptRequest {
        nodes: &a.node,
        version: &a.version,
        folder: &a.folder,
        app: a.app.as_deref(),
        yes: a.yes,
    };
    let adoption = check_adoption(&site, &request)?;
    for line in adoption.lines() {
        out.say(&line);
    }
    if !a.yes {
        out.say("Nothing was written: re-run with --yes to record these instances.");
        return Ok(3);
    }
    adoption.record()?;
    out.say("Recorded. `uprun status` shows them; runs now treat them as the current instances.");
    Ok(0)
}
