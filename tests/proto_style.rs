//! The public contract (`proto/**/*.proto`) follows the usual protobuf style,
//! checked without buf (proto/buf.yaml runs buf's own rules, STANDARD and
//! COMMENTS, where buf is installed):
//!
//! - each file says `syntax = "proto3"` and a versioned package
//!   (`valet.v1`, `valet.v1alpha`, `valet.v2beta1`) that matches its
//!   directory (`valet/v1/`), and its name is lower_snake_case;
//! - every message, field, enum, enum value, service and rpc has a leading
//!   comment (`//` lines directly above it) — the .proto files are the
//!   reference documentation;
//! - messages, enums, services and rpcs are PascalCase, fields
//!   lower_snake_case, enum values UPPER_SNAKE_CASE prefixed with their
//!   enum's name, and each enum's zero value is `<PREFIX>_UNSPECIFIED`;
//! - an rpc's request is named `<Rpc>Request` (responses may be the resource
//!   itself; see buf.yaml).
//!
//! A small parser, enough for the subset of proto3 these files use
//! (messages, nested messages and enums, oneofs, maps, options, reserved);
//! `lint_catches_each_rule` shows each rule failing on a bad file.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Punct(char),
}

/// The tokens of a file with their (1-based) line, and for each line
/// whether it holds only a non-empty comment.
fn tokenize(text: &str) -> (Vec<(Tok, usize)>, Vec<bool>) {
    let chars: Vec<char> = text.chars().collect();
    let lines = text.lines().count() + 2;
    let mut comment_only = vec![false; lines + 1];
    let mut code_on = vec![false; lines + 1];
    let mut comment_on = vec![false; lines + 1];
    let mut toks = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            let start = i + 2;
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            if chars[start..i].iter().any(|c| !c.is_whitespace()) {
                comment_on[line] = true;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    line += 1;
                } else if !chars[i].is_whitespace() {
                    comment_on[line] = true;
                }
                i += 1;
            }
            i += 2;
        } else if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                s.extend(chars.get(i));
                i += 1;
            }
            i += 1;
            toks.push((Tok::Str(s), line));
            code_on[line] = true;
        } else if c.is_alphanumeric() || c == '_' || c == '.' {
            let mut s = String::new();
            while i < chars.len() && (chars[i].is_alphanumeric() || "_.-+".contains(chars[i])) {
                s.push(chars[i]);
                i += 1;
            }
            toks.push((Tok::Word(s), line));
            code_on[line] = true;
        } else {
            toks.push((Tok::Punct(c), line));
            code_on[line] = true;
            i += 1;
        }
    }
    for l in 0..comment_only.len() {
        comment_only[l] = comment_on[l] && !code_on[l];
    }
    (toks, comment_only)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Message,
    Field,
    Enum,
    EnumValue,
    Service,
    Rpc,
}

/// One declaration: what it is, its name, its line, whether a comment sits
/// directly above it, and (enum values) its enum and number, or (rpcs) its
/// service and request type.
#[derive(Debug, Clone)]
struct Decl {
    kind: Kind,
    name: String,
    line: usize,
    commented: bool,
    parent: String,
    number: Option<String>,
    request: Option<String>,
}

#[derive(Debug, Default)]
struct ProtoFile {
    syntax: Option<String>,
    package: Option<(String, usize)>,
    decls: Vec<Decl>,
}

fn word(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Word(w), _)) => Some(w),
        _ => None,
    }
}

fn is_punct(t: Option<&(Tok, usize)>, p: char) -> bool {
    matches!(t, Some((Tok::Punct(c), _)) if *c == p)
}

