//! php-fpm's configuration syntax, one line at a time, as php-fpm 8.2 reads it.
//!
//! php-fpm does not hand a whole file to PHP's ini parser: it feeds it one line
//! at a time (which is why its errors say `[file:line]` and a quote cannot span
//! lines). Each line goes through PHP's ini scanner in "normal" mode, so a value
//! is not simply the text after `=`. Checked against `php-fpm8.2 -tt`:
//!
//! * `;` starts a comment outside quotes; a line starting with `#` is an error
//!   ("value is NULL"), not a comment, since PHP 7.
//! * `on`/`yes`/`true` alone become `1`; `off`/`no`/`false`/`none`/`null` become ``.
//!   `"On"` in quotes stays `On`. Two such words in one value are a syntax error.
//! * Unquoted PHP constants are replaced by their values (`E_ALL` -> `32767`),
//!   and `| & ^ ~ ! ( )` make an integer expression
//!   (`E_ALL & ~E_DEPRECATED` -> `24575`, `010 | 1` -> `11`: base 10).
//! * `"..."` handles `\"`, `\\` and `\$`, and expands `${NAME}`; `'...'` is raw.
//!   Whitespace on either side of a double-quoted string is dropped
//!   (`"a" c` -> `ac`); elsewhere it is kept (`foo  bar`, `'a' b` -> `a b`).
//! * `${NAME}` is expanded by php-fpm when it starts (environment or ini
//!   setting). It is kept here as the text `${NAME}`: the manager's pool file
//!   writes such a value in double quotes, where php-fpm expands it the same way.
//!   A *literal* `${` (from `'...'` or `\$`) could not be written back without
//!   being expanded, so it is refused.
//! * `=` in an unquoted value is a syntax error.
//!
//! Nothing here does I/O. Error messages never repeat a value: it may be a
//! secret (`env[...]`).

use thiserror::Error;

/// One meaningful line of a php-fpm config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `[name]`
    Section { line: usize, name: String },
    /// `key = value`, with the value as php-fpm sees it after ini scanning.
    /// `include = pattern` is an entry too; the reader acts on it.
    Entry {
        line: usize,
        key: String,
        value: String,
    },
}

/// A line php-fpm would refuse, or one this importer cannot carry faithfully.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}:{line}: {what}")]
pub struct SyntaxError {
    pub file: String,
    pub line: usize,
    pub what: String,
}

/// Known values of PHP's `E_*` constants (identical in PHP 8.0 to 8.3).
const E_CONSTANTS: &[(&str, i64)] = &[
    ("E_ERROR", 1),
    ("E_WARNING", 2),
    ("E_PARSE", 4),
    ("E_NOTICE", 8),
    ("E_CORE_ERROR", 16),
    ("E_CORE_WARNING", 32),
    ("E_COMPILE_ERROR", 64),
    ("E_COMPILE_WARNING", 128),
    ("E_USER_ERROR", 256),
    ("E_USER_WARNING", 512),
    ("E_USER_NOTICE", 1024),
    ("E_STRICT", 2048),
    ("E_RECOVERABLE_ERROR", 4096),
    ("E_DEPRECATED", 8192),
    ("E_USER_DEPRECATED", 16384),
    ("E_ALL", 32767),
];

/// Parses one file's text. `file` only labels errors.
pub fn parse_text(file: &str, text: &str) -> Result<Vec<Line>, SyntaxError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let err = |what: String| SyntaxError {
            file: file.to_owned(),
            line,
            what,
        };
        if raw.contains('\0') {
            return Err(err("line contains a NUL byte".into()));
        }
        let t = raw.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r');
        if t.is_empty() || t.starts_with(';') {
            continue;
        }
        if t.starts_with('#') {
            return Err(err(
                "'#' does not start a comment for php-fpm (it refuses this line since PHP 7); use ';'"
                    .into(),
            ));
        }
        if let Some(rest) = t.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(err("section header has no closing ']'".into()));
            };
            let after = rest[end + 1..].trim_matches([' ', '\t']);
            if !(after.is_empty() || after.starts_with(';')) {
                return Err(err("unexpected text after the section header".into()));
            }
            let name = rest[..end].trim_matches([' ', '\t']);
            out.push(Line::Section {
                line,
                name: name.to_owned(),
            });
            continue;
        }
        let Some(eq) = t.find('=') else {
            // The line is not shown: it could be a secret split off its key.
            return Err(err(
                "line has no '=' (php-fpm: value is NULL for a ZEND_INI_PARSER_ENTRY)".into(),
            ));
        };
        let key = t[..eq].trim_matches([' ', '\t']);
        check_key(key).map_err(|w| err(w.to_owned()))?;
        let value = scan_value(&t[eq + 1..]).map_err(|w| err(format!("value of {key}: {w}")))?;
        out.push(Line::Entry {
            line,
            key: key.to_owned(),
            value,
        });
    }
    Ok(out)
}

