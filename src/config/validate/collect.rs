//! Every structural problem of a file in one run: unknown keys, values of
//! the wrong kind and missing keys, each with its line.
//!
//! serde stops at the first error. So the text is read into a YAML value
//! once, and then parsed into the file types again and again: each error is
//! recorded, the offending key removed (or a missing one filled with a
//! placeholder), and the parse retried, until it goes through or a bounded
//! number of rounds is spent. What finally parses goes on to the semantic
//! checks, whose problems on keys already reported are dropped (they would
//! only be consequences of the removal or the placeholder).
//!
//! Lines come from [`lines`](super::lines), on the original text.

use super::lines::line_of_steps;
use super::yaml_errors::{self, Fix, Step, safe_name};
use crate::config::Problem;
use crate::config::file::ConfigFile;
use serde_yaml::{Mapping, Value};
use std::collections::{HashMap, HashSet};

/// More rounds than any hand-written file has mistakes; bounds the work a
/// hostile file can cause.
const MAX_ROUNDS: usize = 200;

/// What the structural pass found.
pub(super) struct Structural {
    /// The file types, once every structural problem was got past.
    pub raw: Option<ConfigFile>,
    pub problems: Vec<Problem>,
    /// Internal paths (`routes[1].match.path_prefx`) that were reported:
    /// semantic problems at or under them are consequences, not news.
    pub reported: Vec<String>,
    /// The document as written, for route names.
    pub doc: Value,
}

pub(super) fn parse(text: &str) -> Structural {
    let mut doc: Value = match serde_yaml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            return Structural {
                raw: None,
                problems: syntax_problems(&e, text),
                reported: Vec::new(),
                doc: Value::Null,
            };
        }
    };
    let original = doc.clone();
    let mut problems: Vec<Problem> = Vec::new();
    let mut reported: Vec<String> = Vec::new();
    let mut fills: HashMap<Vec<Step>, usize> = HashMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for _ in 0..MAX_ROUNDS {
        let Ok(written) = serde_yaml::to_string(&doc) else {
            break;
        };
        let e = match serde_yaml::from_str::<ConfigFile>(&written) {
            Ok(raw) => {
                return Structural {
                    raw: Some(raw),
                    problems,
                    reported,
                    doc: original,
                };
            }
            Err(e) => e,
        };
        let (mut problem, fix) = yaml_errors::diagnose(&e, &written);
        let target = match &fix {
            Fix::Remove(at) | Fix::Fill(at) => Some(at.clone()),
            Fix::Stop => None,
        };
        let key = target.as_deref().map(internal_path);
        // A missing key that was removed (or a placeholder refused) was
        // already reported under its own name.
        let consequence = key.as_ref().is_some_and(|k| is_consequence(k, &reported));
        if !consequence && seen.insert((problem.field.clone(), problem.message.clone())) {
            problem.line = target.as_deref().and_then(|at| line_of_steps(text, at));
            problems.push(problem);
            reported.extend(key);
        }
        let applied = match fix {
            // A list element cannot go (later indices would move): it is
            // replaced by placeholders in turn, and dropped only when none fits.
            Fix::Remove(at) if matches!(at.last(), Some(Step::Index(_))) => {
                let tries = fills.entry(at.clone()).or_default();
                *tries += 1;
                match placeholder(*tries) {
                    Some(v) => replace(&mut doc, &at, v),
                    None => remove(&mut doc, &at),
                }
            }
            Fix::Remove(at) => remove(&mut doc, &at),
            Fix::Fill(at) => {
                let tries = fills.entry(at.clone()).or_default();
                *tries += 1;
                placeholder(*tries).is_some_and(|v| fill(&mut doc, &at, v))
            }
            Fix::Stop => false,
        };
        if !applied {
            break;
        }
    }
    Structural {
        raw: None,
        problems,
        reported,
        doc: original,
    }
}

/// Placeholders tried in turn for a missing key, until one has the kind the
/// field wants: text (names, paths, ids), a mapping (sections), a secret
/// source, a number, a list.
fn placeholder(attempt: usize) -> Option<Value> {
    let mut secret = Mapping::new();
    secret.insert("value".into(), "placeholder".into());
    [
        Value::String(String::new()),
        Value::Mapping(Mapping::new()),
        Value::Mapping(secret),
        Value::Number(0.into()),
        Value::Sequence(Vec::new()),
    ]
    .into_iter()
    .nth(attempt - 1)
}

