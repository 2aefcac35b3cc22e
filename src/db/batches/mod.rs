//! T-SQL scripts as sqlcmd reads them: split on `GO` lines into the batches
//! that are sent to the server one by one, and a small lexer that knows where
//! strings, `[bracketed]`/`"quoted"` names and comments are. Pure text work:
//! nothing here talks to a server.
//!
//! Rules (those of sqlcmd, minus its scripting commands):
//! - `GO` alone on a line (any case, surrounding blanks allowed) ends a batch;
//!   `GO n` sends the batch `n` times; comments on the line are allowed, before
//!   it (`/* c */ GO`, as SSMS reads it) or after it (`GO -- done`).
//! - A `GO` inside a string, a bracketed or quoted name, or a comment (block
//!   comments nest, as in T-SQL) is text, not a separator.
//! - sqlcmd commands (`:r`, `:setvar`, `:on error`, `!!`...) and `$(var)`
//!   substitutions are refused: uprun sends each batch exactly as written, so a
//!   script relying on them would run differently than its author expects.
//! - A header line `-- uprun: no-transaction` before any code opts the file out
//!   of the transaction each migration otherwise runs in (for statements SQL
//!   Server refuses inside one, e.g. `ALTER DATABASE`).
//! - A UTF-8 byte order mark (SSMS saves files with one) is not text: it is
//!   dropped before the header is read and is never sent.

/// One batch of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub sql: String,
    /// 1-based line of the file where the batch starts (server line numbers
    /// are relative to it).
    pub line: usize,
    /// How many times to send it (`GO n`).
    pub count: u32,
}

/// A migration file split into batches, with its header options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub batches: Vec<Batch>,
    /// False when the file starts with `-- uprun: no-transaction`.
    pub transactional: bool,
}

/// The header that opts a migration out of its transaction.
pub const NO_TRANSACTION: &str = "no-transaction";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// `'...'` (a doubled `''` is a quote inside the string).
    Str,
    /// `"..."` (a quoted identifier).
    Quoted,
    /// `[...]` (a doubled `]]` is a bracket inside the name).
    Bracket,
    LineComment,
    /// `/* ... */`, nesting depth.
    Block(u32),
}

/// Walks T-SQL text and reports, for every character, whether it is code
/// (outside strings, names and comments).
struct Lexer {
    state: State,
    /// Where the current string/name/comment began (line), for errors.
    opened_at: usize,
}

/// What a character is, as seen by the lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Code,
    /// Inside (or delimiting) a string or a bracketed/quoted name.
    Literal,
    Comment,
}

impl Lexer {
    fn new() -> Self {
        Lexer {
            state: State::Code,
            opened_at: 0,
        }
    }

    /// Classify the characters of one line (with its newline), updating the state.
    fn line(&mut self, line: &str, line_no: usize, mut on: impl FnMut(usize, char, Kind)) {
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (pos, c) = chars[i];
            let next = chars.get(i + 1).map(|&(_, c)| c);
            match self.state {
                State::Code => match (c, next) {
                    ('-', Some('-')) => {
                        self.state = State::LineComment;
                        on(pos, c, Kind::Comment);
                    }
                    ('/', Some('*')) => {
                        self.state = State::Block(1);
                        self.opened_at = line_no;
                        on(pos, c, Kind::Comment);
                        on(chars[i + 1].0, '*', Kind::Comment);
                        i += 1;
                    }
                    ('\'', _) => {
                        self.state = State::Str;
                        self.opened_at = line_no;
                        on(pos, c, Kind::Literal);
                    }
                    ('"', _) => {
                        self.state = State::Quoted;
                        self.opened_at = line_no;
                        on(pos, c, Kind::Literal);
                    }
                    ('[', _) => {
                        self.state = State::Bracket;
                        self.opened_at = line_no;
                        on(pos, c, Kind::Literal);
                    }
                    _ => on(pos, c, Kind::Code),
                },
                State::Str | State::Quoted | State::Bracket => {
                    let close = match self.state {
                        State::Str => '\'',
                        State::Quoted => '"',
                        _ => ']',
                    };
                    on(pos, c, Kind::Literal);
                    if c == close {
                        if next == Some(close) {
                            on(chars[i + 1].0, close, Kind::Literal);
                            i += 1;
                        } else {
                            self.state = State::Code;
                        }
                    }
                }
                State::LineComment => {
                    on(pos, c, Kind::Comment);
                    if c == '\n' {
                        self.state = State::Code;
                    }
                }
                State::Block(depth) => {
                    on(pos, c, Kind::Comment);
                    match (c, next) {
                        ('*', Some('/')) => {
                            on(chars[i + 1].0, '/', Kind::Comment);
                            i += 1;
                            self.state = if depth == 1 {
                                State::Code
                            } else {
                                State::Block(depth - 1)
                            };
                        }
                        ('/', Some('*')) => {
                            on(chars[i + 1].0, '*', Kind::Comment);
                            i += 1;
                            self.state = State::Block(depth + 1);
                        }
                        _ => {}
                    }
                }
            }
            i += 1;
        }
        // A line comment also ends at the end of the text.
        if self.state == State::LineComment && !line.ends_with('\n') {
            self.state = State::Code;
        }
    }

    /// An error for text that ends inside a string, name or comment.
    fn unterminated(&self) -> Option<String> {
        let what = match self.state {
            State::Code | State::LineComment => return None,
            State::Str => "string ('...')",
            State::Quoted => "quoted name (\"...\")",
            State::Bracket => "bracketed name ([...])",
            State::Block(_) => "comment (/* ... */)",
        };
        Some(format!(
            "the {what} that starts on line {} is never closed",
            self.opened_at
        ))
    }
}

