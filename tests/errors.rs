//! Error rendering: broken procedures in `tests/fixtures/` must name the file,
//! line and column, quote the source line with a caret, and say how the error
//! was reached (stdlib function, for_each_node closure, host function).

use crate::support::{uprun, Sandbox};

fn rendered(sb: &Sandbox, fixture: &str) -> String {
    let out = uprun()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("plan")
        .arg(format!("tests/fixtures/{fixture}.rhai"))
        .arg("--site")
        .arg(sb.site())
        .arg("--release")
        .arg(sb.release())
        .output()
        .expect("plan");
    assert!(!out.status.success(), "{fixture} did not fail");
    String::from_utf8_lossy(&out.stderr).replace(&sb.dir.display().to_string(), "[SANDBOX]")
}

#[test]
fn broken_procedures_render_with_file_line_column_and_caret() {
    let sb = Sandbox::new();
    for fixture in [
        "syntax_error",
        "unknown_function",
        "wrong_option",
        "stdlib_error",
        "closure_error",
        "host_error",
    ] {
        let text = rendered(&sb, fixture);
        insta::assert_snapshot!(fixture, text);
    }
}

#[test]
fn check_reports_the_same_syntax_error() {
    let out = uprun()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "tests/fixtures/syntax_error.rhai"])
        .output()
        .expect("check");
    // A syntax error is bad input: exit 2.
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("check_syntax_error", String::from_utf8_lossy(&out.stderr));
}
