//! `uprun api`: the host API reference (`crate::reference`), or definition
//! files for editors with `--definitions DIR`.

use crate::cli::ApiArgs;
use crate::Result;

pub fn exec(a: ApiArgs) -> Result<i32> {
    let out = super::output(false);
    if let Some(dir) = a.definitions {
        crate::reference::write_definitions(&dir)?;
        out.say(&format!(
            "definitions written to `{}` (point your editor's Rhai language server at it)",
            dir.display()
        ));
        return Ok(0);
    }
    out.show(&crate::reference::reference()?);
    Ok(0)
}