/// `GO`, `GO 3`, `go -- comment`: the repeat count, or None for any other line.
fn go_line(line: &str) -> Option<std::result::Result<u32, String>> {
    let code = match line.find("--") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut words = code.split_whitespace();
    let first = words.next()?;
    if !first.eq_ignore_ascii_case("go") {
        return None;
    }
    match (words.next(), words.next()) {
        (None, _) => Some(Ok(1)),
        (Some(n), None) if n.chars().all(|c| c.is_ascii_digit()) => match n.parse::<u32>() {
            Ok(n) if n >= 1 => Some(Ok(n)),
            _ => Some(Err(format!(
                "`GO {n}`: the repeat count must be between 1 and {}",
                u32::MAX
            ))),
        },
        // `GO` followed by something else is not a separator (sqlcmd agrees):
        // it is sent as code and the server will say what is wrong.
        _ => None,
    }
}

/// A sqlcmd command at the start of a line (`:r`, `:setvar`, `!!`).
fn sqlcmd_command(line: &str) -> Option<String> {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix(':') {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if !word.is_empty() {
            return Some(format!(":{word}"));
        }
    }
    if t.starts_with("!!") {
        return Some("!!".into());
    }
    None
}

/// The code of a line that starts outside any string, name or comment, with
/// its comments left out, so that `/* note */ GO` reads as `GO` (as SSMS reads
/// it). A line with a string or name, or that ends inside a block comment,
/// gives the line unchanged (never a separator).
fn separator_code(lexer: &Lexer, line: &str) -> String {
    let mut probe = Lexer {
        state: lexer.state,
        opened_at: lexer.opened_at,
    };
    let mut code = String::new();
    let mut literal = false;
    probe.line(line, 0, |_, c, kind| match kind {
        Kind::Code => code.push(c),
        Kind::Comment => code.push(' '),
        Kind::Literal => literal = true,
    });
    if literal || !matches!(probe.state, State::Code | State::LineComment) {
        return line.to_string();
    }
    code
}

/// Read the `-- uprun: ...` header lines before the first code.
fn header(text: &str, file: &str) -> std::result::Result<bool, String> {
    let mut transactional = true;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let Some(comment) = t.strip_prefix("--") else {
            break;
        };
        let Some(option) = comment.trim().strip_prefix("uprun:") else {
            continue;
        };
        match option.trim() {
            NO_TRANSACTION => transactional = false,
            other => {
                return Err(format!(
                    "{file} line {}: unknown header option `-- uprun: {other}`; the only option is `-- uprun: {NO_TRANSACTION}`",
                    i + 1
                ))
            }
        }
    }
    Ok(transactional)
}

