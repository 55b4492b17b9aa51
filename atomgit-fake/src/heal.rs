//! The fake's knobs for the self-healing credential tests: tokens revoked
//! early, a clock off the real one, scoped mints and several apps.

use super::FakeAtomGit;

impl FakeAtomGit {
    /// Revokes one issued token early: the API refuses it with 401.
    pub fn revoke_token(&self, token: &str) {
        if let Some(rec) = self.shared.lock().tokens.get_mut(token) {
            rec.revoked = true;
        }
    }

    /// Revokes every token issued so far.
    pub fn revoke_all_tokens(&self) {
        for rec in self.shared.lock().tokens.values_mut() {
            rec.revoked = true;
        }
    }

    /// `true`: every token issued from now on is refused on use, as a
    /// platform that revokes right after minting would.
    pub fn set_revoke_on_issue(&self, on: bool) {
        self.shared.lock().revoke_on_issue = on;
    }

    /// Sets the fake's clock `secs` seconds off the real one (negative:
    /// behind). It judges app JWTs on it, and writes `Date` and `expires_at`
    /// on it.
    pub fn set_clock_offset(&self, secs: i64) {
        self.shared.lock().clock_offset = secs;
    }

    /// The app whose JWT minted `token` (`None`: not an installation token
    /// the fake issued).
    pub fn token_app(&self, token: &str) -> Option<u64> {
        self.shared.lock().tokens.get(token)?.app
    }

    /// The JSON bodies mints were sent with, oldest first (`Null` for none).
    pub fn mint_bodies(&self) -> Vec<serde_json::Value> {
        self.shared.lock().mint_bodies.clone()
    }

    /// `true`: mints ignore the scope they ask for and issue a token for
    /// every repository with every permission, as a platform without
    /// down-scoping would.
    pub fn set_ignore_scope(&self, on: bool) {
        self.shared.lock().ignore_scope = on;
    }

    /// The repositories a scoped token is limited to (`None`: unscoped).
    pub fn token_repositories(&self, token: &str) -> Option<Vec<String>> {
        self.shared.lock().tokens.get(token)?.repositories.clone()
    }

    /// API calls refused because their token was revoked.
    pub fn revoked_tokens_seen(&self) -> usize {
        self.shared.lock().revoked_seen
    }
}