fn internal_path(at: &[Step]) -> String {
    let mut out = String::new();
    for step in at {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn parent<'v>(doc: &'v mut Value, at: &[Step]) -> Option<&'v mut Value> {
    at.iter().try_fold(doc, |v, step| match (v, step) {
        (Value::Mapping(m), Step::Key(k)) => m.get_mut(k.as_str()),
        (Value::Sequence(s), Step::Index(i)) => s.get_mut(*i),
        _ => None,
    })
}

fn remove(doc: &mut Value, at: &[Step]) -> bool {
    let Some((last, up)) = at.split_last() else {
        return false;
    };
    match (parent(doc, up), last) {
        (Some(Value::Mapping(m)), Step::Key(k)) => m.remove(k.as_str()).is_some(),
        (Some(Value::Sequence(s)), Step::Index(i)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

fn replace(doc: &mut Value, at: &[Step], value: Value) -> bool {
    match parent(doc, at) {
        Some(slot) => {
            *slot = value;
            true
        }
        None => false,
    }
}

fn fill(doc: &mut Value, at: &[Step], value: Value) -> bool {
    let Some((Step::Key(k), up)) = at.split_last() else {
        return false;
    };
    let container = match parent(doc, up) {
        Some(v) => v,
        None => return false,
    };
    if container.is_null() {
        *container = Value::Mapping(Mapping::new());
    }
    match container {
        Value::Mapping(m) => {
            m.insert(Value::String(k.clone()), value);
            true
        }
        _ => false,
    }
}

/// A document that is not YAML. Tabs in indentation are the usual cause, and
/// libyaml's message for them ("found character that cannot start any
/// token") helps nobody: each such line is named instead.
fn syntax_problems(e: &serde_yaml::Error, text: &str) -> Vec<Problem> {
    let tabs: Vec<Problem> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let indent = &l[..l.len() - l.trim_start().len()];
            indent.contains('\t')
        })
        .take(10)
        .map(|(i, _)| Problem {
            field: "(yaml)".into(),
            message: "is indented with a tab character; YAML indents with spaces only".into(),
            line: Some(i + 1),
        })
        .collect();
    if tabs.is_empty() {
        vec![yaml_errors::yaml_problem(e, text)]
    } else {
        tabs
    }
}

/// Whether a semantic problem at `field` is a consequence of a structural
/// one: at or under a reported key, or the absence of a key that a
/// reported unknown sibling is a typo of.
pub(super) fn is_consequence(field: &str, reported: &[String]) -> bool {
    reported.iter().any(|r| {
        field == r
            || field.starts_with(&format!("{r}."))
            || field.starts_with(&format!("{r}["))
            || sibling_typo(field, r)
    })
}

fn sibling_typo(field: &str, reported: &str) -> bool {
    let split = |p: &str| {
        p.rsplit_once('.')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    };
    match (split(field), split(reported)) {
        (Some((a, x)), Some((b, y))) => a == b && super::hints::is_typo_of(&y, &x),
        _ => false,
    }
}

/// Shown fields name the route: `routes[1] (hanshu).match.path_prefix`.
pub(super) fn name_routes(problems: &mut [Problem], doc: &Value) {
    for p in problems.iter_mut() {
        let Some(rest) = p.field.strip_prefix("routes[") else {
            continue;
        };
        let Some((index, after)) = rest.split_once(']') else {
            continue;
        };
        let Ok(i) = index.parse::<usize>() else {
            continue;
        };
        let name = doc
            .get("routes")
            .and_then(|r| r.get(i))
            .and_then(|r| r.get("name"))
            .and_then(Value::as_str)
            .filter(|n| shown_name(n));
        if let Some(name) = name {
            p.field = format!("routes[{i}] ({name}){after}");
        }
    }
}

/// Route names are labels in logs and metrics, not secrets; still, only a
/// name of name characters is echoed.
fn shown_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && (safe_name(name).is_some()
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
}

/// Sorted by line; problems without a line last, in the order found.
pub(super) fn sort(problems: &mut [Problem]) {
    problems.sort_by_key(|p| (p.line.is_none(), p.line));
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn problems(text: &str) -> Vec<String> {
        let e = Config::from_yaml(text, Path::new("/nonexistent"), "t").unwrap_err();
        e.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn two_typos_a_missing_key_file_and_a_bad_route_are_all_reported_in_line_order() {
        let text = "\
listen: [\"127.0.0.1:0\"]
app:
  id: 75
  private_key: { file: missing.pem }
timeout:
  connect: 5s
routes:
  - name: yanqianyu
    match: { path_prefix: /orgs/yanqianyu }
    installation: { id: 14 }
  - name: hanshu
    match: { path_prefix: as/hanshu }
    installation: auto
  - name: repos
    match: { path_prefx: /repos }
    installation: auto
";
        let shown = problems(text);
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("line 4: app.private_key: cannot read "),
            "{shown:#?}"
        );
        assert!(shown[0].contains("missing.pem"), "{shown:#?}");
        assert!(
            shown[1].starts_with(
                "line 5: (top level): unknown field `timeout`; did you mean `timeouts`?"
            ),
            "{shown:#?}"
        );
        assert_eq!(
            shown[2],
            "line 12: routes[1] (hanshu).match.path_prefix: must start with /"
        );
        assert!(
            shown[3].starts_with("line 15: routes[2] (repos).match: unknown field `path_prefx`; did you mean `path_prefix`?"),
            "{shown:#?}"
        );
    }

    #[test]
    fn type_errors_missing_keys_and_unknown_keys_are_reported_together() {
        let text = "\
app:
  id: [1]
  private_key: { file: missing.pem }
  bogus: 1
limits: { max_connections: many }
routes:
  - match: { path_prefix: /a }
    installation: { account: x, id: 3 }
";
        let shown = problems(text);
        let fields: Vec<&str> = shown
            .iter()
            .map(|s| s.split(": ").nth(1).unwrap_or(""))
            .collect();
        assert!(fields.contains(&"app.id"), "{shown:#?}");
        assert!(fields.contains(&"app"), "{shown:#?}");
        assert!(fields.contains(&"limits.max_connections"), "{shown:#?}");
        assert!(fields.contains(&"routes[0].name"), "{shown:#?}");
        assert!(
            shown.iter().any(
                |s| s.starts_with("line 8: routes[0].installation: needs exactly one of `id:`")
            ),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.contains("missing.pem")),
            "{shown:#?}"
        );
        let lines: Vec<usize> = shown
            .iter()
            .filter_map(|s| s.strip_prefix("line ")?.split(':').next()?.parse().ok())
            .collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{shown:#?}");
    }

    #[test]
    fn a_bad_list_element_does_not_stop_the_other_checks() {
        let text = "\
listen: [1, \"127.0.0.1:0\"]
app:
  id: 75
  private_key: { file: missing.pem }
routes:
  - just a string
  - name: b
    match: { path_prefix: /b, methods: [GET, [x]] }
    installation: auto
";
        let shown = problems(text);
        assert!(
            shown.iter().any(|s| s.starts_with("line 1: listen[0]: ")),
            "{shown:#?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with("line 6: routes[0]: ")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("line 8: routes[1] (b).match.methods[1]: ")),
            "{shown:#?}"
        );
        // The parse went through: the semantic checks ran too.
        assert!(
            shown.iter().any(|s| s.contains("missing.pem")),
            "{shown:#?}"
        );
        assert_eq!(shown.len(), 4, "{shown:#?}");
    }

    #[test]
    fn newcomer_mistakes_get_plain_messages() {
        let bare = "app:\n  id: 75\n  private_key: secrets/app.pem\n";
        let shown = problems(bare);
        assert_eq!(
            shown,
            vec![
                "line 3: app.private_key: expected a mapping like { file: PATH }, { env: NAME } \
                 or { value: \"...\" }, found a string; did you mean `{ file: secrets/app.pem }`?"
            ]
        );
        let pasted = "app:\n  id: 75\n  private_key: ghp_s3cretValue\n";
        let shown = problems(pasted).join("\n");
        assert!(shown.contains("did you mean `{ file: PATH }`"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let tabs = "app:\n\tid: 75\n";
        assert_eq!(
            problems(tabs),
            vec!["line 2: (yaml): is indented with a tab character; YAML indents with spaces only"]
        );
    }

    #[test]
    fn problems_under_apps_and_api_version_name_their_fields() {
        let text = "\
api_version: [1]
apps:
  one:
    id: [1]
    private_key: { file: missing.pem }
    bogus: 1
  two:
    id: 76
    private_key: { file: missing.pem }
routes:
  - name: a
    app: three
    match: { path_prefix: /a }
    installation: { id: 3 }
";
        let shown = problems(text);
        let fields: Vec<&str> = shown
            .iter()
            .map(|s| s.split(": ").nth(1).unwrap_or(""))
            .collect();
        for field in [
            "api_version",
            "apps.one.id",
            "apps.one",
            "apps.two.private_key",
            "routes[0] (a).app",
        ] {
            assert!(fields.contains(&field), "{field}: {shown:#?}");
        }
    }
}
