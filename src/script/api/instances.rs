//! Host functions about the application's instances on nodes: `instance`,
//! `remove_instance`, `create_instance`, `start_instance`, `stop_instance`,
//! `stage_release`, `healthy`.

use std::sync::Arc;

use rhai::Dynamic;

use super::{fail, node_name, reg_node_opts, reg_ops_arg, to_dyn, Registrar};
use crate::ops::Ops;

pub(super) fn register(r: &mut Registrar, o: &Option<Arc<Ops>>) {
    reg_ops_arg(r, o, "instance", &["node: Dynamic", "Map"],
        "The current instance on `node` (a node map or name): `#{ node, app_name, version, folder, created, state }`, or () when there is none.\n`state` is what was last done to it: \"staged\" (files and config laid out, never started), \"started\", \"healthy\"\n(start and health commands passed) or \"failed\"; absent for instances recorded by older versions. Use `healthy(node)`\nto know whether it runs now.",
        |ops, node: Dynamic, pos| match ops.instance(&node_name(&node, pos)?).map_err(|e| fail(ops, e, pos))? {
            Some(r) => to_dyn(&r, pos),
            None => Ok(Dynamic::UNIT),
        });
    let remove_doc = "Remove the current instance on `node`: run the site's stop command, unregister it, keep its folder.\nRefused on the primary while any secondary still has an instance (secondaries first).\nReturns the removed instance's record, or () when the node had none. Options: none.\nErrors: `refused` (primary before secondaries, not confirmed), `node` (the stop command failed, the node is unreachable).";
    reg_node_opts(r, o, "remove_instance", remove_doc, Ops::remove_instance);
    let create_doc = "Create the release's instance on `node` in a new folder under the node's root: copy the payload and\nwrite the instance's config (no secrets): the instance is `staged`; then run the start and health commands: it is\n`healthy`. It counts as created only once its health command passed; a failed start or health check leaves it\n`failed` on the node, and a resume starts it again in the same folder (never a new one).\nOptions: `start` (default true; false only stages it: start it with `start_instance` once the database is at its\nversion), `app_name` (default and only accepted value: the prior instance's name: the node's removed instance, else\nanother node's, else the site's `[application] name` on a site with no instance; users keep their URL; to rename on\npurpose set `[application] name = \"New\"` and `renamed_from = \"Old\"` in the site file, and instances named Old are\ncreated as New), `folder` (one plain folder name created directly under the node's root, no `/`, `\\`, `:`, `.` or\n`..`; default `<app>-<version>`, suffixed when taken). Folders are compared as the node resolves them (links, mounts,\nspelling): refused for a folder that is, holds or sits inside a folder any earlier instance used, that is a link or\nresolves outside the root, or that exists and is not empty; and while the node still has another instance.\nDecided from what the node says now: a node that already has this app and version is not created again (it is\nstarted when it is staged, failed or its health command fails now; left alone when healthy now), and a layout\nthat was cut off is finished in its own folder. Starting is refused unless the database is at the release's\nversion (the new application cannot run on the old schema): stage the primary, `upgrade_db()`, then start it.\nReturns `#{ node, app_name, version, folder, created, state }`.\nErrors: `refused` (database not at the release's version while starting, used, linked, outside or non-empty folder,\nanother application name than the prior one, another instance still there, not confirmed), `node` (copy, start or\nhealth command failed), `config` (folder not one plain name, bad app name, no release).";
    reg_node_opts(r, o, "create_instance", create_doc, Ops::create_instance);
    let start_doc = "Start the instance on `node` (staged by `create_instance(node, #{ start: false })`, or failed earlier):\nrun the site's start command, then its health command; the node records `started`, then `healthy` (or `failed`).\nAn instance that is healthy now (not staged or failed, and its health command passes) is left alone.\nRefused unless the database is at the instance's version (the vendor's wizard creates the application and\nupgrades the database in one pass: the new application cannot run on the old schema). Options: none.\nReturns `#{ node, app_name, version, folder, created, state }`.\nErrors: `refused` (no instance on the node, database at another version, not confirmed), `node` (the start or\nhealth command failed: the instance is recorded as failed, and a resume starts it again).";
    reg_node_opts(r, o, "start_instance", start_doc, Ops::start_instance);
    let stop_doc = "Stop the instance on `node` with the site's stop command; it stays the node's instance, recorded
`stopped`, and `start_instance(node)` starts it again (a rolling restart, maintenance on one node).
A run that stops an instance must leave it running: the run-end audit checks every node's health. Options: none.
Returns `#{ node, app_name, version, folder, created, state }`.
Errors: `refused` (no instance on the node, not confirmed), `node` (the stop command failed; the instance is
recorded `stopped` and a later `start_instance` starts it).";
    reg_node_opts(r, o, "stop_instance", stop_doc, Ops::stop_instance);
    let stage_doc = "Stage the release's payload on `node` before the downtime window: copy it into the node's staging area\n`<root>/.uprun-staging/<digest>/payload` (outside any instance folder; never an instance folder), then hash every\nfile on the node (SHA-256) and compare with the release. Resumable: files already staged that verify are kept, anything\nelse there is removed and sent again. Another release's staging is removed first. `create_instance` then renames a\nstaging that verifies by hash (checked again right before) into the new instance's folder, so inside the window a create\nis a rename plus config, start and health; without one it copies the payload as before. A node whose instance already\nruns the release is not staged. Options: none.\nReturns `#{ node, folder, staged, files, bytes, sent_files, sent_bytes, kept_files, reason }` (`reason`: why nothing was\nstaged, e.g. a PowerShell node, or a node without `sha256sum`).\nErrors: `node` (the copy failed, or the staging does not verify after it was sent), `refused` (a node uprun has no\nrecord of, not confirmed), `config` (no release).";
    reg_node_opts(r, o, "stage_release", stage_doc, Ops::stage_release);
    reg_ops_arg(r, o, "healthy", &["node: Dynamic", "bool"],
        "Whether `node`'s current instance runs now: it has one, its lifecycle reached healthy (not left staged,\nfailed, or started with its health check cut off), and the site's health command passes now (it runs in plan mode too: it is the site's own read-only check; an instance\nthe plan changes is as planned). Changes nothing. A site without a health command counts a started\ninstance as healthy.",
        |ops, node: Dynamic, pos| ops.healthy(&node_name(&node, pos)?).map_err(|e| fail(ops, e, pos)));
}
