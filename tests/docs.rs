//! The documented configuration matches the config type, both ways: every
//! key in `valet.example.toml` and in the README's configuration table
//! exists in [`valet::config::Config`], and every key the type accepts is
//! in both.
//!
//! The type's keys are serde's own: each config struct refuses unknown
//! fields, and the refusal lists the fields it expects, so probing a table
//! with an unknown key reads the field list that parsing itself uses (no
//! second list to keep in step). Keys are `section.field` (`vendors.field`
//! for a vendor entry); a field whose value is itself a struct (`retry`,
//! `breaker`, `[server.tls]`, `[[quota.policies]]`, ...) has its fields
//! compared too, as the `{ ... }` tables and sub-tables the docs show.

use std::collections::{BTreeMap, BTreeSet};
use valet::config::Config;

/// A key that is never a field, to make serde list the fields it expects.
const PROBE: &str = "__probe";

/// The fields serde expects where `text` puts [`PROBE`], or `None` when
/// the value there is not a struct (a scalar, a map, an enum).
fn fields(text: &str) -> Option<BTreeSet<String>> {
    let err = toml::from_str::<Config>(text).expect_err("the probe is refused");
    let message = err.to_string();
    let expected = message
        .split_once(&format!("unknown field `{PROBE}`, expected "))?
        .1;
    let line = expected.lines().next().unwrap_or_default();
    Some(line.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// The fields of `table` (`""` for the top level, `vendors` for a vendor);
/// `None` when it is not a table (a top-level scalar such as `redis_url`).
fn try_table_fields(table: &str) -> Option<BTreeSet<String>> {
    let header = match table {
        "" => String::new(),
        "vendors" => "[[vendors]]\n".to_owned(),
        t => format!("[{t}]\n"),
    };
    fields(&format!("{header}{PROBE} = 1\n"))
}

/// [`try_table_fields`] of a table that must be one.
fn table_fields(table: &str) -> BTreeSet<String> {
    try_table_fields(table).unwrap_or_else(|| panic!("[{table}] lists no fields"))
}

/// The fields of `table.key` when its value is a struct (inline or an
/// array of them).
fn nested_fields(table: &str, key: &str) -> Option<BTreeSet<String>> {
    let header = if table == "vendors" {
        "[[vendors]]".to_owned()
    } else {
        format!("[{table}]")
    };
    fields(&format!("{header}\n{key} = {{ {PROBE} = 1 }}\n"))
        .or_else(|| fields(&format!("{header}\n{key} = [{{ {PROBE} = 1 }}]\n")))
}

/// Keys as the docs and the type both name them: `section.field` → the
/// sub-keys shown for it (empty for a scalar).
type Keys = BTreeMap<String, BTreeSet<String>>;

/// Every key the config type accepts, with the fields of struct values.
fn type_keys() -> Keys {
    let mut keys = Keys::new();
    for table in table_fields("") {
        // A top-level scalar (`redis_url`), not a table.
        if try_table_fields(&table).is_none() {
            keys.insert(table, BTreeSet::new());
            continue;
        }
        for key in table_fields(&table) {
            let nested = nested_fields(&table, &key).unwrap_or_default();
            keys.insert(format!("{table}.{key}"), nested);
        }
    }
    keys
}

/// The sub-keys of a one-line TOML `key = value` when the value is an
/// inline table (or an array of them).
fn inline_keys(line: &str) -> BTreeSet<String> {
    let Ok(doc) = line.parse::<toml::Table>() else {
        return BTreeSet::new();
    };
    let tables = doc.values().flat_map(|value| match value {
        toml::Value::Table(t) => vec![t.clone()],
        toml::Value::Array(items) => items.iter().filter_map(|i| i.as_table().cloned()).collect(),
        _ => Vec::new(),
    });
    tables
        .flat_map(|t| t.keys().cloned().collect::<Vec<_>>())
        .collect()
}

/// A bare TOML key (`cache_ttl_ms`), not prose.
fn is_key(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The keys in `valet.example.toml`, commented-out ones included: a line
/// that starts with `# ` and then reads as TOML is a key the reader may
/// uncomment. Indented comments are prose.
fn example_keys() -> Keys {
    let text = include_str!("../valet.example.toml");
    let mut keys = Keys::new();
    let mut table = String::new();
    for raw in text.lines() {
        let line = raw.strip_prefix("# ").unwrap_or(raw);
        if line.starts_with('#') || line.starts_with(' ') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            table = header.trim_matches(['[', ']']).to_owned();
            if let Some((parent, child)) = table.split_once('.') {
                // `[[quota.policies]]`: the keys below are the policy's.
                keys.entry(format!("{parent}.{child}")).or_default();
            }
            continue;
        }
        let Some((key, _)) = line.split_once(" =") else {
            continue;
        };
        let key = key.trim();
        if !is_key(key) || line.parse::<toml::Table>().is_err() {
            continue;
        }
        match table.split_once('.') {
            Some((parent, child)) => {
                let sub = keys.entry(format!("{parent}.{child}")).or_default();
                sub.insert(key.to_owned());
            }
            None if table.is_empty() => {
                keys.entry(key.to_owned()).or_default();
            }
            None => {
                let sub = keys.entry(format!("{table}.{key}")).or_default();
                sub.extend(inline_keys(line));
            }
        }
    }
    keys
}

/// The keys in the README's configuration table: the first cell names
/// one or more keys (`section.field`; a bare field after one takes its
/// section; a bare field alone, or after `[[vendors]]`, is a vendor's), and
/// the other cells show sub-keys in backticks, as `{ ... }` tables,
/// `key = value` or, for a struct's row, bare field names.
fn readme_keys(structs: &Keys) -> Keys {
    let text = include_str!("../README.md");
    let section = text
        .split("\n## Configuration\n")
        .nth(1)
        .expect("a Configuration section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut keys = Keys::new();
    for row in section
        .lines()
        .filter(|l| l.starts_with("| `") || l.starts_with("| [["))
    {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
        let (names, rest) = cells.split_first().expect("a row");
        let mut prefix = "vendors".to_owned();
        let mut row_keys = Vec::new();
        for name in names.split(',') {
            let name = name.trim().replace("[[vendors]] ", "");
            let name = name.trim_matches(['`', '[', ']', ' ']);
            let key = match name.split_once('.') {
                // A top-level key.
                None if structs.contains_key(name) => name.to_owned(),
                Some((table, field)) => {
                    prefix = table.to_owned();
                    format!("{table}.{field}")
                }
                None => format!("{prefix}.{name}"),
            };
            row_keys.push(key);
        }
        let spans: Vec<&str> = rest
            .iter()
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .collect();
        for key in row_keys {
            let sub = keys.entry(key.clone()).or_default();
            let is_struct = structs.get(&key).is_some_and(|s| !s.is_empty());
            for span in &spans {
                if span.starts_with('{') {
                    sub.extend(inline_keys(&format!("x = {span}")));
                } else if is_struct && is_key(span) {
                    sub.insert((*span).to_owned());
                } else if let Some((k, _)) = span.split_once(" = ")
                    && is_struct
                    && span.parse::<toml::Table>().is_ok()
                {
                    sub.insert(k.to_owned());
                }
            }
        }
    }
    keys
}

/// What `docs` has that the type lacks, and what it misses, as lines.
fn drift(docs: &Keys, of: &Keys) -> Vec<String> {
    let mut out = Vec::new();
    for key in of.keys().filter(|k| !docs.contains_key(*k)) {
        out.push(format!("missing: {key}"));
    }
    for (key, sub) in docs {
        let Some(fields) = of.get(key) else {
            out.push(format!("not a config key: {key}"));
            continue;
        };
        // A struct's fields, where the docs show them at all.
        if fields.is_empty() {
            continue;
        }
        for extra in sub.difference(fields) {
            out.push(format!("not a field of {key}: {extra}"));
        }
        for missing in fields.difference(sub) {
            out.push(format!("missing: {key}.{missing}"));
        }
    }
    out
}

#[test]
fn the_probe_reads_the_types_fields() {
    let keys = type_keys();
    // A few that must be there, whatever else changes.
    for key in [
        "server.listen",
        "vendors.base_url",
        "quota.policies",
        "telemetry.otlp_endpoint",
    ] {
        assert!(keys.contains_key(key), "{key} not in {keys:?}");
    }
    assert!(keys["vendors.retry"].contains("max_attempts"));
    assert!(keys["quota.policies"].contains("burst"));
    assert!(keys["server.listen"].is_empty());
}

#[test]
fn the_example_shows_every_key_and_only_real_ones() {
    let drift = drift(&example_keys(), &type_keys());
    assert!(
        drift.is_empty(),
        "valet.example.toml drifted:\n{}",
        drift.join("\n")
    );
}

#[test]
fn the_readme_table_lists_every_key_and_only_real_ones() {
    let of = type_keys();
    let drift = drift(&readme_keys(&of), &of);
    assert!(
        drift.is_empty(),
        "README's configuration table drifted:\n{}",
        drift.join("\n")
    );
}