/// `name` or `name[sub]`, as PHP's ini scanner accepts them.
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("entry has no key before '='");
    }
    let (base, sub) = match key.find('[') {
        Some(i) => (&key[..i], Some(&key[i + 1..])),
        None => (key, None),
    };
    if base.is_empty()
        || !base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    {
        return Err(
            "key must be made of letters, digits, '_', '.', '-' and '/' (php-fpm: syntax error)",
        );
    }
    if let Some(sub) = sub {
        let Some(inner) = sub.strip_suffix(']') else {
            return Err("key has '[' without a closing ']'");
        };
        if inner.contains(['[', ']', '"', '\'', ';', '=', '$']) {
            return Err("the name inside [...] contains a character php-fpm does not accept");
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// Unquoted text.
    Word(String),
    /// A double-quoted string, after escapes and with `${...}` kept.
    DQuoted(String),
    /// A single-quoted (raw) string.
    Raw(String),
    /// `${NAME}`, kept as text.
    Expand(String),
    Ws(String),
    Op(char),
}

/// Turns the text after `=` into the value php-fpm would use.
pub(crate) fn scan_value(v: &str) -> Result<String, String> {
    let toks = tokenize(v)?;
    // Leading and trailing whitespace never counts.
    let start = toks
        .iter()
        .position(|t| !matches!(t, Tok::Ws(_)))
        .unwrap_or(toks.len());
    let end = toks
        .iter()
        .rposition(|t| !matches!(t, Tok::Ws(_)))
        .map_or(start, |i| i + 1);
    let toks = &toks[start..end];
    if toks.iter().any(|t| matches!(t, Tok::Op(_))) {
        let items: Vec<&Tok> = toks.iter().filter(|t| !matches!(t, Tok::Ws(_))).collect();
        let mut p = ExprParser {
            toks: &items,
            pos: 0,
        };
        let n = p.expr()?;
        if p.pos != items.len() {
            return Err("unexpected token in an integer expression".into());
        }
        return Ok(n.to_string());
    }
    if let [Tok::Word(w)] = toks {
        if let Some(b) = bool_word(w) {
            return Ok(b.to_owned());
        }
    }
    let mut out = String::new();
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Word(w) => {
                if bool_word(w).is_some() {
                    return Err(format!(
                        "{w:?} is a boolean keyword and must be the whole value (php-fpm: syntax error)"
                    ));
                }
                out.push_str(&constant_word(w)?);
            }
            Tok::DQuoted(s) | Tok::Raw(s) | Tok::Expand(s) => out.push_str(s),
            Tok::Ws(s) => {
                // The scanner eats whitespace on both sides of a
                // double-quoted string; elsewhere it is kept.
                let dq = |t: Option<&Tok>| matches!(t, Some(Tok::DQuoted(_)));
                if !dq(i.checked_sub(1).and_then(|j| toks.get(j))) && !dq(toks.get(i + 1)) {
                    out.push_str(s);
                }
            }
            Tok::Op(_) => {}
        }
    }
    Ok(out)
}

fn bool_word(w: &str) -> Option<&'static str> {
    match w.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" => Some("1"),
        "off" | "no" | "false" | "none" | "null" => Some(""),
        _ => None,
    }
}

