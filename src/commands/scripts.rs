//! `uprun scripts`: the bundled procedures.

use crate::cli::{ScriptsArgs, ScriptsCommand};
use crate::script::{Procedure, BUNDLED};
use crate::{Error, Result};

pub fn exec(a: ScriptsArgs) -> Result<i32> {
    let out = super::output(false);
    match a.command {
        None => {
            for (name, text) in BUNDLED {
                out.say(&format!("{name:<20} {}", Procedure::description(text)));
            }
        }
        Some(ScriptsCommand::Show { name }) => {
            let Some((_, text)) = BUNDLED.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = BUNDLED.iter().map(|(n, _)| *n).collect();
                return Err(Error::Config(format!(
                    "no bundled procedure `{name}`; bundled: {}",
                    names.join(", ")
                )));
            };
            out.show(text);
        }
    }
    Ok(0)
}
