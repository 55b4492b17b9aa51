//! The owner an `installation: auto` route acts for, read from the path.

/// The owner an `auto` route acts for: `{owner}` in `/repos/{owner}/...`,
/// `/orgs/{owner}/...` or `/users/{owner}/...`, decoded and lowercased.
///
/// The owner picks the installation, so it must be the owner every reader
/// of the path sees. A decoded owner holding a separator, a `;`, a further
/// escape, a control character or blank, or that is `.` or `..`, could be
/// read as something else (`a%2F..` is no owner at all to a platform that
/// decodes), so there is none and the request is refused.
pub fn owner_from_path(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    let kind = segments.next()?;
    if !matches!(kind, "repos" | "orgs" | "users") {
        return None;
    }
    let owner = segments.next().filter(|s| !s.is_empty())?;
    let decoded = percent_encoding::percent_decode_str(owner)
        .decode_utf8()
        .ok()?;
    let ambiguous = |c: char| {
        matches!(c, '/' | '\\' | ';' | '%' | '?' | '#') || c.is_control() || c.is_whitespace()
    };
    if decoded.contains(ambiguous) || matches!(&*decoded, "." | "..") {
        return None;
    }
    Some(decoded.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_comes_from_known_path_shapes() {
        assert_eq!(
            owner_from_path("/repos/Yanqianyu/demo").as_deref(),
            Some("yanqianyu")
        );
        assert_eq!(owner_from_path("/orgs/ORG/repos").as_deref(), Some("org"));
        assert_eq!(owner_from_path("/users/u").as_deref(), Some("u"));
        assert_eq!(owner_from_path("/user/repos"), None);
        assert_eq!(owner_from_path("/repos/"), None);
        assert_eq!(
            owner_from_path("/repos/%61lice/r").as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn an_owner_that_reads_as_something_else_is_none() {
        for path in [
            "/repos/a%2F../b",
            "/repos/a%2f..%2fvictim/r",
            "/orgs/a%5C..",
            "/orgs/victim%3Bx",
            "/users/%2e%2e",
            "/users/%2E",
            "/repos/%2561lice/r",
            "/repos/a%00/r",
            "/repos/a%20b/r",
            "/repos/%c0%ae%c0%ae/r",
        ] {
            assert_eq!(owner_from_path(path), None, "{path}");
        }
    }
}
