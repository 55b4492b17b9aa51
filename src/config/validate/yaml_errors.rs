//! serde_yaml's errors turned into [`Problem`]s that never quote the YAML.
//!
//! serde's messages embed the offending value (`invalid type: string
//! "-----BEGIN PRIVATE KEY-----..."`, ``unknown variant `<the value>` ``), so a
//! key pasted inline where `{ value: ... }` belongs would reach `check`, the
//! log and readyz. So nothing of the message is copied: its fixed wording
//! only tells which kind of mistake it is, the kind of value found is read
//! from the document itself, and the message is assembled from fixed phrases
//! and field names. The one piece of user text kept is an unknown *key*, and
//! only when it looks like a field name (short, `[a-z0-9_]`): a pasted secret
//! never does.

use super::hints;
use crate::config::Problem;
use serde_yaml::Value;

/// Secret sources: the shape every secret field wants.
pub(super) const SECRET_SHAPE: &str =
    r#"a mapping like { file: PATH }, { env: NAME } or { value: "..." }"#;

/// Where a problem at the document's root is reported.
const TOP_LEVEL: &str = "(top level)";

/// What serde's fixed wording says went wrong.
enum Fault<'m> {
    /// A value of the wrong type or form. `expected` is serde's description
    /// of the wanted type (written by code, used only to look up a phrase).
    Wrong {
        expected: Option<&'m str>,
    },
    /// An enum (a secret source, `installation:`) got a name it does not know.
    UnknownVariant {
        name: &'m str,
    },
    UnknownField {
        name: &'m str,
        known: Vec<&'m str>,
    },
    MissingField(&'m str),
    DuplicateField(&'m str),
    /// Not YAML at all (libyaml's scanner and parser), or a message this
    /// module does not know.
    Syntax(&'m str),
}

/// What to change in the document so the next parse gets past a problem.
/// Paths here are internal (never shown): an unknown key's own name is
/// kept, whatever it looks like, so it can be removed.
#[derive(Debug)]
pub(super) enum Fix {
    /// Remove the key at this path (a value of the wrong kind, an unknown key).
    Remove(Vec<Step>),
    /// A required key is missing at this path: fill it with a placeholder.
    Fill(Vec<Step>),
    /// Nothing to do: the problem stops the parse.
    Stop,
}

/// One step of an owned path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// The problem `e` reports, and how to get past it.
pub(super) fn diagnose(e: &serde_yaml::Error, text: &str) -> (Problem, Fix) {
    let full = e.to_string();
    let line = e.location().map(|l| l.line());
    let msg = match e.location() {
        Some(l) => full
            .strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or(&full),
        None => &full,
    };
    // serde_yaml writes "routes[0].match: unknown field ..."; a path is only
    // taken when it is made of field names and indices.
    let (mut path, msg) = match msg.split_once(": ") {
        Some((p, rest)) if parse_path(p).is_some() => (p.to_owned(), rest),
        _ => (String::new(), msg),
    };
    let fault = classify(msg);
    let mut line = line;
    // An untagged enum loses the path and the position; its type says which
    // field it is (the caller then looks the line up by the field's key).
    if let Some(field) = msg
        .strip_prefix("data did not match any variant of untagged enum ")
        .and_then(untagged_field)
    {
        path = under_apps(field, text).unwrap_or_else(|| field.to_owned());
        line = None;
    }
    let found = match fault {
        // The error is about a key, and the path names its container.
        Fault::Wrong {
            expected: Some("field identifier" | "variant identifier"),
        } => None,
        _ => serde_yaml::from_str::<Value>(text)
            .ok()
            .and_then(|doc| parse_path(&path).and_then(|segs| walk(&doc, &segs).map(kind_of))),
    };
    let at = |field: &str| join(&path, field);
    let steps = || -> Vec<Step> {
        parse_path(&path)
            .unwrap_or_default()
            .iter()
            .map(|s| match s {
                Seg::Key(k) => Step::Key((*k).to_owned()),
                Seg::Index(i) => Step::Index(*i),
            })
            .collect()
    };
    let fix = match &fault {
        _ if parse_path(&path).is_none() => Fix::Stop,
        Fault::Wrong {
            expected: Some("field identifier" | "variant identifier"),
        } => Fix::Stop,
        Fault::Wrong { .. } | Fault::UnknownVariant { .. } if !path.is_empty() => {
            Fix::Remove(steps())
        }
        Fault::UnknownField { name, .. } => {
            let mut at = steps();
            at.push(Step::Key((*name).to_owned()));
            Fix::Remove(at)
        }
        Fault::MissingField(name) => {
            let mut at = steps();
            at.push(Step::Key((*name).to_owned()));
            Fix::Fill(at)
        }
        _ => Fix::Stop,
    };
    let doc = serde_yaml::from_str::<Value>(text).ok();
    let node = doc
        .as_ref()
        .and_then(|doc| parse_path(&path).and_then(|segs| walk(doc, &segs)));
    if let Some(message) = node.and_then(|node| hints::newcomer_message(&path, node)) {
        let problem = Problem {
            field: path.clone(),
            message,
            line,
        };
        return (problem, fix);
    }
    let (field, message) = match fault {
        Fault::Wrong { expected } => {
            let expected = expected_phrase(&path, expected);
            (path.clone(), wrong(expected, found))
        }
        Fault::UnknownVariant { name } => {
            let expected = expected_phrase(&path, None);
            // From a mapping the name is a key the user typed; from a scalar
            // it is the value itself, which is never quoted.
            let message = match (found, safe_name(name)) {
                (Some("a mapping"), Some(name)) => match expected {
                    Some(x) => format!("`{name}` is not a known key here; expected {x}"),
                    None => format!("`{name}` is not a known key here"),
                },
                _ => wrong(expected, found),
            };
            (path.clone(), message)
        }
        Fault::UnknownField { name, known } => {
            let what = match safe_name(name) {
                Some(n) => format!("unknown field `{n}`"),
                None => "an unknown field (its name is not shown)".to_owned(),
            };
            let message = match known.iter().find(|k| hints::is_typo_of(name, k)) {
                Some(k) if safe_name(name).is_some() => format!("{what}; did you mean `{k}`?"),
                _ if known.is_empty() => what,
                _ => format!("{what}; expected one of: {}", known.join(", ")),
            };
            (path.clone(), message)
        }
        Fault::MissingField(name) => (at(name), "is required".to_owned()),
        Fault::DuplicateField(name) => (at(name), "is written twice".to_owned()),
        Fault::Syntax(what) => ("(yaml)".to_owned(), format!("not valid YAML: {what}")),
    };
    let problem = Problem {
        field: if field.is_empty() {
            TOP_LEVEL.to_owned()
        } else {
            field
        },
        message,
        line,
    };
    (problem, fix)
}

/// `routes[3].match.host` as `routes[].match.host`.
pub(super) fn shape_of(path: &str) -> String {
    let mut segs = parse_path(path).unwrap_or_default();
    // `apps.NAME.FIELD` has the fields of `app.FIELD`, and its words.
    if let [Seg::Key("apps"), Seg::Key(_), ..] = &segs[..] {
        segs.splice(0..2, [Seg::Key("app")]);
    }
    let shape: String = segs
        .iter()
        .map(|s| match s {
            Seg::Key(k) => format!(".{k}"),
            Seg::Index(_) => "[]".to_owned(),
        })
        .collect();
    shape.trim_start_matches('.').to_owned()
}

/// The problem `e` reports.
pub(super) fn yaml_problem(e: &serde_yaml::Error, text: &str) -> Problem {
    diagnose(e, text).0
}

/// serde writes "... `NAME`, expected LIST": the name and the list. LIST
/// comes from code and never holds ", expected", so the last one ends NAME.
fn quoted(rest: &str) -> Option<(&str, &str)> {
    let end = rest.rfind("`, expected ")?;
    Some((&rest[..end], &rest[end + "`, expected ".len()..]))
}

/// "NAME`" of a field the code names (missing or duplicate).
fn code_name(rest: &str) -> Option<&str> {
    safe_name(rest.strip_suffix('`')?)
}

fn classify(msg: &str) -> Fault<'_> {
    if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
        .or_else(|| msg.strip_prefix("invalid length "))
    {
        return Fault::Wrong {
            expected: rest.rsplit_once(", expected ").map(|(_, x)| x),
        };
    }
    if msg.starts_with("data did not match any variant of untagged enum ") {
        return Fault::Wrong { expected: None };
    }
    if let Some((name, _)) = msg.strip_prefix("unknown variant `").and_then(quoted) {
        return Fault::UnknownVariant { name };
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, known) = match quoted(rest) {
            Some((name, list)) => (name, identifiers(list)),
            // "unknown field `x`, there are no fields"
            None => (rest.split('`').next().unwrap_or_default(), Vec::new()),
        };
        return Fault::UnknownField { name, known };
    }
    if let Some(name) = msg.strip_prefix("missing field `").and_then(code_name) {
        return Fault::MissingField(name);
    }
    if let Some(name) = msg.strip_prefix("duplicate field `").and_then(code_name) {
        return Fault::DuplicateField(name);
    }
    // libyaml's problems are fixed English phrases ("did not find expected
    // key at line 6 column 3, while parsing ..."); anything else with quotes,
    // digits, tags or other marks could carry document text.
    let msg = msg.split(" at line ").next().unwrap_or_default();
    let plain = !msg.is_empty()
        && msg
            .chars()
            .all(|c| c.is_ascii_lowercase() || matches!(c, ' ' | ',' | '\'' | '-'));
    Fault::Syntax(if plain {
        msg
    } else {
        "the document cannot be read"
    })
}

