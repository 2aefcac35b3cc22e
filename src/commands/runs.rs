//! `uprun runs`: a site's runs from their journals.

use crate::cli::{RunsArgs, RunsCommand};
use crate::config::Site;
use crate::journal;
use crate::report::{RunList, RunShow};
use crate::{Error, Result};

pub fn exec(a: RunsArgs) -> Result<i32> {
    let out = super::output(a.json);
    let site = Site::load(&super::site_or_default(a.site, "uprun runs", &out)?)?;
    let runs = journal::list_runs(&site)?;
    let find = |id: &str| {
        runs.iter().find(|(i, _)| i.run_id == id).ok_or_else(|| {
            Error::Config(format!("no run `{id}` for site `{}`", site.file.display()))
        })
    };
    match a.command {
        None if a.json => out.json(&runs.iter().map(|(i, _)| i).collect::<Vec<_>>()),
        None => out.show(&RunList {
            site_file: site.file.clone(),
            runs: &runs,
        }),
        Some(RunsCommand::Show { id }) => {
            let (info, entries) = find(&id)?;
            if a.json {
                out.json(entries);
                return Ok(0);
            }
            if info.damage.is_some() {
                // The whole error, naming the file and the line.
                journal::read(&journal::journal_path(&site, &id))?;
            }
            out.show(&RunShow { info, entries });
        }
        Some(RunsCommand::Abandon { id }) => {
            for line in crate::run::abandon(&site, &find(&id)?.0)? {
                out.say(&line);
            }
        }
    }
    Ok(0)
}
