//! Plain messages for the mistakes of a config's first hour, where serde's
//! own would say only that the kind of value is wrong, and typo suggestions
//! for unknown keys. Nothing from the file is echoed but a key-file path
//! (shown back only when it plainly is one) and known key names.

use super::yaml_errors::{SECRET_SHAPE, shape_of};
use serde_yaml::Value;

/// Messages for the mistakes newcomers make, where serde's own would say
/// only that the kind of value is wrong.
pub(super) fn newcomer_message(path: &str, node: &Value) -> Option<String> {
    let shape = shape_of(path);
    match (shape.as_str(), node) {
        ("app.private_key" | "app.client_secret" | "clients[].key", Value::String(s)) => {
            // A path is shown back only when it is plainly one: a secret
            // pasted here has no file extension of this kind.
            let shown = if looks_like_key_file(s) {
                s.as_str()
            } else {
                "PATH"
            };
            Some(format!(
                "expected {SECRET_SHAPE}, found a string; did you mean `{{ file: {shown} }}`?"
            ))
        }
        _ => None,
    }
}

/// `secrets/app.pem`, `./key.pem`, `/etc/x/app.key`: a relative or absolute
/// path ending in a key-file extension, of path characters only.
fn looks_like_key_file(s: &str) -> bool {
    let exts = [".pem", ".key", ".txt", ".secret"];
    s.len() <= 120
        && exts.iter().any(|e| s.ends_with(e))
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

/// Whether an unknown key is a likely typo of `known`: at most two edits
/// apart (and not a very short key, where everything is two edits apart).
pub(super) fn is_typo_of(unknown: &str, known: &str) -> bool {
    if unknown.len() < 4 {
        return false;
    }
    let (a, b): (Vec<char>, Vec<char>) = (unknown.chars().collect(), known.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}
