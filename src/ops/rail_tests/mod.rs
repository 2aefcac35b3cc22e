//! The rails as decisions over state: `Ops` built over in-memory fakes of the
//! database and the nodes (`fakes`), called directly in plan and run mode.
//! One test per rule and per way around it (issue 9). Each asserts the error's
//! exit code and that a refusal changed nothing: no migration applied, no
//! version recorded, nothing written or run on any node. The same rules are
//! tested end to end through the binary in `tests/host_rails.rs`,
//! `tests/rails.rs` and `tests/host_errors.rs`.
//!
//! One module per area of rails; the shared helpers are here.

mod audit;
mod consent;
mod database;
mod folders;
mod instances;
mod order;
mod plan;
mod summary;

use std::sync::Arc;

use super::fakes::{record, root, World, NODES, RELEASE, SITE};
use super::{BackupOptions, CommandOptions, CreateOptions, Mode, Ops, UpgradeOptions};
use crate::nodes::InstanceRecord;
use crate::{Error, Result};

const MODES: [Mode; 2] = [Mode::Plan, Mode::Run];

/// The error of `r`, which must be a rail's refusal (exit 3) saying `needle`.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T>, needle: &str) -> String {
    let e = r.expect_err("refused");
    assert_eq!(e.exit_code(), 3, "{e}");
    assert_eq!(e.kind(), "refused", "{e}");
    let text = e.to_string();
    assert!(text.contains(needle), "refusal lacks {needle:?}: {text}");
    text
}

/// The error of `r`, which must be bad input (exit 2) saying `needle`.
#[track_caller]
fn bad_input<T: std::fmt::Debug>(r: Result<T>, needle: &str) -> String {
    let e = r.expect_err("bad input");
    assert_eq!(e.exit_code(), 2, "{e}");
    let text = e.to_string();
    assert!(text.contains(needle), "error lacks {needle:?}: {text}");
    text
}

#[track_caller]
fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

fn site_with(edit: impl Fn(&str) -> String) -> String {
    let s = edit(SITE);
    assert_ne!(s, SITE, "the edit changed nothing");
    s
}

fn world_with_site(site: &str) -> World {
    World::build(
        site,
        RELEASE,
        &[(
            "2.0.0_01_priority.sql",
            "ALTER TABLE strategies ADD priority INTEGER;\n",
        )],
    )
}

/// In each mode, a fresh world and its `Ops`.
fn fresh_worlds() -> impl Iterator<Item = (Mode, World, Ops)> {
    worlds(World::new)
}

/// In each mode, a world `make` builds and its `Ops`.
fn worlds(make: impl Fn() -> World) -> impl Iterator<Item = (Mode, World, Ops)> {
    MODES.into_iter().map(move |mode| {
        let w = make();
        let ops = w.ops(mode);
        (mode, w, ops)
    })
}

/// Create options naming the instance's `folder`.
fn in_folder(folder: &str) -> CreateOptions {
    CreateOptions {
        folder: Some(folder.into()),
        ..Default::default()
    }
}

/// In each mode, over a world `make` builds with app02's instance removed,
/// creating one there with each of `opts` must fail as `fails` checks
/// (`refused` or `bad_input`) saying `needle`, and change nothing on any node.
#[track_caller]
fn creates_on_app02_fail(
    make: impl Fn() -> World,
    opts: &[CreateOptions],
    fails: fn(Result<InstanceRecord>, &str) -> String,
    needle: &str,
) {
    for (mode, w, ops) in worlds(make) {
        ok(ops.remove_instance("app02", Default::default()));
        let before = node_marks(&w);
        for opts in opts {
            fails(ops.create_instance("app02", opts.clone()), needle);
        }
        assert_eq!(node_marks(&w), before, "{mode:?}");
    }
}

fn backup(ops: &Ops) {
    ok(ops.backup_db(BackupOptions::default()));
}

/// Create options that stage the instance (files and config, not started):
/// the new application only starts against a database at its version.
fn staged() -> CreateOptions {
    CreateOptions {
        start: Some(false),
        ..Default::default()
    }
}

fn upgrade(ops: &Ops) -> Result<super::UpgradeReport> {
    ops.upgrade_db(UpgradeOptions::default())
}

/// The node's state changes and commands so far, to compare before and after.
fn node_marks(w: &World) -> Vec<(usize, usize)> {
    NODES
        .iter()
        .map(|n| {
            let st = w.node(n);
            (st.changes.len(), st.execs.len())
        })
        .collect()
}

/// Run `text` as a procedure over `ops` (the summary tests and the order
/// rails through a script).
fn run_script(ops: &Arc<Ops>, text: &str) -> Result<()> {
    use crate::script::{self, Procedure, Sources};
    let proc = Procedure {
        name: "caught.rhai".into(),
        text: text.into(),
        base: None,
    };
    let sources = Sources::default();
    let engine = script::engine(None, Some(ops.clone()), &sources);
    let ast = script::compile(&engine, &proc, &sources)?;
    script::run(&engine, &ast, &proc, &sources, ops)
}