/// The `` `a`, `b` or `c` `` list serde writes after "expected", when every
/// entry is a field name (it is: serde lists the struct's fields).
fn identifiers(list: &str) -> Vec<&str> {
    let list = list.strip_prefix("one of ").unwrap_or(list);
    let names: Option<Vec<&str>> = list
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .map(|item| item.strip_prefix('`')?.strip_suffix('`'))
        .map(|name| name.and_then(safe_name))
        .collect();
    names.unwrap_or_default()
}

/// `name` when it can be shown: short and made of `[a-z0-9_]`, like every
/// field name; a pasted token or key never is.
pub(super) fn safe_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(name)
}

fn wrong(expected: Option<&str>, found: Option<&str>) -> String {
    match (expected, found) {
        (Some(x), Some(f)) => format!("expected {x}, found {f}"),
        (Some(x), None) => format!("expected {x}"),
        (None, Some(f)) => format!("does not take {f} here"),
        (None, None) => "has a value of the wrong kind".to_owned(),
    }
}

/// `app.id` written under `apps:`: the `apps.NAME.id` that is neither a
/// number nor a text (the untagged enum's error does not say which app).
fn under_apps(field: &str, text: &str) -> Option<String> {
    let rest = field.strip_prefix("app.")?;
    let doc: Value = serde_yaml::from_str(text).ok()?;
    let apps = doc.get("apps")?.as_mapping()?;
    apps.iter().find_map(|(name, app)| {
        let value = app.get(rest)?;
        let wrong = !(value.is_number() || value.is_string());
        let name = safe_name(name.as_str()?)?;
        wrong.then(|| format!("apps.{name}.{rest}"))
    })
}

