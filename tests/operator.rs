//! What the operator reads, snapshot-tested through the real binary: `plan`,
//! `run` (plain mode), `runs`, `runs show`, `api`, `init`, `check`, with
//! temporary paths, times, run ids and durations normalised. And the small
//! promises of the operator experience: exit codes, `./site.toml` as the
//! default site, a long step that says it is still running, an `init`
//! scaffold that works as written.

use std::path::Path;

use crate::support::{uprun, Sandbox};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `s` starts with `shape`: `D` a digit, `H` a hex digit, anything
/// else itself.
fn matches_shape(s: &[char], shape: &str) -> bool {
    let shape: Vec<char> = shape.chars().collect();
    s.len() >= shape.len()
        && shape.iter().zip(s).all(|(p, c)| match p {
            'D' => c.is_ascii_digit(),
            'H' => c.is_ascii_hexdigit(),
            p => p == c,
        })
}

/// `text` with what changes from run to run replaced: `dirs` by `[DIR]`,
/// times, run ids, backup stamps and durations.
fn normalise(text: &str, dirs: &[&Path]) -> String {
    let mut t = text.to_string();
    for d in dirs {
        t = t.replace(&d.display().to_string(), "[DIR]");
    }
    // The downtime window's figures change from run to run; its presence does not.
    t = t
        .lines()
        .map(|l| match l.find("downtime window: ") {
            Some(i) => format!("{}downtime window: [WINDOW]", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if t.ends_with('\n') { "\n" } else { "" };
    const SHAPES: &[(&str, &str)] = &[
        ("DDDD-DD-DDTDD:DD:DD.DDDZ", "[TIME]"),
        ("DDDD-DD-DDTDD:DD:DDZ", "[TIME]"),
        ("DDDDDDDD-DDDDDD-HHHH", "[RUN_ID]"),
        ("DDDDDDDDTDDDDDDZ", "[STAMP]"),
    ];
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    'scan: while i < chars.len() {
        for (shape, with) in SHAPES {
            if matches_shape(&chars[i..], shape) {
                out.push_str(with);
                i += shape.chars().count();
                continue 'scan;
            }
        }
        // A duration: `(12 ms)`, `(2.5 s)`.
        if chars[i] == '(' {
            let rest: String = chars[i + 1..].iter().take(16).collect();
            let num: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let unit = &rest[num.len()..];
            if !num.is_empty() {
                for u in [" ms)", " s)"] {
                    if unit.starts_with(u) {
                        out.push_str("([DURATION])");
                        i += 1 + num.len() + u.len();
                        continue 'scan;
                    }
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The demo sandbox with two nodes (app01, app02): one secondary, so the
/// order of parallel steps cannot vary between runs.
fn two_node_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    let cut = site
        .find("[[node]]\nname = \"app03\"")
        .expect("app03 in the demo site");
    std::fs::write(sb.site(), &site[..cut]).expect("write site");
    sb
}

fn in_sandbox(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    uprun()
        .current_dir(&sb.dir)
        .env("USER", "operator")
        // No "still running" line in a snapshot, however slow the machine.
        .env("UPRUN_STILL_RUNNING_SECS", "100000")
        .args(args)
        .output()
        .expect("uprun")
}

#[test]
fn plan_run_runs_and_runs_show_read_as_snapshotted() {
    let sb = two_node_sandbox();
    let stock = [
        "in-place-upgrade",
        "--site",
        "site.toml",
        "--release",
        "release",
    ];
    let mut plan = vec!["plan"];
    plan.extend(stock);
    let out = in_sandbox(&sb, &plan);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan_text = normalise(&text(&out.stdout), &[&sb.dir]);
    assert!(
        !plan_text.contains("[RUN_ID]"),
        "a plan has no run id: {plan_text}"
    );
    assert!(!plan_text.contains("done ("), "{plan_text}");
    insta::assert_snapshot!("plan_stock_two_nodes", plan_text);

    let mut run = vec!["run"];
    run.extend(stock);
    run.push("--yes");
    let out = in_sandbox(&sb, &run);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(
        "run_stock_two_nodes",
        normalise(&text(&out.stdout), &[&sb.dir])
    );

    // Without --site: ./site.toml, and said so.
    let out = in_sandbox(&sb, &["runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("using ./site.toml"),
        "{}",
        text(&out.stderr)
    );
    insta::assert_snapshot!("runs", normalise(&text(&out.stdout), &[&sb.dir]));
    let listing = text(&out.stdout);
    let id = listing
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a run listed under the header");
    let out = in_sandbox(&sb, &["runs", "show", id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = normalise(&text(&out.stdout), &[&sb.dir]);
    // Times in whole seconds: every one of them normalised.
    assert!(
        shown.lines().skip(1).all(|l| l.starts_with("[TIME]")),
        "{shown}"
    );
    insta::assert_snapshot!("runs_show", shown);

    // `status` after the run: the database, each node and its recorded state.
    let out = in_sandbox(&sb, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!("status", normalise(&text(&out.stdout), &[&sb.dir]));
}

#[test]
fn uprun_test_reads_as_snapshotted() {
    let sb = two_node_sandbox();
    let out = in_sandbox(
        &sb,
        &[
            "test",
            "in-place-upgrade",
            "--site",
            "site.toml",
            "--release",
            "release",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(
        "test_stock_two_nodes",
        normalise(&text(&out.stdout), &[&sb.dir])
    );
}

#[test]
fn runs_without_site_and_without_site_toml_is_bad_input() {
    let tmp = tempfile::tempdir().expect("tmp");
    for args in [
        &["runs"][..],
        &["runs", "show", "x"],
        &["runs", "abandon", "x"],
    ] {
        let out = uprun()
            .current_dir(tmp.path())
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("--site") && err.contains("no site.toml in the current folder"),
            "{err}"
        );
    }
}

#[test]
fn the_journal_names_the_operator_without_user() {
    let sb = Sandbox::new();
    let out = uprun()
        .current_dir(&sb.dir)
        .env_remove("USER")
        .args(["run", "backup", "--site", "site.toml", "--yes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = uprun()
        .current_dir(&sb.dir)
        .args(["runs", "--json"])
        .output()
        .expect("runs");
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = runs[0]["run_id"].as_str().expect("run id").to_string();
    let out = uprun()
        .current_dir(&sb.dir)
        .args(["runs", "show", &id])
        .output()
        .expect("runs show");
    let shown = text(&out.stdout);
    let who = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    let who = text(&who.stdout).trim().to_string();
    assert!(shown.contains(&format!("started by {who}:")), "{shown}");
}

#[test]
fn api_reference_reads_as_snapshotted() {
    let out = uprun().arg("api").output().expect("api");
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!("api", text(&out.stdout));
}

#[test]
fn check_reports_every_problem_in_the_procedure_and_its_modules() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("helpers.rhai"),
        "log(\"helpers loaded\");\nfn drain(node) { node_comand(node, \"true\"); }\n",
    )
    .expect("write module");
    std::fs::write(
        tmp.path().join("proc.rhai"),
        "import \"helpers\" as h;\nfn mine(n) { n }\nlet b = backup_db(#{ verfy: true });\nremove_instanse(\"app02\");\nlet x = mine(1);\nlog(`${type_of(x)} ${\"a\".len()}`);\nh::drain(\"app02\");\n",
    )
    .expect("write procedure");
    let out = uprun()
        .current_dir(tmp.path())
        .args(["check", "proc.rhai"])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    insta::assert_snapshot!("check_every_problem", text(&out.stderr));

    // A module that logs at its top level is fine.
    std::fs::write(
        tmp.path().join("helpers.rhai"),
        "log(\"helpers loaded\");\nfn drain(node) { node_command(node, \"true\"); }\n",
    )
    .expect("write module");
    std::fs::write(
        tmp.path().join("proc.rhai"),
        "import \"helpers\" as h;\nh::drain(\"app02\");\n",
    )
    .expect("write procedure");
    let out = uprun()
        .current_dir(tmp.path())
        .args(["check", "proc.rhai"])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!("check_ok", text(&out.stdout));
}

#[test]
fn bad_input_exits_2() {
    let sb = Sandbox::new();
    // The stock procedure needs a release.
    let out = sb
        .on_site(&["plan", "in-place-upgrade"])
        .output()
        .expect("plan");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--release"),
        "{}",
        text(&out.stderr)
    );
    // A missing SQLite file, for every command that opens it.
    std::fs::remove_file(sb.db_path()).expect("remove db");
    for cmd in ["plan", "run"] {
        let out = sb
            .cmd(
                cmd,
                "in-place-upgrade",
                &["--yes"][..usize::from(cmd == "run")],
            )
            .output()
            .expect(cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains("app.sqlite") && err.contains("database.path"),
            "{err}"
        );
    }
    let out = sb.on_site(&["status"]).output().expect("status");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn help_and_man_list_every_exit_code_and_no_missing_page() {
    let help = text(&uprun().arg("--help").output().expect("help").stdout);
    let man = text(&uprun().arg("man").output().expect("man").stdout);
    for doc in [&help, &man] {
        for needle in [
            "0 success",
            "incomplete",
            "2 bad input",
            "not confirmed",
            "130",
        ] {
            assert!(doc.contains(needle), "{needle} missing from:\n{doc}");
        }
    }
    assert!(
        !man.contains("uprun-demo(1)") && !man.contains("uprun\\-demo(1)"),
        "{man}"
    );
    assert!(
        man.contains("uprun demo"),
        "every command in the one page: {man}"
    );
}

#[test]
fn a_long_step_says_it_is_still_running() {
    let sb = Sandbox::new();
    // The thing under test takes 2.5 s; the interval is shortened to 1 s.
    let script = sb.script("slow.rhai", "node_command(\"app01\", \"sleep 2.5\");\n");
    let out = uprun()
        .env("UPRUN_STILL_RUNNING_SECS", "1")
        .arg("run")
        .arg(&script)
        .arg("--site")
        .arg(sb.site())
        .arg("--yes")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let still: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("still running"))
        .collect();
    assert!(
        still
            .iter()
            .any(|l| l.starts_with("[1] run `sleep 2.5` on `app01` still running (")),
        "{stdout}"
    );
    assert!(still.len() >= 2, "one line per interval: {stdout}");
    // Said before the step's end, not after.
    let done = stdout.find("[1] done").expect("done line");
    assert!(
        stdout.find("still running").is_some_and(|i| i < done),
        "{stdout}"
    );
}

#[test]
fn init_lays_out_a_site_that_check_plan_test_and_run_accept_as_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = uprun()
        .current_dir(tmp.path())
        .args(["init", "mysite"])
        .output()
        .expect("init");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!("init", text(&out.stdout));
    let site = std::fs::read_to_string(tmp.path().join("mysite/site.toml")).expect("site");
    let script = std::fs::read_to_string(tmp.path().join("mysite/upgrade.rhai")).expect("script");
    for t in [&site, &script] {
        assert!(
            t.contains("--release sample-release"),
            "header agrees with Next: {t}"
        );
    }
    let lb = std::fs::read_to_string(tmp.path().join("mysite/lb.rhai")).expect("lb");
    assert!(
        !lb.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .any(|l| l.contains(">>")),
        "lb.rhai must set state, not append: {lb}"
    );
    let d = |args: &[&str]| {
        uprun()
            .current_dir(tmp.path().join("mysite"))
            .args(args)
            .output()
            .expect("uprun")
    };
    let target = ["--site", "site.toml", "--release", "sample-release"];
    let out = d(&["check", "upgrade.rhai"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // `test` both ways: with the load balancer's commands simulated, and run
    // for real on the copies (they must be safe to run again on resume).
    for cmd in [
        &["plan"][..],
        &["test"][..],
        &["test", "--run-commands"][..],
    ] {
        let mut args = vec![cmd[0], "upgrade.rhai"];
        args.extend(target);
        args.extend(&cmd[1..]);
        let out = d(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{cmd:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let mut args = vec!["run", "upgrade.rhai"];
    args.extend(target);
    args.push("--yes");
    let out = d(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = d(&["status", "--site", "site.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2.0.0"), "{}", text(&out.stdout));

    // A second init never overwrites anything.
    let out = uprun()
        .current_dir(tmp.path())
        .args(["init", "mysite"])
        .output()
        .expect("init");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already exist;"),
        "{}",
        text(&out.stderr)
    );
}