fn is_identifier(w: &str) -> bool {
    let mut c = w.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// PHP replaces an unquoted word that names a constant by its value. The
/// importer knows the `E_*` constants and refuses the other obvious ones
/// rather than guess; any other word stays text, as php-fpm leaves words
/// that are not constants.
fn constant_word(w: &str) -> Result<String, String> {
    if !is_identifier(w) {
        return Ok(w.to_owned());
    }
    if let Some((_, n)) = E_CONSTANTS.iter().find(|(name, _)| *name == w) {
        return Ok(n.to_string());
    }
    let u = w.to_ascii_uppercase();
    if w == u && (u.starts_with("E_") || u.starts_with("PHP_") || u.starts_with("ZEND_")) {
        return Err(format!(
            "uses the PHP constant {w}, which php-fpm replaces by its value and the importer cannot evaluate; write the value itself"
        ));
    }
    Ok(w.to_owned())
}

fn tokenize(v: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, toks: &mut Vec<Tok>| {
        if !word.is_empty() {
            toks.push(Tok::Word(std::mem::take(word)));
        }
    };
    let mut it = v.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            ';' => break,
            ' ' | '\t' | '\r' => {
                flush(&mut word, &mut toks);
                let mut ws = c.to_string();
                while let Some(&n @ (' ' | '\t' | '\r')) = it.peek() {
                    ws.push(n);
                    it.next();
                }
                toks.push(Tok::Ws(ws));
            }
            '"' => {
                flush(&mut word, &mut toks);
                let mut s = String::new();
                let mut closed = false;
                while let Some(c) = it.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match it.next() {
                            Some(e @ ('"' | '\\')) => s.push(e),
                            Some('$') => {
                                if it.peek() == Some(&'{') {
                                    return Err(literal_expansion());
                                }
                                s.push('$');
                            }
                            Some(e) => {
                                s.push('\\');
                                s.push(e);
                            }
                            None => s.push('\\'),
                        },
                        '$' if it.peek() == Some(&'{') => {
                            it.next();
                            s.push_str(&expansion(&mut it)?);
                        }
                        _ => s.push(c),
                    }
                }
                if !closed {
                    return Err(
                        "unterminated double quote (php-fpm reads one line at a time)".into(),
                    );
                }
                toks.push(Tok::DQuoted(s));
            }
            '\'' => {
                flush(&mut word, &mut toks);
                let mut s = String::new();
                let mut closed = false;
                for c in it.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    s.push(c);
                }
                if !closed {
                    return Err(
                        "unterminated single quote (php-fpm reads one line at a time)".into(),
                    );
                }
                if s.contains("${") {
                    return Err(literal_expansion());
                }
                toks.push(Tok::Raw(s));
            }
            '$' if it.peek() == Some(&'{') => {
                flush(&mut word, &mut toks);
                it.next();
                toks.push(Tok::Expand(expansion(&mut it)?));
            }
            '|' | '&' | '^' | '~' | '!' | '(' | ')' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::Op(c));
            }
            '=' => return Err("unexpected '=' (php-fpm: syntax error); quote the value".into()),
            _ => word.push(c),
        }
    }
    flush(&mut word, &mut toks);
    Ok(toks)
}

fn literal_expansion() -> String {
    "contains a literal '${', which the manager's pool file would expand; it cannot be carried"
        .into()
}

/// Reads `NAME}` after `${` and returns `${NAME}`.
fn expansion(it: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let mut name = String::new();
    for c in it.by_ref() {
        if c == '}' {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
            {
                return Err("'${...}' must name an environment variable or ini setting".into());
            }
            return Ok(format!("${{{name}}}"));
        }
        name.push(c);
    }
    Err("'${' without a closing '}'".into())
}

/// PHP's ini integer expressions: `| & ^` share one precedence and bind left
/// to right, `~` and `!` are unary, parentheses group.
struct ExprParser<'a> {
    toks: &'a [&'a Tok],
    pos: usize,
}

impl ExprParser<'_> {
    fn expr(&mut self) -> Result<i64, String> {
        let mut acc = self.unary()?;
        while let Some(Tok::Op(op @ ('|' | '&' | '^'))) = self.toks.get(self.pos) {
            self.pos += 1;
            let rhs = self.unary()?;
            acc = match op {
                '|' => acc | rhs,
                '&' => acc & rhs,
                _ => acc ^ rhs,
            };
        }
        Ok(acc)
    }

    fn unary(&mut self) -> Result<i64, String> {
        let Some(t) = self.toks.get(self.pos) else {
            return Err("integer expression ends too early".into());
        };
        self.pos += 1;
        match t {
            Tok::Op('~') => Ok(!self.unary()?),
            Tok::Op('!') => Ok(i64::from(self.unary()? == 0)),
            Tok::Op('(') => {
                let v = self.expr()?;
                match self.toks.get(self.pos) {
                    Some(Tok::Op(')')) => {
                        self.pos += 1;
                        Ok(v)
                    }
                    _ => Err("'(' without a matching ')'".into()),
                }
            }
            Tok::Word(w) => operand(w),
            Tok::DQuoted(s) | Tok::Raw(s) => Ok(atol(s)),
            Tok::Expand(_) => Err(
                "an integer expression uses '${...}', which is only known when php-fpm starts"
                    .into(),
            ),
            Tok::Op(c) => Err(format!("unexpected '{c}' in an integer expression")),
            Tok::Ws(_) => Err("unexpected whitespace".into()),
        }
    }
}

fn operand(w: &str) -> Result<i64, String> {
    if let Some((_, n)) = E_CONSTANTS.iter().find(|(name, _)| *name == w) {
        return Ok(*n);
    }
    if is_identifier(w) {
        return Err(format!(
            "integer expression uses {w}, which is not an E_* constant the importer knows; write the number"
        ));
    }
    Ok(atol(w))
}

