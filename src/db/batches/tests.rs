//! Tests of the T-SQL script splitter and lexer.

use super::*;

fn sqls(text: &str) -> Vec<String> {
    split(text, "m.sql")
        .expect("split")
        .batches
        .into_iter()
        .map(|b| b.sql.trim().to_string())
        .collect()
}

#[test]
fn splits_on_go_lines_in_any_case() {
    let text = "CREATE TABLE a (x int);\nGO\nINSERT INTO a VALUES (1);\n  go  \nSELECT 1;\nGo\n";
    assert_eq!(
        sqls(text),
        [
            "CREATE TABLE a (x int);",
            "INSERT INTO a VALUES (1);",
            "SELECT 1;"
        ]
    );
}

#[test]
fn records_start_lines_and_repeat_counts() {
    let text = "-- header comment\n\nSELECT 1;\nGO 3\n\nSELECT 2;\nGO -- done\n";
    let s = split(text, "m.sql").expect("split");
    assert_eq!(s.batches.len(), 2);
    assert_eq!(s.batches[0].count, 3);
    assert_eq!(s.batches[0].line, 1);
    assert_eq!(s.batches[1].count, 1);
    assert_eq!(s.batches[1].line, 6);
    assert_eq!(s.batches[1].sql, "SELECT 2;\n");
    assert!(s.transactional);
}

#[test]
fn last_batch_without_go_and_no_empty_batches() {
    assert_eq!(
        sqls("GO\nGO\nSELECT 1\nGO\n\nGO\nSELECT 2"),
        ["SELECT 1", "SELECT 2"]
    );
    assert_eq!(
        sqls("-- only a comment\nGO\n/* and this */\n"),
        Vec::<String>::new()
    );
    assert_eq!(sqls(""), Vec::<String>::new());
}

#[test]
fn go_inside_strings_names_and_comments_is_text() {
    let text = "INSERT INTO t VALUES ('line one\nGO\nline three');\nSELECT [col\nGO\n]] x] FROM \"q\nGO\n\";\n/* a\nGO\n /* nested\nGO\n */ still comment\nGO\n*/\n-- GO\nSELECT 2;\nGO\nSELECT 3";
    let b = sqls(text);
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b[0].starts_with("INSERT") && b[0].ends_with("SELECT 2;"));
    assert_eq!(b[1], "SELECT 3");
}

#[test]
fn doubled_quotes_do_not_end_strings() {
    let text = "SELECT 'it''s\nGO\nfine';\nGO\nSELECT 2";
    assert_eq!(sqls(text), ["SELECT 'it''s\nGO\nfine';", "SELECT 2"]);
}

#[test]
fn go_with_other_words_is_not_a_separator() {
    assert_eq!(sqls("SELECT 1\nGOTO x\nGO x\n"), ["SELECT 1\nGOTO x\nGO x"]);
    assert!(split("SELECT 1\nGO 0\n", "m.sql").is_err());
}

#[test]
fn sqlcmd_commands_are_refused_with_file_and_line() {
    let e = split("SELECT 1\nGO\n:r other.sql\n", "2.0.0_x.sql").unwrap_err();
    assert!(e.contains("2.0.0_x.sql line 3") && e.contains(":r"), "{e}");
    let e = split(":setvar X 1\n", "m.sql").unwrap_err();
    assert!(e.contains("line 1") && e.contains(":setvar"), "{e}");
    let e = split("SELECT 1\n  !! dir\n", "m.sql").unwrap_err();
    assert!(e.contains("line 2") && e.contains("!!"), "{e}");
    let e = split("SELECT 1\nSELECT $(Var)\n", "m.sql").unwrap_err();
    assert!(e.contains("line 2") && e.contains("$("), "{e}");
    // Inside strings and comments they are text.
    assert!(split("SELECT ':r x', '$(y)'\n/*\n:r z\n*/\n", "m.sql").is_ok());
}

#[test]
fn unterminated_literals_are_reported() {
    let e = split("SELECT 1\nSELECT 'abc\nGO\n", "m.sql").unwrap_err();
    assert!(
        e.contains("m.sql") && e.contains("line 2") && e.contains("string"),
        "{e}"
    );
    assert!(split("/* open\n", "m.sql").unwrap_err().contains("comment"));
    assert!(split("SELECT [a\n", "m.sql")
        .unwrap_err()
        .contains("bracketed"));
}

