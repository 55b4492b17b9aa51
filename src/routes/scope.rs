//! Scoped installation tokens: what a route asks the platform to limit its
//! token to, and the check that the answer is no broader.
//!
//! The mint sends the scope as its JSON body (GitHub-App semantics; the
//! platform does not document this call's body, `ATOMGIT_API.md` section
//! 8). A platform that ignores it hands out a token for everything the app
//! may do, so the answer's `permissions` and `repository_selection` /
//! `repositories` are read back, and anything broader than asked, or not
//! stated, refuses the token (fail closed).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;

/// How much a permission allows; ordered, so "no more than" is `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn parse(text: &str) -> Option<Access> {
        match text {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// A route's limits on its installation token. Part of the token cache's
/// key: two scopes on one installation are two tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TokenScope {
    /// Repository names, lowercased, sorted, without duplicates.
    pub repositories: Option<Vec<String>>,
    /// Permission name to the most it may allow.
    pub permissions: Option<BTreeMap<String, Access>>,
}

impl TokenScope {
    /// The mint's JSON body.
    pub fn body(&self) -> Value {
        let mut body = serde_json::Map::new();
        if let Some(repos) = &self.repositories {
            body.insert("repositories".into(), json!(repos));
        }
        if let Some(perms) = &self.permissions {
            let perms: serde_json::Map<String, Value> = perms
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            body.insert("permissions".into(), Value::Object(perms));
        }
        Value::Object(body)
    }

    /// `Err(why)` when the mint's answer grants more than this scope, or
    /// does not say what it grants. `why` names permissions and repositories
    /// (the config's words and the platform's), never the token.
    pub fn check(&self, answer: &Value) -> Result<(), String> {
        if let Some(asked) = &self.permissions {
            let Some(granted) = answer.get("permissions").and_then(Value::as_object) else {
                return Err("the answer does not state the token's permissions".into());
            };
            for (name, level) in granted {
                let level = level.as_str().and_then(Access::parse);
                match (asked.get(name), level) {
                    (Some(want), Some(got)) if got <= *want => {}
                    (None, _) => {
                        return Err(format!("it grants `{name}`, which was not asked for"));
                    }
                    _ => return Err(format!("it grants more than asked for `{name}`")),
                }
            }
        }
        if let Some(asked) = &self.repositories {
            let selection = answer.get("repository_selection").and_then(Value::as_str);
            if selection.is_some_and(|s| !s.eq_ignore_ascii_case("selected")) {
                return Err("it covers all repositories, not the ones asked for".into());
            }
            let Some(granted) = answer.get("repositories").and_then(Value::as_array) else {
                return Err("the answer does not list the token's repositories".into());
            };
            for repo in granted {
                let name = repo
                    .get("name")
                    .or(Some(repo))
                    .and_then(Value::as_str)
                    .map(str::to_lowercase);
                match name {
                    Some(n) if asked.contains(&n) => {}
                    _ => return Err("it covers a repository that was not asked for".into()),
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(repos) = &self.repositories {
            parts.push(format!("repositories={}", repos.join(",")));
        }
        if let Some(perms) = &self.permissions {
            let p: Vec<String> = perms
                .iter()
                .map(|(k, v)| format!("{k}:{}", v.as_str()))
                .collect();
            parts.push(format!("permissions={}", p.join(",")));
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> TokenScope {
        TokenScope {
            repositories: Some(vec!["docs".into()]),
            permissions: Some(BTreeMap::from([("contents".into(), Access::Read)])),
        }
    }

    #[test]
    fn the_body_carries_the_scope() {
        assert_eq!(
            scope().body(),
            json!({"repositories": ["docs"], "permissions": {"contents": "read"}})
        );
    }

    #[test]
    fn an_answer_no_broader_than_asked_passes() {
        let ok = json!({
            "permissions": {"contents": "read"},
            "repository_selection": "selected",
            "repositories": [{"name": "Docs", "full_name": "yanqianyu/Docs"}],
        });
        assert_eq!(scope().check(&ok), Ok(()));
    }

    #[test]
    fn a_broader_or_silent_answer_is_refused() {
        for broader in [
            json!({"permissions": {"contents": "write"}, "repository_selection": "selected", "repositories": ["docs"]}),
            json!({"permissions": {"contents": "read", "keys": "read"}, "repository_selection": "selected", "repositories": ["docs"]}),
            json!({"permissions": {"contents": "admin"}, "repository_selection": "selected", "repositories": ["docs"]}),
            json!({"permissions": {"contents": "read"}, "repository_selection": "ALL"}),
            json!({"permissions": {"contents": "read"}, "repository_selection": "selected", "repositories": ["docs", "secrets"]}),
            json!({"permissions": {"contents": "read"}, "repository_selection": "selected"}),
            json!({"repository_selection": "selected", "repositories": ["docs"]}),
        ] {
            assert!(scope().check(&broader).is_err(), "{broader}");
        }
    }
}
