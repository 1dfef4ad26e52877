//! What the host needs to know about a statement's text before running it for a plugin: its
//! first keyword and whether it is one statement. This is routing, not enforcement: a read
//! that writes is refused by the database (read-only connections, see the module docs of
//! `store`); the keyword check only keeps statements that would change the daemon's own
//! connections (transaction control, `PRAGMA`, `SET`, `ATTACH`) away from them.
//!
//! String literals (`'...'`, with `''` inside), quoted identifiers (`"..."`, `` `...` ``,
//! `[...]`) and comments (`--` to the end of the line, `/* ... */`) are skipped; a text that
//! leaves one open is not one statement. Block comments do not nest and dollar quoting is not
//! understood, as in SQLite: on PostgreSQL that can only make a statement look like several
//! (refused), never several like one (PostgreSQL's extended protocol, which sqlx uses for
//! every statement, refuses several anyway).

/// The shape of a statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The first keyword, upper-case ASCII (empty when the text starts otherwise).
    pub head: String,
    /// One statement: no `;` outside literals and comments but at the very end, and nothing
    /// left open.
    pub single: bool,
}

/// Work out `sql`'s [`Shape`].
pub fn shape(sql: &str) -> Shape {
    let b = sql.as_bytes();
    let mut head = String::new();
    let mut head_done = false;
    let mut ended = false;
    let mut single = true;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let comment = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => Some(sql[i..].find('\n').map_or(Some(b.len()), |e| Some(i + e + 1))),
            b'/' if b.get(i + 1) == Some(&b'*') => Some(sql[i + 2..].find("*/").map(|e| i + 2 + e + 2)),
            _ => None,
        };
        if is_space(c) || comment.is_some() {
            head_done |= !head.is_empty();
            match comment {
                None => i += 1,
                Some(Some(end)) => i = end,
                Some(None) => return Shape { head, single: false },
            }
            continue;
        }
        if c == b';' {
            // A statement's end; more `;` after it are empty statements, not a second one.
            ended = true;
            head_done = true;
            i += 1;
            continue;
        }
        // Something significant: after a `;` it is a second statement.
        single &= !ended;
        let literal = match c {
            b'\'' | b'"' | b'`' => Some(closing(b, i + 1, c)),
            b'[' => Some(sql[i..].find(']').map(|e| i + e)),
            _ => None,
        };
        match literal {
            Some(Some(close)) => {
                head_done = true;
                i = close + 1;
                continue;
            }
            Some(None) => return Shape { head, single: false },
            None => {}
        }
        if c.is_ascii_alphabetic() && !head_done {
            head.push(c.to_ascii_uppercase() as char);
        } else {
            head_done = true;
        }
        i += 1;
    }
    Shape { head, single }
}

/// The statements of a script (a plugin migration), each without its `;` and the comments
/// and whitespace before it; `None` when the text leaves a literal, quoted identifier or block
/// comment open. The same lexing as [`shape`]: no dollar quoting, so a PostgreSQL function body
/// with `;` inside splits into pieces that fail to run (never into a statement it did not
/// contain).
pub fn split(sql: &str) -> Option<Vec<&str>> {
    let b = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if is_space(c) {
            i += 1;
            continue;
        }
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |e| i + e + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map(|e| i + 2 + e + 2)?;
                continue;
            }
            b';' => {
                if let Some(s) = start.take() {
                    statements.push(sql[s..i].trim_end_matches(|c: char| c.is_ascii() && is_space(c as u8)));
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
        i = match c {
            b'\'' | b'"' | b'`' => closing(b, i + 1, c)? + 1,
            b'[' => i + sql[i..].find(']')? + 1,
            _ => i + 1,
        };
    }
    if let Some(s) = start {
        statements.push(sql[s..].trim_end_matches(|c: char| c.is_ascii() && is_space(c as u8)));
    }
    Some(statements)
}

/// SQL whitespace, as SQLite's tokenizer has it: space, tab, line feed, vertical tab, form feed,
/// carriage return (Rust's `is_ascii_whitespace` leaves out the vertical tab).
pub fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Index of the quote closing a literal opened before `from` (`''` inside is an escaped quote).
fn closing(b: &[u8], mut from: usize, q: u8) -> Option<usize> {
    while from < b.len() {
        if b[from] == q {
            if b.get(from + 1) == Some(&q) {
                from += 2;
                continue;
            }
            return Some(from);
        }
        from += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(head: &str, single: bool) -> Shape {
        Shape { head: head.into(), single }
    }

    #[test]
    fn heads_and_statements() {
        assert_eq!(shape(" select 1;"), s("SELECT", true));
        assert_eq!(shape("/**/COMMIT"), s("COMMIT", true));
        assert_eq!(shape("/* a */ -- x\n  begin"), s("BEGIN", true));
        assert_eq!(shape("/* /* */ ; DELETE FROM t /* */"), s("", false));
        assert_eq!(shape("WITH x AS (SELECT 1) DELETE FROM agents"), s("WITH", true));
        assert_eq!(shape("SELECT 1; DELETE FROM agents"), s("SELECT", false));
        assert_eq!(shape("SELECT 1; -- trailing comment\n"), s("SELECT", true));
        assert_eq!(shape("SELECT ';' || \"a;b\" || [c;d] FROM t -- ;\n"), s("SELECT", true));
        assert_eq!(shape("SELECT $1, $$ ; $$"), s("SELECT", false));
        assert_eq!(shape("SELECT 'unterminated"), s("SELECT", false));
        assert_eq!(shape("SELECT 1 /* open"), s("SELECT", false));
        assert_eq!(shape("INSERT INTO t VALUES ('it''s')"), s("INSERT", true));
        assert_eq!(shape(""), s("", true));
        assert_eq!(shape("   ;"), s("", true));
        // Found by the fuzzer: empty statements after the end are no second statement (as the
        // writer's rewriter sees it too).
        assert_eq!(shape(";;"), s("", true));
        assert_eq!(shape("INSERT INTO t VALUES (1);; ;"), s("INSERT", true));
        assert_eq!(shape("SELECT 1;; DELETE FROM t"), s("SELECT", false));
        // Found by the fuzzer: a vertical tab is whitespace to SQLite.
        assert_eq!(shape("E;\x0b "), s("E", true));
    }

    #[test]
    fn scripts_split_into_statements() {
        let script = "-- a table\nCREATE TABLE t (a TEXT DEFAULT ';');\n/* x; */ CREATE INDEX i ON t(a) ;;\n";
        assert_eq!(split(script), Some(vec!["CREATE TABLE t (a TEXT DEFAULT ';')", "CREATE INDEX i ON t(a)"]));
        assert_eq!(split("SELECT \"a;b\", [c;d] -- ;\n"), Some(vec!["SELECT \"a;b\", [c;d] -- ;"]));
        assert_eq!(split("  ;; -- nothing\n"), Some(vec![]));
        assert_eq!(split("SELECT 'open"), None);
        assert_eq!(split("SELECT 1; /* open"), None);
        // Each piece is one statement as `shape` sees it.
        for piece in split(script).unwrap() {
            assert!(shape(piece).single);
        }
    }
}
