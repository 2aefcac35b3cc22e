//! Reports a command prints: data gathered once, shown through `Display`
//! (human) or serde (`--json`). The rehearsal's report (`uprun test`) is
//! shown from `rehearsal`.

mod rehearsal;
mod runs;
mod status;

pub use runs::{RunList, RunShow};
pub use status::{NodeStatus, RunToFinish, Status};
