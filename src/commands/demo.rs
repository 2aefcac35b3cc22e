//! `uprun demo`: lay out the sandbox and run the stock procedure on it.

use crate::cli::DemoArgs;
use crate::output::Event;
use crate::sandbox;
use crate::Result;

pub fn exec(a: DemoArgs) -> Result<i32> {
    let reporter = super::output(a.json);
    let sb = sandbox::lay_out(&a.dir, a.recreate)?;
    reporter.line(&format!(
        "Sandbox laid out in `{}`: SQLite database at 1.0.0, nodes app01 (primary), app02, app03 running FastApp 1.0.0, release 2.0.0 in `{}`.",
        sb.dir.display(),
        sb.release.display()
    ));
    if a.setup_only {
        reporter.line(&format!(
            "Next: uprun plan in-place-upgrade --site {} --release {}",
            sb.site.display(),
            sb.release.display()
        ));
        return Ok(0);
    }
    let opts = crate::run::RunOptions {
        yes: true,
        ..Default::default()
    };
    let target = crate::run::Target {
        script: "in-place-upgrade",
        site: &sb.site,
        release: Some(&sb.release),
    };
    let code = super::run::execute(&target, &opts, reporter.clone())?;
    reporter.event(Event::Log {
        level: "info".into(),
        message: format!(
            "Demo done. Look at the result with `uprun status --site {}`; the backup is in `{}`.",
            sb.site.display(),
            sb.dir.join("backups").display()
        ),
    });
    Ok(code)
}