/// Index just past the `;` ending the statement at `i`, skipping any
/// `{…}`, `[…]` and `(…)` inside (option values).
fn skip_statement(toks: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{' | '[' | '(' | '<') => depth += 1,
            Tok::Punct('}' | ']' | ')' | '>') => depth -= 1,
            Tok::Punct(';') if depth <= 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Index just past the `}` matching the `{` at `i`.
fn skip_block(toks: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

fn parse(text: &str) -> Result<ProtoFile, String> {
    let (toks, comment_only) = tokenize(text);
    let commented = |line: usize| line >= 2 && comment_only[line - 1];
    let mut file = ProtoFile::default();
    // The enclosing scopes: (kind, name); oneofs are ("oneof", message).
    let mut scopes: Vec<(&str, String)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        let line = *line;
        let scope = scopes.last().map(|(k, n)| (*k, n.clone()));
        let decl = |kind, name: &str, parent: &str| Decl {
            kind,
            name: name.to_owned(),
            line,
            commented: commented(line),
            parent: parent.to_owned(),
            number: None,
            request: None,
        };
        match tok {
            Tok::Punct('}') => {
                scopes.pop().ok_or(format!("line {line}: unbalanced '}}'"))?;
                i += 1;
            }
            Tok::Punct(';') => i += 1,
            Tok::Word(w) => match (w.as_str(), scope.as_ref().map(|(k, _)| *k)) {
                ("syntax" | "edition", None) => {
                    let value = toks.get(i + 2).and_then(|(t, _)| match t {
                        Tok::Str(s) => Some(s.clone()),
                        _ => None,
                    });
                    file.syntax = value;
                    i = skip_statement(&toks, i);
                }
                ("package", None) => {
                    let name = word(toks.get(i + 1)).ok_or(format!("line {line}: package name"))?;
                    file.package = Some((name.to_owned(), line));
                    i = skip_statement(&toks, i);
                }
                ("import" | "option" | "reserved" | "extensions", _) => i = skip_statement(&toks, i),
                ("message" | "enum" | "service", None | Some("message")) => {
                    let name = word(toks.get(i + 1)).ok_or(format!("line {line}: {w} name"))?;
                    if !is_punct(toks.get(i + 2), '{') {
                        return Err(format!("line {line}: '{{' after {w} {name}"));
                    }
                    let kind = match w.as_str() {
                        "message" => Kind::Message,
                        "enum" => Kind::Enum,
                        _ => Kind::Service,
                    };
                    let parent = scope.as_ref().map(|(_, n)| n.as_str()).unwrap_or("");
                    file.decls.push(decl(kind, name, parent));
                    let scope_kind = match kind {
                        Kind::Message => "message",
                        Kind::Enum => "enum",
                        _ => "service",
                    };
                    scopes.push((scope_kind, name.to_owned()));
                    i += 3;
                }
                ("oneof", Some("message")) => {
                    // Its fields belong to the message.
                    word(toks.get(i + 1)).ok_or(format!("line {line}: oneof name"))?;
                    let message = scope.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
                    scopes.push(("oneof", message));
                    i += 3;
                }
                ("rpc", Some("service")) => {
                    let name = word(toks.get(i + 1)).ok_or(format!("line {line}: rpc name"))?;
                    let mut j = i + 3; // past `rpc Name (`
                    if word(toks.get(j)) == Some("stream") {
                        j += 1;
                    }
                    let request = word(toks.get(j)).map(str::to_owned);
                    let service = scope.as_ref().map(|(_, n)| n.clone()).unwrap_or_default();
                    let mut d = decl(Kind::Rpc, name, &service);
                    d.request = request;
                    file.decls.push(d);
                    // Past the `returns (…)`, then `;` or an options block.
                    while j < toks.len() && !is_punct(toks.get(j), ';') && !is_punct(toks.get(j), '{') {
                        j += 1;
                    }
                    i = if is_punct(toks.get(j), '{') {
                        skip_block(&toks, j)
                    } else {
                        j + 1
                    };
                }
                (_, Some("enum")) => {
                    let mut d = decl(Kind::EnumValue, w, &scope.as_ref().expect("enum").1);
                    d.number = word(toks.get(i + 2)).map(str::to_owned);
                    file.decls.push(d);
                    i = skip_statement(&toks, i);
                }
                (_, Some("message" | "oneof")) => {
                    // [repeated|optional|required] Type name = N [opts]; or
                    // map<K, V> name = N;
                    let mut j = i;
                    if matches!(w.as_str(), "repeated" | "optional" | "required") {
                        j += 1;
                    }
                    if word(toks.get(j)) == Some("map") && is_punct(toks.get(j + 1), '<') {
                        while j < toks.len() && !is_punct(toks.get(j), '>') {
                            j += 1;
                        }
                    }
                    let name = word(toks.get(j + 1)).ok_or(format!("line {line}: field name"))?;
                    if !is_punct(toks.get(j + 2), '=') {
                        return Err(format!("line {line}: not a field: {w} {name}"));
                    }
                    let message = scope.as_ref().map(|(_, n)| n.as_str()).unwrap_or("");
                    file.decls.push(decl(Kind::Field, name, message));
                    i = skip_statement(&toks, i);
                }
                (other, _) => return Err(format!("line {line}: unexpected '{other}'")),
            },
            Tok::Str(_) | Tok::Punct(_) => return Err(format!("line {line}: unexpected {tok:?}")),
        }
    }
    if !scopes.is_empty() {
        return Err(format!("unclosed {scopes:?}"));
    }
    Ok(file)
}

fn is_pascal(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_lower_snake(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.contains("__")
        && !s.ends_with('_')
}

fn is_upper_snake(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && !s.contains("__")
        && !s.ends_with('_')
}

/// `RatePeriod` → `RATE_PERIOD`.
fn upper_snake(pascal: &str) -> String {
    let mut out = String::new();
    for (i, c) in pascal.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A versioned package's last part: v1, v2, v1alpha, v1beta2, …
fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let tail = &rest[digits..];
    let stability = tail
        .strip_prefix("alpha")
        .or_else(|| tail.strip_prefix("beta"))
        .unwrap_or(tail);
    (tail.is_empty() || stability.len() < tail.len()) && stability.chars().all(|c| c.is_ascii_digit())
}

/// Every style problem of the file at `rel` (its path under proto/).
fn lint(rel: &Path, text: &str) -> Vec<String> {
    let at = |line: usize, what: String| format!("{}:{line}: {what}", rel.display());
    let file = match parse(text) {
        Ok(f) => f,
        Err(e) => return vec![at(0, format!("cannot parse: {e}"))],
    };
    let mut problems = Vec::new();
    let stem = rel.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if !is_lower_snake(stem) {
        problems.push(at(0, format!("file name '{stem}.proto' is not lower_snake_case")));
    }
    if file.syntax.as_deref() != Some("proto3") {
        problems.push(at(1, format!("syntax {:?}, not \"proto3\"", file.syntax)));
    }
    let dir: Vec<String> = rel
        .parent()
        .map(|p| p.iter().map(|c| c.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    match &file.package {
        None => problems.push(at(1, "no package".into())),
        Some((pkg, line)) => {
            let parts: Vec<&str> = pkg.split('.').collect();
            if parts.iter().any(|p| !is_lower_snake(p) && !is_version(p)) {
                problems.push(at(*line, format!("package '{pkg}' is not lower_snake_case")));
            }
            if !parts.last().is_some_and(|v| is_version(v)) {
                problems.push(at(
                    *line,
                    format!("package '{pkg}' has no version suffix (v1, v1alpha, v2beta1, …)"),
                ));
            }
            if parts != dir.iter().map(String::as_str).collect::<Vec<_>>() {
                problems.push(at(
                    *line,
                    format!("package '{pkg}' does not match its directory '{}'", dir.join("/")),
                ));
            }
        }
    }
    for d in &file.decls {
        let what = match d.kind {
            Kind::Message => "message",
            Kind::Field => "field",
            Kind::Enum => "enum",
            Kind::EnumValue => "enum value",
            Kind::Service => "service",
            Kind::Rpc => "rpc",
        };
        let full = if d.parent.is_empty() {
            d.name.clone()
        } else {
            format!("{}.{}", d.parent, d.name)
        };
        if !d.commented {
            problems.push(at(d.line, format!("{what} {full} has no leading comment")));
        }
        let (ok, case) = match d.kind {
            Kind::Message | Kind::Enum | Kind::Service | Kind::Rpc => (is_pascal(&d.name), "PascalCase"),
            Kind::Field => (is_lower_snake(&d.name), "lower_snake_case"),
            Kind::EnumValue => (is_upper_snake(&d.name), "UPPER_SNAKE_CASE"),
        };
        if !ok {
            problems.push(at(d.line, format!("{what} {full} is not {case}")));
        }
        if d.kind == Kind::EnumValue {
            let prefix = format!("{}_", upper_snake(&d.parent));
            if !d.name.starts_with(&prefix) {
                problems.push(at(d.line, format!("enum value {full} is not prefixed {prefix}")));
            }
            let zero = d.number.as_deref() == Some("0");
            if zero && d.name != format!("{prefix}UNSPECIFIED") {
                problems.push(at(
                    d.line,
                    format!("enum zero value {full} is not {prefix}UNSPECIFIED"),
                ));
            }
        }
        if d.kind == Kind::Rpc {
            let ok = [
                format!("{}Request", d.name),
                format!("{}{}Request", d.parent, d.name),
            ];
            if !d.request.as_ref().is_some_and(|r| ok.contains(r)) {
                problems.push(at(
                    d.line,
                    format!("rpc {full} takes {:?}, not {}", d.request, ok[0]),
                ));
            }
        }
    }
    // An enum whose first value is not 0 has no zero value named at all.
    for e in file.decls.iter().filter(|d| d.kind == Kind::Enum) {
        let first = file
            .decls
            .iter()
            .find(|d| d.kind == Kind::EnumValue && d.parent == e.name);
        if first.and_then(|v| v.number.as_deref()) != Some("0") {
            problems.push(at(
                e.line,
                format!("enum {} does not start with its zero value", e.name),
            ));
        }
    }
    problems
}

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proto dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            proto_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

#[test]
fn the_contract_follows_the_usual_protobuf_style() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut files = Vec::new();
    proto_files(&root, &mut files);
    files.sort();
    assert!(files.len() >= 2, "found {files:?}");
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read proto");
        let rel = path.strip_prefix(&root).expect("under proto/");
        checked += parse(&text).map(|f| f.decls.len()).unwrap_or(0);
        problems.extend(lint(rel, &text));
    }
    assert!(checked > 100, "parsed only {checked} declarations");
    assert!(problems.is_empty(), "proto style:\n{}", problems.join("\n"));
}

#[test]
fn lint_catches_each_rule() {
    let good = "\
// A file.
syntax = \"proto3\";

package valet.v1alpha;

import \"google/protobuf/timestamp.proto\";

option java_multiple_files = true;

// The service.
service Things {
  // Gets a thing.
  rpc GetThing(GetThingRequest) returns (Thing) {
    option idempotency_level = NO_SIDE_EFFECTS;
  }
}

// A thing.
message Thing {
  // Its id.
  string thing_id = 1;
  // Labels.
  map<string, string> labels = 2 [deprecated = true];
  /* Its kind. */
  oneof kind {
    // A nested one.
    Inner inner = 3;
  }
  reserved 4, 5;
  // Nested.
  message Inner {
    // When.
    google.protobuf.Timestamp at = 1;
  }
}

// Asks for a thing.
message GetThingRequest {
  // Its id.
  string thing_id = 1;
}

// How good.
enum Grade {
  // Not set.
  GRADE_UNSPECIFIED = 0;
  // Good.
  GRADE_GOOD = 1;
}
";
    let rel = Path::new("valet/v1alpha/things.proto");
    assert_eq!(lint(rel, good), Vec::<String>::new());
    assert_eq!(parse(good).expect("parses").decls.len(), 13);

    let bad = |from: &str, to: &str, expect: &str| {
        assert!(good.contains(from), "{from}");
        let problems = lint(rel, &good.replacen(from, to, 1));
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{from:?} -> {to:?}: expected {expect:?} in {problems:?}"
        );
    };
    // A comment removed (leading, or detached by a blank line), from each kind.
    bad(
        "  // Its id.\n  string thing_id",
        "  string thing_id",
        "field Thing.thing_id has no leading comment",
    );
    bad(
        "  // Labels.\n",
        "  // Labels.\n\n",
        "field Thing.labels has no leading comment",
    );
    bad(
        "    // A nested one.\n",
        "",
        "field Thing.inner has no leading comment",
    );
    bad(
        "    // When.\n",
        "    //\n",
        "field Inner.at has no leading comment",
    );
    bad(
        "  // Good.\n",
        "",
        "enum value Grade.GRADE_GOOD has no leading comment",
    );
    bad(
        "  // Gets a thing.\n",
        "",
        "rpc Things.GetThing has no leading comment",
    );
    bad("// A thing.\n", "", "message Thing has no leading comment");
    bad("// How good.\n", "", "enum Grade has no leading comment");
    bad("// The service.\n", "", "service Things has no leading comment");
    bad("  // Nested.\n", "", "message Thing.Inner has no leading comment");
    // Names.
    bad(
        "GRADE_UNSPECIFIED = 0",
        "GRADE_NONE = 0",
        "is not GRADE_UNSPECIFIED",
    );
    bad("GRADE_GOOD", "GOOD", "is not prefixed GRADE_");
    bad("GRADE_GOOD", "GRADE_good", "is not UPPER_SNAKE_CASE");
    bad(
        "string thing_id = 1;\n  // Labels",
        "string thingId = 1;\n  // Labels",
        "field Thing.thingId is not lower_snake_case",
    );
    bad(
        "message Thing {",
        "message thing {",
        "message thing is not PascalCase",
    );
    bad("enum Grade {", "enum grade_t {", "enum grade_t is not PascalCase");
    bad(
        "service Things",
        "service things_svc",
        "service things_svc is not PascalCase",
    );
    bad(
        "rpc GetThing",
        "rpc get_thing",
        "rpc Things.get_thing is not PascalCase",
    );
    bad(
        "rpc GetThing(GetThingRequest)",
        "rpc GetThing(Thing)",
        "not GetThingRequest",
    );
    bad(
        "GRADE_UNSPECIFIED = 0;\n  // Good.\n  GRADE_GOOD = 1",
        "GRADE_UNSPECIFIED = 1;\n  // Good.\n  GRADE_GOOD = 2",
        "does not start with its zero value",
    );
    // Packages and files.
    bad(
        "package valet.v1alpha;",
        "package valet;",
        "has no version suffix",
    );
    bad(
        "package valet.v1alpha;",
        "package valet.v1;",
        "does not match its directory 'valet/v1alpha'",
    );
    bad(
        "package valet.v1alpha;",
        "package valet.version1;",
        "has no version suffix",
    );
    bad("package valet.v1alpha;\n", "", "no package");
    bad("\"proto3\"", "\"proto2\"", "not \"proto3\"");
    assert!(lint(Path::new("valet/v1alpha/Things.proto"), good)[0].contains("not lower_snake_case"));
    assert!(lint(rel, &good.replacen("}\n", "", 1))[0].contains("cannot parse"));
    for (v, ok) in [
        ("v1", true),
        ("v2beta1", true),
        ("v1alpha", true),
        ("v0", false),
        ("v", false),
        ("v1gamma", false),
        ("vx", false),
        ("v01", false),
    ] {
        assert_eq!(is_version(v), ok, "{v}");
    }
}