/// C `atol`: optional sign and leading decimal digits; anything else is 0.
fn atol(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    for b in digits.bytes().take_while(u8::is_ascii_digit) {
        n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    if neg {
        -n
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> String {
        scan_value(s).unwrap()
    }

    /// Expected values were read from `php-fpm8.2 -tt` for the same input.
    #[test]
    fn values_match_php_fpm() {
        assert_eq!(v(" On"), "1");
        assert_eq!(v(" \"On\""), "On");
        assert_eq!(v(" off"), "");
        assert_eq!(v(" none"), "");
        assert_eq!(v(" "), "");
        assert_eq!(v(" 'raw x' "), "raw x");
        assert_eq!(v(" \"q ${HOME} $pool x\""), "q ${HOME} $pool x");
        assert_eq!(v(" E_ALL & ~E_DEPRECATED"), "24575");
        assert_eq!(v(" E_ALL"), "32767");
        assert_eq!(v(" ~E_DEPRECATED"), "-8193");
        assert_eq!(v(" foo bar   ; comment"), "foo bar");
        assert_eq!(v(" \"a\\\"b\""), "a\"b");
        assert_eq!(v(" \"abc\"def"), "abcdef");
        assert_eq!(v(" x{y}"), "x{y}");
        assert_eq!(v(" a:b,c@d"), "a:b,c@d");
        assert_eq!(v(" 8 | 4"), "12");
        assert_eq!(v(" UTC"), "UTC");
        assert_eq!(v(" \t  spaced   value  \t"), "spaced   value");
        assert_eq!(v(" a ; b"), "a");
        assert_eq!(v(" \"a\" 'b' c"), "ab c");
        assert_eq!(v(" \"a\" c"), "ac");
        assert_eq!(v(" a \"b\""), "ab");
        assert_eq!(v(" !1"), "0");
        assert_eq!(v(" (1|2)&3"), "3");
        assert_eq!(v(" 0x10 | 1"), "1");
        assert_eq!(v(" 010 | 1"), "11");
        assert_eq!(v(" /a/b-c+d%e"), "/a/b-c+d%e");
        assert_eq!(v(" \"x\\\\y\\$z\\q\""), "x\\y$z\\q");
        assert_eq!(v(" 'a\"b'"), "a\"b");
        assert_eq!(v(" E_ALL x"), "32767 x");
        assert_eq!(v(" ${HOME}x"), "${HOME}x");
        assert_eq!(v(" /tmp/$pool.sock"), "/tmp/$pool.sock");
        assert_eq!(v(" a 'b'"), "a b");
        assert_eq!(v(" 'a' 'b'"), "a b");
        assert_eq!(v(" 'a' \"b\""), "ab");
        assert_eq!(v(" ${HOME} x"), "${HOME} x");
        assert_eq!(v(" \"a\" ${HOME}"), "a${HOME}");
        assert_eq!(v(" 'a'\"b\" c"), "abc");
    }

    #[test]
    fn values_php_fpm_refuses_or_we_cannot_carry() {
        for bad in [
            " a=b",
            " on off",
            " \"open",
            " 'open",
            " ${HOME",
            " PHP_INT_SIZE",
            " E_ALL | FOO",
            " 'literal ${X}'",
            " \"\\${X}\"",
            " (1|2",
        ] {
            assert!(scan_value(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn lines_sections_comments_and_errors() {
        let text =
            "; c\n[global]\n  pid = /run/x.pid ; c\n\n[www]\nphp_value[memory_limit]=64M\r\n";
        let lines = parse_text("f.conf", text).unwrap();
        assert_eq!(
            lines,
            vec![
                Line::Section {
                    line: 2,
                    name: "global".into()
                },
                Line::Entry {
                    line: 3,
                    key: "pid".into(),
                    value: "/run/x.pid".into()
                },
                Line::Section {
                    line: 5,
                    name: "www".into()
                },
                Line::Entry {
                    line: 6,
                    key: "php_value[memory_limit]".into(),
                    value: "64M".into()
                },
            ]
        );
        let e = parse_text("f.conf", "[www]\n# old comment\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("f.conf", 2));
        assert!(e.to_string().starts_with("f.conf:2: '#'"), "{e}");
        let e = parse_text("f.conf", "[www]\nlisten\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_text("f.conf", "\n\n[www\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse_text("f.conf", "\"listen\" = 1\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn errors_never_repeat_the_value() {
        let e = parse_text("f.conf", "[www]\nenv[DB_PASSWORD] = \"hunter2\n").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = parse_text("f.conf", "[www]\nenv[DB_PASSWORD] hunter2\n").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = parse_text("f.conf", "[www]\nenv[X]=a=hunter2\n").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
