//! One consent up front, on a real terminal: the question counts what the
//! plan counts, one yes covers the run, no changes nothing, and closed input
//! is a no.

use super::*;

#[test]
fn plan_and_the_question_count_the_same_changes() {
    let sb = Sandbox::new();
    let out = sb
        .cmd("plan", "in-place-upgrade", &[])
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", output_text(&out));
    let counted = "12 change(s) (1 backup(s), 1 irreversible)";
    assert!(output_text(&out).contains(counted), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("IRREVERSIBLE: upgrade database"),
        "{}",
        output_text(&out)
    );
    // Without a terminal and without --yes: refused, with the same count.
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(output_text(&out).contains(counted), "{}", output_text(&out));
    sb.assert_unchanged(&before, "the refused run changed something");
}

/// Run `cmd` on a new pseudo-terminal (stdin, stdout and stderr), answering
/// each `[y/N]` question with the next of `answers` (then `n`). Returns the
/// exit code, the questions asked, and the whole output.
fn on_terminal(mut cmd: std::process::Command, answers: &[&str]) -> (Option<i32>, usize, String) {
    let (mut master, slave) = {
        let mut m = -1;
        let mut s = -1;
        // SAFETY: openpty writes two new descriptors, owned below.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: fresh descriptors from openpty, owned once each.
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    };
    cmd.stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave.try_clone().expect("dup"))
        .env("TERM", "xterm");
    let mut child = cmd.spawn().expect("spawn on a terminal");
    // Only the child may hold the terminal: the master reads EIO once it ends.
    drop(cmd);
    drop(slave);
    let mut output = Vec::new();
    let mut asked = 0;
    let mut buf = [0u8; 4096];
    loop {
        // EIO once the child and its descendants closed the terminal.
        let n = match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        output.extend_from_slice(&buf[..n]);
        let questions = String::from_utf8_lossy(&output).matches("[y/N]").count();
        while asked < questions {
            let answer = answers.get(asked).copied().unwrap_or("n");
            // Ctrl-D (closing the input) is typed alone, without Enter.
            let typed = if answer == "\u{4}" {
                answer.to_string()
            } else {
                format!("{answer}\n")
            };
            master.write_all(typed.as_bytes()).expect("answer");
            asked += 1;
        }
    }
    let status = child.wait().expect("wait");
    (
        status.code(),
        asked,
        String::from_utf8_lossy(&output).into_owned(),
    )
}

#[test]
fn one_yes_up_front_covers_the_whole_run() {
    let sb = Sandbox::new();
    let cmd = sb.process("run", "in-place-upgrade", &[]);
    let (code, asked, out) = on_terminal(cmd, &["y"]);
    assert_eq!(code, Some(0), "exit {code:?}: {out}");
    assert_eq!(asked, 1, "one question, up front: {out}");
    let question = out
        .lines()
        .find(|l| l.contains("[y/N]"))
        .expect("the question");
    assert!(
        question.contains("12 change(s) (1 backup(s), 1 irreversible)")
            && question.contains("whole run"),
        "{question}"
    );
    assert!(out.contains("IRREVERSIBLE: upgrade database"), "{out}");
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn no_up_front_changes_nothing() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let cmd = sb.process("run", "in-place-upgrade", &[]);
    let (code, asked, out) = on_terminal(cmd, &["n"]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(asked, 1, "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    sb.assert_unchanged(&before, "a refused run changed something");
    assert!(sb.journals().is_empty());
}

#[test]
fn the_procedures_own_question_is_asked_up_front_with_the_plan() {
    let sb = Sandbox::new();
    let script = sb.script(
        "ask.rhai",
        "if confirm(\"Carry on with the site check?\") { log(\"carrying on\"); } else { log(\"stopping\"); }\n",
    );
    let cmd = sb.process("run", &script, &[]);
    let (code, asked, out) = on_terminal(cmd, &["y"]);
    assert_eq!(code, Some(0), "exit {code:?}: {out}");
    assert_eq!(asked, 1, "asked once, before the run: {out}");
    let question = out
        .lines()
        .find(|l| l.contains("[y/N]"))
        .expect("the question");
    assert!(question.contains("question(s) listed above"), "{question}");
    assert!(out.contains("ask: Carry on with the site check?"), "{out}");
    assert!(out.contains("carrying on"), "{out}");
}

#[test]
fn input_closed_at_the_question_is_a_no_and_ends_the_line() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let cmd = sb.process("run", "in-place-upgrade", &[]);
    // Ctrl-D at the start of the line: the terminal closes the input.
    let (code, asked, out) = on_terminal(cmd, &["\u{4}"]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(asked, 1, "{out}");
    let after = out.split("[y/N]").nth(1).expect("the question was asked");
    // What follows the question starts on a line of its own.
    assert!(
        after.trim_start_matches(' ').starts_with(['\r', '\n']),
        "the next output continues the question's line: {out:?}"
    );
    assert!(after.contains("Cancelled: nothing was changed"), "{out}");
    sb.assert_unchanged(&before, "a refused run changed something");
}
