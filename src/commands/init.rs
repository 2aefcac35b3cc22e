//! `uprun init DIR`: a commented site file, a custom procedure and samples
//! to start from (see `crate::init`). Never overwrites a file.

use std::path::PathBuf;

use crate::Result;

pub fn exec(dir: PathBuf) -> Result<i32> {
    let out = super::output(false);
    crate::init::lay_out(&dir, &mut |line| out.say(line))?;
    Ok(0)
}
