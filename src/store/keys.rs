//! The Redis key layout. Every key of one credential shares a hash tag (the
//! part in braces), so a credential's grant and lock, or an installation's
//! token and mint lock, land in one slot of a Redis Cluster and one Lua
//! script may touch both.
//!
//! ```text
//! {prefix}{user:NAME}:grant        hash: v (version), g (sealed grant)
//! {prefix}{user:NAME}:lock         refresh lock: owner id, lease in PX
//! {prefix}{inst:SLOT}:token        sealed installation token, PX = its life
//! {prefix}{inst:SLOT}:mint         mint lock: owner id, lease in PX
//! {prefix}{login:STATE}            a pending login's user, PX 10 min
//! {prefix}{link:NONCE}             a used login link, until the link expires
//! {prefix}{quota:CRED}:bucket      the credential's GCRA tat (µs), PX = until idle
//! {prefix}{quota:CRED}:budget      hash: limit, remaining, used, reset,
//!                                  blocked_until (ms); expires at reset
//! ```
//!
//! `CRED` is `inst:APP:ID` or `user:NAME:BINDING` (see
//! `quota/redis_backend.rs`).

/// Builds every key of one fleet (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// Braces would end or start a hash tag early: they are escaped in names.
fn tag_safe(name: &str) -> String {
    name.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

fn tag_unescape(name: &str) -> String {
    name.replace("%7B", "{")
        .replace("%7D", "}")
        .replace("%25", "%")
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn grant(&self, user: &str) -> String {
        format!("{}{{user:{}}}:grant", self.prefix, tag_safe(user))
    }

    pub fn refresh_lock(&self, user: &str) -> String {
        format!("{}{{user:{}}}:lock", self.prefix, tag_safe(user))
    }

    /// `slot` is [`InstallationKey::slot`](super::InstallationKey::slot):
    /// `APP:ID` or `APP:ID:SCOPE` (hex and digits only).
    pub fn installation_token(&self, slot: &str) -> String {
        format!("{}{{inst:{slot}}}:token", self.prefix)
    }

    pub fn mint_lock(&self, slot: &str) -> String {
        format!("{}{{inst:{slot}}}:mint", self.prefix)
    }

    pub fn pending_login(&self, state: &str) -> String {
        format!("{}{{login:{}}}", self.prefix, tag_safe(state))
    }

    pub fn used_link(&self, nonce: &str) -> String {
        format!("{}{{link:{}}}", self.prefix, tag_safe(nonce))
    }

    /// The quota bucket of the credential `name` shares across the fleet.
    pub fn quota_bucket(&self, name: &str) -> String {
        format!("{}{{quota:{}}}:bucket", self.prefix, tag_safe(name))
    }

    /// The quota budget (the learned `x-ratelimit-*`) of credential `name`.
    pub fn quota_budget(&self, name: &str) -> String {
        format!("{}{{quota:{}}}:budget", self.prefix, tag_safe(name))
    }

    /// A `SCAN MATCH` pattern for every grant key of this fleet.
    pub fn grant_pattern(&self) -> String {
        let mut glob = String::new();
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                glob.push('\\');
            }
            glob.push(c);
        }
        glob.push_str("{user:*}:grant");
        glob
    }

    /// The user a grant key names, if it is one of this fleet's.
    pub fn user_of_grant(&self, key: &str) -> Option<String> {
        let name = key
            .strip_prefix(&self.prefix)?
            .strip_prefix("{user:")?
            .strip_suffix("}:grant")?;
        Some(tag_unescape(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_credential_share_a_hash_tag() {
        let k = Keys::new("atomgit-proxy:");
        assert_eq!(k.grant("alice"), "atomgit-proxy:{user:alice}:grant");
        assert_eq!(k.refresh_lock("alice"), "atomgit-proxy:{user:alice}:lock");
        assert_eq!(
            k.installation_token("ab12:7"),
            "atomgit-proxy:{inst:ab12:7}:token"
        );
        assert_eq!(k.mint_lock("ab12:7"), "atomgit-proxy:{inst:ab12:7}:mint");
        assert_eq!(k.user_of_grant(&k.grant("a{b}%")).as_deref(), Some("a{b}%"));
        assert_eq!(k.grant("a{b}"), "atomgit-proxy:{user:a%7Bb%7D}:grant");
        assert_eq!(k.user_of_grant("other:{user:x}:grant"), None);
        assert_eq!(
            k.quota_bucket("inst:ab12:7"),
            "atomgit-proxy:{quota:inst:ab12:7}:bucket"
        );
        assert_eq!(
            k.quota_budget("user:a}b:9f"),
            "atomgit-proxy:{quota:user:a%7Db:9f}:budget"
        );
        assert_eq!(Keys::new("f*:").grant_pattern(), "f\\*:{user:*}:grant");
    }
}