/// Split a script into batches. `file` names it in errors.
pub fn split(text: &str, file: &str) -> std::result::Result<Script, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let transactional = header(text, file)?;
    let mut lexer = Lexer::new();
    let mut batches = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut has_code = false;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        if lexer.state == State::Code {
            if let Some(go) = go_line(&separator_code(&lexer, line)) {
                let count = go.map_err(|m| format!("{file} line {line_no}: {m}"))?;
                if has_code {
                    batches.push(Batch {
                        sql: std::mem::take(&mut current),
                        line: start,
                        count,
                    });
                }
                current.clear();
                has_code = false;
                start = line_no + 1;
                continue;
            }
            if let Some(cmd) = sqlcmd_command(line) {
                return Err(format!(
                    "{file} line {line_no}: sqlcmd command `{cmd}` is not supported: uprun sends each batch to the server exactly as written (inline included files and replace variables in the migration itself)"
                ));
            }
        }
        let mut error = None;
        let mut prev_dollar = false;
        lexer.line(line, line_no, |_, c, kind| {
            if kind != Kind::Comment && !c.is_whitespace() {
                has_code = true;
            }
            if kind == Kind::Code {
                if prev_dollar && c == '(' && error.is_none() {
                    error = Some(format!(
                        "{file} line {line_no}: `$(...)` is a sqlcmd variable, which uprun does not substitute; write the value in the migration"
                    ));
                }
                prev_dollar = c == '$';
            } else {
                prev_dollar = false;
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
        if current.is_empty() && !has_code {
            // Leading blank or comment-only lines: the batch starts later.
            start = line_no + 1;
            if line.trim().is_empty() {
                continue;
            }
            start = line_no;
        }
        current.push_str(line);
    }
    if let Some(m) = lexer.unterminated() {
        return Err(format!("{file}: {m}"));
    }
    if has_code {
        batches.push(Batch {
            sql: current,
            line: start,
            count: 1,
        });
    }
    Ok(Script {
        batches,
        transactional,
    })
}

/// Every `USE database` statement in a script (code only, not strings or
/// comments): the 1-based line and the database name as the server reads it
/// (`[a]]b]` is `a]b`). `OPTION (USE HINT(...))` and `USE PLAN` are query
/// hints, not statements, and are left out.
pub fn databases_used(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Tokens: words of code, and whole bracketed/quoted names or strings.
    #[derive(PartialEq)]
    enum Tok {
        Word(String),
        Name(String),
        Other,
    }
    let mut toks: Vec<(usize, Tok)> = Vec::new();
    let mut lexer = Lexer::new();
    let mut word = String::new();
    let mut literal = String::new();
    let mut literal_line = 0;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        lexer.line(line, line_no, |_, c, kind| {
            if kind == Kind::Literal {
                if literal.is_empty() {
                    literal_line = line_no;
                }
                literal.push(c);
                return;
            }
            if !literal.is_empty() {
                toks.push((literal_line, name_token(&std::mem::take(&mut literal))));
            }
            if kind == Kind::Code && (c.is_alphanumeric() || "_@#$".contains(c)) {
                word.push(c);
                return;
            }
            if !word.is_empty() {
                toks.push((line_no, Tok::Word(std::mem::take(&mut word))));
            }
            if kind == Kind::Code && !c.is_whitespace() {
                toks.push((line_no, Tok::Other));
            }
        });
        if !word.is_empty() {
            toks.push((line_no, Tok::Word(std::mem::take(&mut word))));
        }
    }
    if !literal.is_empty() {
        toks.push((literal_line, name_token(&literal)));
    }
    fn name_token(lit: &str) -> Tok {
        let unquote = |open: char, close: char| {
            lit.strip_prefix(open)
                .and_then(|l| l.strip_suffix(close))
                .map(|inner| inner.replace(&format!("{close}{close}"), &close.to_string()))
        };
        match unquote('[', ']').or_else(|| unquote('"', '"')) {
            Some(name) => Tok::Name(name),
            None => Tok::Other,
        }
    }
    let mut out = Vec::new();
    for (i, (line, tok)) in toks.iter().enumerate() {
        let Tok::Word(w) = tok else { continue };
        if !w.eq_ignore_ascii_case("use") {
            continue;
        }
        match toks.get(i + 1).map(|(_, t)| t) {
            Some(Tok::Word(next))
                if next.eq_ignore_ascii_case("hint") || next.eq_ignore_ascii_case("plan") => {}
            Some(Tok::Word(name)) | Some(Tok::Name(name)) => out.push((*line, name.clone())),
            _ => {}
        }
    }
    out
}

/// Words that may not appear (as code) in a read-only check query.
const WRITE_WORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "into",
    "exec",
    "execute",
    "create",
    "alter",
    "drop",
    "truncate",
    "grant",
    "revoke",
    "deny",
    "backup",
    "restore",
    "dbcc",
    "kill",
    "shutdown",
    "use",
    "set",
    "declare",
    "begin",
    "commit",
    "rollback",
    "save",
    "waitfor",
    "openrowset",
    "opendatasource",
    "openquery",
    "bulk",
    "reconfigure",
    "checkpoint",
];

/// Check that `sql` is one `SELECT` (or `WITH ... SELECT`) statement and
/// nothing else, looking only at code (not strings, names or comments).
/// Returns what is wrong.
pub fn check_single_select(sql: &str) -> std::result::Result<(), String> {
    let mut lexer = Lexer::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut after_semicolon = false;
    let mut trailing_code = false;
    let flush = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word).to_ascii_lowercase());
        }
    };
    for (idx, line) in sql.split_inclusive('\n').enumerate() {
        if lexer.state == State::Code && go_line(line).is_some() {
            return Err("it contains a `GO` line: a check is one statement".into());
        }
        lexer.line(line, idx + 1, |_, c, kind| {
            if after_semicolon && kind != Kind::Comment && !c.is_whitespace() && c != ';' {
                trailing_code = true;
            }
            if kind == Kind::Code && (c.is_alphanumeric() || c == '_' || c == '@' || c == '#') {
                word.push(c);
                return;
            }
            flush(&mut word, &mut words);
            if kind == Kind::Code && c == ';' {
                after_semicolon = true;
            }
        });
    }
    flush(&mut word, &mut words);
    if let Some(m) = lexer.unterminated() {
        return Err(m);
    }
    if trailing_code {
        return Err("it has more than one statement".into());
    }
    match words.first().map(String::as_str) {
        Some("select") | Some("with") => {}
        Some(other) => {
            return Err(format!(
                "it starts with `{other}`; a check must be a SELECT (or WITH ... SELECT)"
            ))
        }
        None => return Err("it is empty".into()),
    }
    if let Some(w) = words.iter().find(|w| WRITE_WORDS.contains(&w.as_str())) {
        return Err(format!(
            "it contains `{}`, which can change the database; a check may only read",
            w.to_ascii_uppercase()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
