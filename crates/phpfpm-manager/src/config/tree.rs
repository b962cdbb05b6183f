//! The untyped stage of loading: the YAML tree, environment overrides applied to
//! it, unknown keys found with a "did you mean" hint, and type errors collected
//! one by one instead of stopping at the first.
//!
//! The list of known keys is not written twice: it is the tree obtained by
//! serialising a `RawConfig` with one default pool. An empty mapping in that
//! tree (`php_values`, `env`, ...) means "any key".

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::raw::RawConfig;
use super::Problem;

/// Prefix of environment overrides: `PHPFPM_MANAGER_<SECTION>__<KEY>`.
pub const ENV_PREFIX: &str = "PHPFPM_MANAGER_";

/// Environment variables with this prefix that are CLI flags, not overrides.
const CLI_ENV_VARS: &[&str] = &[
    "PHPFPM_MANAGER_CONFIG",
    "PHPFPM_MANAGER_URL",
    "PHPFPM_MANAGER_KEY",
    "PHPFPM_MANAGER_CA_FILE",
    "PHPFPM_MANAGER_CLIENT_CERT",
    "PHPFPM_MANAGER_CLIENT_KEY",
];

/// One step of a path in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path as `pools[0].max_workers`.
pub(crate) fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Short text of a value for messages.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(_) => "[...]".into(),
        Value::Mapping(_) => "{...}".into(),
        Value::Tagged(t) => format!("!{} ...", t.tag),
    }
}

/// Parses YAML text into a tree; an empty document is an empty mapping.
pub(crate) fn parse_yaml(text: &str, origin: &str) -> Result<Value, Problem> {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Value::Mapping(Mapping::new())),
        Ok(v @ Value::Mapping(_)) => Ok(v),
        Ok(other) => Err(Problem::new(
            origin,
            Some(value_text(&other)),
            "the top level is not a mapping of sections",
            "start the file with sections such as `server:` and `pools:`",
        )),
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            Err(Problem::new(
                origin,
                None,
                &format!("not valid YAML{at}: {e}"),
                "fix the syntax at that position",
            ))
        }
    }
}

/// Applies `PHPFPM_MANAGER_<SECTION>__<KEY>` overrides. Returns the paths set,
/// with the variable name, so later messages can say where a value came from.
pub(crate) fn apply_env(
    tree: &mut Value,
    env: &[(String, String)],
    problems: &mut Vec<Problem>,
) -> Vec<(Vec<Seg>, String)> {
    let mut applied = Vec::new();
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !CLI_ENV_VARS.contains(&k.as_str()))
        .collect();
    // Deterministic order, so pools[0] is created before pools[1].
    vars.sort();
    for (name, raw_value) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let path: Vec<Seg> = rest
            .split("__")
            .map(|s| match s.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::Key(s.to_ascii_lowercase()),
            })
            .collect();
        if path.len() < 2
            || path
                .iter()
                .any(|s| matches!(s, Seg::Key(k) if k.is_empty()))
        {
            problems.push(Problem::new(
                &format!("environment variable {name}"),
                None,
                "is not a configuration override",
                "overrides are named PHPFPM_MANAGER_<SECTION>__<KEY>, for example PHPFPM_MANAGER_SERVER__BIND_ADDRESS",
            ));
            continue;
        }
        // The value is read as a YAML scalar, so `10` is a number and `true`
        // a boolean; anything that is not a scalar stays text.
        let value = match serde_yaml_ng::from_str::<Value>(raw_value) {
            Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
            Ok(Value::Null) if raw_value.trim().is_empty() => Value::String(String::new()),
            _ => Value::String(raw_value.clone()),
        };
        match set_path(tree, &path, value) {
            Ok(()) => applied.push((path, name.clone())),
            Err(why) => problems.push(Problem::new(
                &format!("environment variable {name}"),
                None,
                &why,
                "check the section, key and index in the variable name",
            )),
        }
    }
    applied
}

fn set_path(tree: &mut Value, path: &[Seg], value: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty path".into());
    };
    let mut cur = tree;
    for (i, seg) in parents.iter().enumerate() {
        let next_is_index = matches!(path[i + 1], Seg::Index(_));
        let empty = || {
            if next_is_index {
                Value::Sequence(Vec::new())
            } else {
                Value::Mapping(Mapping::new())
            }
        };
        cur = child_mut(cur, seg, empty)?;
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => {
            m.insert(Value::String(k.clone()), value);
            Ok(())
        }
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s[*i] = value;
            Ok(())
        }
        (Seg::Index(i), Value::Sequence(s)) if *i == s.len() => {
            s.push(value);
            Ok(())
        }
        _ => Err(format!("cannot set {} here", path_text(path))),
    }
}

