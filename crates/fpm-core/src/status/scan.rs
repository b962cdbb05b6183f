//! A lenient reader for the JSON that php-fpm's status page prints.
//!
//! Why not `serde_json`: php-fpm builds this JSON with `printf`, and before
//! PHP 8.x it did not escape `request uri`, `user` and `script` (fact 10 in
//! `fpm-facts.md`). A single request for `/?a="b` makes the whole page invalid
//! JSON, and a strict parser would then lose every figure of the pool, which is
//! exactly when an operator needs them. This reader accepts valid JSON and also
//! the unescaped variant: a string ends at the first quote that is followed by
//! the structure php-fpm prints after a value (`,"<known key>":` or `}` closing
//! an object), so quotes and backslashes inside a URI are kept as text.
//!
//! The format it accepts is deliberately narrow: one object whose values are
//! numbers, strings, bare words (`null`, `true`: kept so that one odd value
//! costs only its field), or one array of flat objects (`processes`).

use super::ParseError;

/// A scalar or the process list, borrowed from the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Num(&'a str),
    Str(String),
    /// `null`, `true`, `false` or any other run of letters.
    Word(&'a str),
    List(Vec<Object<'a>>),
}

/// Key/value pairs in the order php-fpm printed them.
pub(crate) type Object<'a> = Vec<(&'a str, Value<'a>)>;

/// The pool-level keys php-fpm 7.4 to 8.4 prints in `?json&full`.
pub(crate) const POOL_KEYS: &[&str] = &[
    "pool",
    "process manager",
    "start time",
    "start since",
    "accepted conn",
    "listen queue",
    "max listen queue",
    "listen queue len",
    "idle processes",
    "active processes",
    "total processes",
    "max active processes",
    "max children reached",
    "slow requests",
    "memory peak",
    "processes",
];

/// The keys of one entry of `processes`.
const PROCESS_KEYS: &[&str] = &[
    "pid",
    "state",
    "requests",
    "request duration",
    "request method",
    "request uri",
    "content length",
    "user",
    "script",
    "last request cpu",
    "last request memory",
];

/// Parses the whole document.
pub(crate) fn parse(text: &str) -> Result<Object<'_>, ParseError> {
    let mut sc = Scanner { text, pos: 0 };
    sc.skip_ws();
    let obj = sc.object(0)?;
    sc.skip_ws();
    if sc.pos != text.len() {
        return Err(sc.err("unexpected text after the closing '}'"));
    }
    Ok(obj)
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn err(&self, what: &str) -> ParseError {
        if self.pos >= self.text.len() {
            ParseError::Truncated {
                offset: self.pos,
                what: what.to_owned(),
            }
        } else {
            ParseError::Malformed {
                offset: self.pos,
                what: what.to_owned(),
            }
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", b as char)))
        }
    }

    /// `depth` is 0 for the document and 1 for a process entry; deeper nesting
    /// is not something php-fpm prints, so it is rejected rather than recursed.
    fn object(&mut self, depth: u8) -> Result<Object<'a>, ParseError> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            let key = self.key()?;
            self.expect(b':')?;
            self.skip_ws();
            let value = match self.peek() {
                Some(b'"') => Value::Str(self.string()?),
                Some(b'[') if depth == 0 => Value::List(self.list()?),
                Some(b'-' | b'0'..=b'9') => Value::Num(self.number()),
                Some(b'a'..=b'z' | b'A'..=b'Z') => Value::Word(self.word()),
                _ => return Err(self.err(&format!("expected a value for {key:?}"))),
            };
            out.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn list(&mut self) -> Result<Vec<Object<'a>>, ParseError> {
        self.expect(b'[')?;
        let mut out = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            out.push(self.object(1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// Keys never need escaping: they are fixed strings in php-fpm's source.
    fn key(&mut self) -> Result<&'a str, ParseError> {
        self.expect(b'"')?;
        let start = self.pos;
        match self.text[start..].find('"') {
            Some(len) => {
                self.pos = start + len + 1;
                Ok(&self.text[start..start + len])
            }
            None => {
                self.pos = self.text.len();
                Err(self.err("unterminated key"))
            }
        }
    }

    fn number(&mut self) -> &'a str {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while matches!(self.peek(), Some(b'a'..=b'z' | b'A'..=b'Z')) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    /// Reads a string value; see the module docs for how its end is found.
    fn string(&mut self) -> Result<String, ParseError> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut search = start;
        while let Some(rel) = self.text[search..].find('"') {
            let quote = search + rel;
            if ends_value(&self.text[quote + 1..]) {
                self.pos = quote + 1;
                return Ok(decode(&self.text[start..quote]));
            }
            search = quote + 1;
        }
        self.pos = self.text.len();
        Err(self.err("unterminated string"))
    }
}

/// Does the text after a quote look like what php-fpm prints after a value?
fn ends_value(rest: &str) -> bool {
    let rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix(',') {
        let after = after.trim_start();
        // Every key php-fpm prints: where an unescaped string value really ends.
        return POOL_KEYS.iter().chain(PROCESS_KEYS).any(|k| {
            after
                .strip_prefix('"')
                .and_then(|a| a.strip_prefix(k))
                .and_then(|a| a.strip_prefix('"'))
                .is_some_and(|a| a.trim_start().starts_with(':'))
        });
    }
    if let Some(after) = rest.strip_prefix('}') {
        let after = after.trim_start();
        return after.is_empty() || after.starts_with(',') || after.starts_with(']');
    }
    false
}

/// Decodes JSON escapes when the text was printed escaped; otherwise returns
/// it as it stands. Escaped output from php-fpm never holds a bare `"` or a
/// bare `/` (its JSON escaper writes `\/`), so either one means the value was
/// printed raw and its backslashes are literal.
fn decode(raw: &str) -> String {
    if !raw.contains('\\') || has_bare(raw, b'"') || has_bare(raw, b'/') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) if hex.len() == 4 => ch,
                    _ => return raw.to_owned(),
                }
            }
            _ => return raw.to_owned(),
        };
        out.push(decoded);
    }
    out
}

/// Is `needle` present without a backslash escaping it?
fn has_bare(raw: &str, needle: u8) -> bool {
    let mut escaped = false;
    for &b in raw.as_bytes() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == needle {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(doc: &str) -> Vec<String> {
        let obj = parse(doc).unwrap();
        obj.into_iter()
            .filter_map(|(_, v)| match v {
                Value::Str(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn valid_json_escapes_are_decoded() {
        let got = strings(r#"{"request uri":"\/a?q=\"x\",\\y","user":"-"}"#);
        assert_eq!(got, vec![r#"/a?q="x",\y"#.to_owned(), "-".to_owned()]);
    }

    #[test]
    fn unescaped_quotes_and_backslashes_survive() {
        let got = strings(
            r#"{"request uri":"/a?q="x",\y}","content length":0,"user":"b"o\b","script":"/s.php"}"#,
        );
        assert_eq!(got, vec![r#"/a?q="x",\y}"#, r#"b"o\b"#, "/s.php"]);
    }

    #[test]
    fn truncation_and_garbage_are_errors_not_panics() {
        for bad in [
            "",
            "{",
            r#"{"pool":"#,
            r#"{"pool":"www"#,
            r#"{"pool":"www","processes":[{"pid":1"#,
            r#"{"pool":"www"} trailing"#,
            r#"{"a":{"b":1}}"#,
            "<html>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn truncated_input_is_reported_as_truncated() {
        let err = parse(r#"{"pool":"www","accepted conn":1"#).unwrap_err();
        assert!(matches!(err, ParseError::Truncated { .. }), "{err:?}");
    }
}