/// The field an untagged enum stands for (its errors carry no path).
fn untagged_field(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "AppId" => "app.id",
        "FileMode" => "unix_socket_mode",
        "ByteSizeFile" => "limits.max_header_bytes",
        "CacheSizeFile" => "cache",
        _ => return None,
    })
}

/// What a field wants, in the words of the README. Known fields first; for
/// the rest, serde's name for the wanted type.
fn expected_phrase(path: &str, serde_expected: Option<&str>) -> Option<&'static str> {
    let shape = shape_of(path);
    let by_field = match shape.as_str() {
        "app.private_key" | "app.client_secret" | "clients[].key" => Some(SECRET_SHAPE),
        "app.id" => Some("a numeric app id like 75"),
        "api_version" => Some(r#"an API version like "2023-02-21" (printable ASCII, no spaces)"#),
        "unix_socket_mode" => Some(r#"an octal file mode like "0660""#),
        "limits.max_header_bytes" => Some("a size like 64KiB or 65536"),
        "cache" | "cache.max_bytes" | "cache.max_entry_bytes" => {
            Some("sizes like 64MiB or 1048576 (max_bytes, max_entry_bytes)")
        }
        "routes[].installation" => Some(
            "auto, { id: N } or { account: NAME } (optionally with repositories: [...] and permissions: { NAME: read|write })",
        ),
        "routes[].user" => Some("a user name"),
        s if s.ends_with(".file") => Some("a file path"),
        s if s.ends_with(".env") => Some("an environment variable name"),
        s if s.starts_with("timeouts.") || s == "tokens.refresh_margin" => {
            Some("a duration like 30s, 5m or 8h")
        }
        _ => None,
    };
    by_field.or_else(|| {
        let x = serde_expected?;
        Some(match x {
            "a string" | "string" => "a string",
            "path string" => "a file path",
            "a sequence" => "a list",
            "a boolean" => "true or false",
            "u8" | "u16" | "u32" | "u64" | "usize" | "an integer" => "a whole number",
            "map with a single key" => "a mapping with a single key",
            "field identifier" => "a key name",
            _ if x.starts_with("struct ") || x == "a map" => "a mapping",
            _ => return None,
        })
    })
}

/// One step of serde_yaml's path.
#[derive(Debug, PartialEq)]
pub(super) enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

/// `routes[0].match.methods` as steps; `None` unless every key is a field
/// name (so a path shown or walked is never document text).
pub(super) fn parse_path(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut out = Vec::new();
    if path.is_empty() {
        return Some(out);
    }
    for part in path.split('.') {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        out.push(Seg::Key(safe_name(key)?));
        while let Some(inner) = rest.strip_prefix('[') {
            let (n, after) = inner.split_once(']')?;
            out.push(Seg::Index(n.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn walk<'v>(doc: &'v Value, path: &[Seg<'_>]) -> Option<&'v Value> {
    path.iter().try_fold(doc, |v, seg| match (v, seg) {
        (Value::Mapping(m), Seg::Key(k)) => m.get(*k),
        (Value::Sequence(s), Seg::Index(i)) => s.get(*i),
        _ => None,
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "true or false",
        Value::Number(n) if n.is_f64() => "a fraction",
        Value::Number(n) if n.is_i64() && !n.is_u64() => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Each text puts the marker where a value, a key or a tag goes wrong.
    #[test]
    fn no_problem_quotes_the_document() {
        // Shaped like a secret (case, punctuation): no key of that shape is shown.
        const M: &str = "SeKrit-m4rker";
        let base = "listen: [\"127.0.0.1:0\"]\napp:\n  id: 75\n  private_key: { file: app.pem }\nroutes: []\n";
        let key = "{ file: app.pem }";
        let route = |body: &str| {
            base.replace(
                "routes: []",
                &format!("routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n{body}"),
            )
        };
        let texts = [
            base.replace(key, &format!("\"-----BEGIN PRIVATE KEY-----\\n{M}\\n\"")),
            base.replace(key, &format!("|\n    -----BEGIN PRIVATE KEY-----\n    {M}")),
            base.replace(key, &format!("{{ \"{M} X\": a }}")),
            base.replace(key, &format!("{{ file: a, env: {M} }}")),
            base.replace(key, &format!("[{M}]")),
            base.replace(key, "12345678901234567"),
            base.replace("  id: 75", &format!("  id: [{M}]")),
            base.replace("  id: 75", &format!("  id: 75\n  client_secret: {M}")),
            base.replace("  id: 75", &format!("  id: 75\n  \"{M}/X\": 1")),
            base.replace("  id: 75", &format!("  id: 75\n  client_id: {{ {M}: 1 }}")),
            route(&format!("    installation: {M}\n")),
            route(&format!("    installation: {{ id: {M} }}\n")),
            route(&format!("    installation: !{M} x\n")),
            route(&format!("    strip_prefix: {M}\n    installation: auto\n")),
            base.replace("routes: []", &format!("routes: {M}")),
            base.replace(
                "routes: []",
                &format!("routes: []\nlimits: {{ max_connections: {M} }}"),
            ),
            base.replace(
                "routes: []",
                &format!("routes: []\nunix_socket_mode: [{M}]"),
            ),
            base.replace("routes: []", &format!("routes: []\nstore: {M}")),
            base.replace("routes: []", &format!("routes: []\n*{M}: c")),
            base.replace("routes: []", &format!("routes: [ {M}: not yaml")),
            format!("\"{M}\""),
        ];
        for text in texts {
            let Err(e) = crate::config::Config::from_yaml(&text, Path::new("/nonexistent"), "t")
            else {
                panic!("accepted: {text}");
            };
            let shown = e.to_string();
            assert!(
                !shown.contains(M) && !shown.contains("BEGIN"),
                "{text}\n=> {shown}"
            );
            assert!(!shown.contains("12345678901234567"), "{shown}");
        }
    }

    #[test]
    fn messages_name_the_field_and_the_kind_of_value() {
        let shown = |text: &str| {
            let base = "app:\n  id: 75\n  private_key: { file: app.pem }\n";
            let e = crate::config::Config::from_yaml(
                &format!("{base}{text}"),
                Path::new("/nonexistent"),
                "t",
            )
            .unwrap_err();
            // The key file is missing too: every problem is reported.
            e.problems
                .iter()
                .find(|p| p.field != "app.private_key")
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        assert_eq!(
            shown("bogus_setting: 1\n"),
            "line 4: (top level): unknown field `bogus_setting`; expected one of: listen, upstream, \
             upstream_ca_file, app, apps, oauth, store, clients, unix_socket_mode, \
             allow_unauthenticated, tokens, timeouts, limits, allowed_origins, allowed_hosts, \
             api_version, quota, cache, routes, audit"
        );
        assert_eq!(
            shown("limits: { max_connections: -1 }\n"),
            "line 4: limits.max_connections: expected a whole number, found a negative number"
        );
        assert_eq!(
            shown("unix_socket_mode: [1]\n"),
            "line 4: unix_socket_mode: expected an octal file mode like \"0660\", found a list"
        );
        assert_eq!(
            shown(
                "routes:\n  - name: a\n    match: { path_prefix: /a }\n    installation: { acount: x }\n"
            ),
            "line 7: routes[0] (a).installation: unknown field `acount`; did you mean `account`?"
        );
    }

    #[test]
    fn paths_are_field_names_and_indices_only() {
        assert_eq!(
            parse_path("routes[10].installation").unwrap(),
            vec![Seg::Key("routes"), Seg::Index(10), Seg::Key("installation")]
        );
        assert!(parse_path("ghp_SECRET").is_none());
        assert!(parse_path("a b").is_none());
        assert!(parse_path("routes[x]").is_none());
    }

    #[test]
    fn names_are_shown_only_when_they_look_like_fields() {
        assert_eq!(safe_name("bogus_setting"), Some("bogus_setting"));
        assert_eq!(safe_name("ghp_SECRET"), None);
        assert_eq!(safe_name("-----BEGIN PRIVATE KEY-----"), None);
        assert_eq!(safe_name("0123456789abcdef0123456789abcdef"), None);
    }

    #[test]
    fn field_lists_keep_only_identifiers() {
        assert_eq!(
            identifiers("one of `id`, `private_key`, `client_id`"),
            vec!["id", "private_key", "client_id"]
        );
        assert_eq!(identifiers("`file` or `env`"), vec!["file", "env"]);
        assert!(identifiers("one of `id`, `SECRET`").is_empty());
    }
}