/// A migration that must run outside a transaction.
const NO_TX: &str = "-- uprun: no-transaction\nALTER DATABASE CURRENT SET RECOVERY FULL;\n";

#[test]
fn no_transaction_header() {
    assert_eq!(split(NO_TX, "m.sql").expect("split").batches.len(), 1);
    for (text, transactional) in [
        (NO_TX, false),
        ("-- a note\n--uprun:no-transaction\nSELECT 1", false),
        // After the first code it is an ordinary comment.
        ("SELECT 1\n-- uprun: no-transaction\n", true),
    ] {
        let s = split(text, "m.sql").expect("split");
        assert_eq!(s.transactional, transactional, "{text}");
    }
    let e = split("-- uprun: no-transactions\nSELECT 1", "m.sql").unwrap_err();
    assert!(e.contains("line 1") && e.contains("no-transactions"), "{e}");
}

#[test]
fn a_byte_order_mark_hides_neither_the_header_nor_the_first_line() {
    let s = split(&format!("\u{feff}{NO_TX}"), "m.sql").expect("split");
    assert!(!s.transactional);
    assert_eq!(s.batches[0].sql, NO_TX);
    assert_eq!(
        sqls("\u{feff}SELECT 1\nGO\nSELECT 2"),
        ["SELECT 1", "SELECT 2"]
    );
}

#[test]
fn comments_around_go_keep_it_a_separator() {
    assert_eq!(
        sqls("SELECT 1\n/* end of part 1 */ GO\nSELECT 2\n  /* a */ go 2 /* b */ -- c\nSELECT 3"),
        ["SELECT 1", "SELECT 2", "SELECT 3"]
    );
    assert_eq!(
        split("SELECT 1\n/* x */ GO 2\n", "m.sql")
            .expect("split")
            .batches[0]
            .count,
        2
    );
    // A comment that goes on past the line, a string, or other code: not a separator.
    assert_eq!(
        sqls("SELECT 1\nGO /* open\n*/\nSELECT 2"),
        ["SELECT 1\nGO /* open\n*/\nSELECT 2"]
    );
    assert_eq!(sqls("SELECT 1\n'x' GO\n"), ["SELECT 1\n'x' GO"]);
    assert_eq!(sqls("SELECT 1 /* x */ GO\n"), ["SELECT 1 /* x */ GO"]);
}

#[test]
fn use_statements_are_found_in_code_only() {
    let text = "\u{feff}USE [Other]]Db]\nGO\n-- USE Commented\nSELECT 'USE x' AS [use];\nuse\n  \"Quoted\";\nSELECT 1 OPTION (USE HINT('DISABLE_OPTIMIZER_ROWGOAL'));\nUSE FastApp;\n/* USE y */";
    assert_eq!(
        databases_used(text),
        [
            (1, "Other]Db".to_string()),
            (5, "Quoted".to_string()),
            (8, "FastApp".to_string())
        ]
    );
    assert!(databases_used("SELECT 1").is_empty());
}

#[test]
fn crlf_line_endings() {
    assert_eq!(
        sqls("SELECT 1\r\nGO\r\nSELECT 2\r\n"),
        ["SELECT 1", "SELECT 2"]
    );
}

#[test]
fn single_select_accepts_reads() {
    for ok in [
        "SELECT name, kind, state FROM strategies WHERE state <> 'valid' ORDER BY name",
        "select 1;",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "SELECT 'delete; drop' AS [update], updated_at FROM t -- insert\n",
        "/* exec */ SELECT 1",
    ] {
        assert_eq!(check_single_select(ok), Ok(()), "{ok}");
    }
}

#[test]
fn single_select_refuses_writes() {
    for (bad, why) in [
        ("DELETE FROM t", "starts with `delete`"),
        ("SELECT 1; DELETE FROM t", "more than one statement"),
        ("SELECT * INTO copy FROM t", "INTO"),
        ("WITH x AS (SELECT 1 AS a) DELETE FROM x", "DELETE"),
        ("SELECT 1\nGO\nSELECT 2", "GO"),
        ("EXEC sp_who", "starts with `exec`"),
        ("", "empty"),
        ("SELECT 'x", "never closed"),
    ] {
        let e = check_single_select(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}