fn child_mut<'a>(
    cur: &'a mut Value,
    seg: &Seg,
    empty: impl Fn() -> Value,
) -> Result<&'a mut Value, String> {
    match (seg, cur) {
        (Seg::Key(k), Value::Mapping(m)) => {
            let key = Value::String(k.clone());
            if !m.contains_key(&key) || m.get(&key) == Some(&Value::Null) {
                m.insert(key.clone(), empty());
            }
            m.get_mut(&key).ok_or_else(|| format!("no key {k}"))
        }
        (Seg::Index(i), Value::Sequence(s)) => {
            if *i == s.len() {
                s.push(empty());
            }
            let len = s.len();
            s.get_mut(*i)
                .ok_or_else(|| format!("index {i} is past the end of a list of {len}"))
        }
        (Seg::Key(k), _) => Err(format!("{k} is inside a value that is not a mapping")),
        (Seg::Index(i), _) => Err(format!("[{i}] is inside a value that is not a list")),
    }
}

/// Reports every key of `tree` that the configuration does not know.
pub(crate) fn unknown_keys(tree: &Value, problems: &mut Vec<Problem>) {
    // Serialising a plain struct of strings, numbers and maps cannot fail;
    // if it ever did, no key would be reported unknown, which is the safe side.
    let known = serde_yaml_ng::to_value(RawConfig::key_tree_example()).unwrap_or(Value::Null);
    walk_unknown(tree, &known, &mut Vec::new(), problems);
}

fn walk_unknown(tree: &Value, known: &Value, path: &mut Vec<Seg>, problems: &mut Vec<Problem>) {
    match (tree, known) {
        (Value::Mapping(m), Value::Mapping(k)) if !k.is_empty() => {
            for (key, value) in m {
                let key_text = value_text(key);
                match k.get(key) {
                    Some(sub) => {
                        path.push(Seg::Key(key_text));
                        walk_unknown(value, sub, path, problems);
                        path.pop();
                    }
                    None => {
                        let names: Vec<String> = k.keys().map(value_text).collect();
                        path.push(Seg::Key(key_text.clone()));
                        problems.push(unknown_key(path, &key_text, &names));
                        path.pop();
                    }
                }
            }
        }
        (Value::Sequence(items), Value::Sequence(k)) => {
            if let Some(proto) = k.first() {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    walk_unknown(item, proto, path, problems);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

fn unknown_key(path: &[Seg], key: &str, names: &[String]) -> Problem {
    let best = names
        .iter()
        .map(|n| (strsim::jaro_winkler(key, n), n))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let fix = match best {
        Some((_, name)) => format!("did you mean `{name}`?"),
        None => format!("known keys here: {}", names.join(", ")),
    };
    Problem::new(&path_text(path), None, "unknown key", &fix)
}

/// Deserialises `tree`, collecting every type error: the offending value is
/// removed (so its default applies) and deserialisation is tried again.
pub(crate) fn deserialize_all<T: DeserializeOwned + Default>(
    mut tree: Value,
    problems: &mut Vec<Problem>,
) -> T {
    // Each round removes one value, so the number of rounds is bounded by the
    // size of the file; the cap only guards against a pathological input.
    for _ in 0..256 {
        let result: Result<T, _> = serde_path_to_error::deserialize(tree.clone());
        let err = match result {
            Ok(v) => return v,
            Err(e) => e,
        };
        let path: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let shown = get_path(&tree, &path).map(value_text);
        problems.push(Problem::new(
            &path_text(&path),
            shown,
            &type_message(&err.inner().to_string()),
            &type_fix(&err.inner().to_string()),
        ));
        if path.is_empty() || !remove_path(&mut tree, &path) {
            return T::default();
        }
    }
    T::default()
}

fn get_path<'a>(tree: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = tree;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get(Value::String(k.clone()))?,
            (Seg::Index(i), Value::Sequence(s)) => s.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_path(tree: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = tree;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => match m.get_mut(Value::String(k.clone())) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(Value::String(k.clone())).is_some(),
        // A list item cannot be removed without shifting the indexes of the
        // items after it, so it is replaced by an empty entry instead.
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s[*i] = Value::Mapping(Mapping::new());
            true
        }
        _ => false,
    }
}

/// serde says "invalid type: string \"x\", expected u32"; users want to know
/// what was expected.
fn type_message(serde_msg: &str) -> String {
    match serde_msg.split_once(", expected ") {
        Some((_, expected)) => format!("wrong type, expected {}", friendly(expected)),
        None => serde_msg.to_owned(),
    }
}

fn type_fix(serde_msg: &str) -> String {
    let expected = serde_msg
        .split_once(", expected ")
        .map(|(_, e)| e)
        .unwrap_or("");
    if expected.contains("u32") || expected.contains("u64") || expected.contains("integer") {
        "write a whole number without quotes, for example 10".into()
    } else if expected.contains("f64") || expected.contains("float") {
        "write a number, for example 0.7".into()
    } else if expected.contains("bool") {
        "write true or false".into()
    } else if expected.contains("sequence") {
        "write a list (items starting with `- `)".into()
    } else if expected.contains("struct") || expected.contains("map") {
        "write a mapping of keys (indented `key: value` lines)".into()
    } else if expected.contains("string") {
        "write text, quoted if it contains special characters".into()
    } else {
        "see docs/configuration.md for this key".into()
    }
}

fn friendly(expected: &str) -> String {
    match expected {
        "u32" | "u64" => "a whole number".into(),
        "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        e if e.starts_with("struct ") => "a mapping".into(),
        e => e.to_owned(),
    }
}
