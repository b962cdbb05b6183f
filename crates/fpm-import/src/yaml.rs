//! A small YAML writer for the manager config the importer produces.
//!
//! Written by hand rather than through serde so the file can carry comments
//! (why a value changed, where env values went). Every string scalar and
//! every user-chosen map key is written double-quoted with escapes, so no
//! value can turn into a number, boolean, null, anchor or a second line.

use std::fmt::Write as _;

/// YAML double-quoted scalar.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            // Controls, DEL, NEL, line/paragraph separators and BOM are not
            // printable in YAML: escape them.
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text made safe to sit after `# ` on one line.
pub(crate) fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Appends a `# ...` line at `indent`, wrapping nothing (lines stay as given).
pub(crate) fn push_comment(out: &mut String, indent: usize, text: &str) {
    let _ = writeln!(out, "{:indent$}# {}", "", comment(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_scalars_read_back_exactly() {
        for s in [
            "",
            "yes",
            "no",
            "~",
            "null",
            "0660",
            "1e3",
            "- a",
            "a: b",
            "#x",
            "&anchor",
            "*alias",
            "x\"y\\z",
            "line\nbreak\ttab\r",
            "é ü \u{7f} \u{85} \u{2028}",
            "${HOME}/x",
        ] {
            let doc = format!("k: {}\n", quote(s));
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&doc).unwrap();
            assert_eq!(v["k"].as_str(), Some(s), "{doc}");
        }
    }

    #[test]
    fn comments_stay_on_one_line() {
        let mut out = String::new();
        push_comment(&mut out, 2, "a\nb: c\rd");
        assert_eq!(out, "  # a b: c d\n");
    }
}
