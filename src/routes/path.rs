//! Hostile paths: refusing any path a platform could read as another path.
//!
//! Routes match the raw path, but the platform, and any CDN, gateway or
//! framework in front of it, may decode before it normalises. A path that
//! picks `/orgs/a`'s route and credential must not then be read as
//! `/orgs/b`. What each hop decodes is unknown, so every reading is checked:
//! the raw path, then each further level of percent-decoding (`%252e` is `.`
//! two levels down), with overlong UTF-8 forms of ASCII (`%c0%ae`,
//! `%e0%80%ae`) and IIS's `%u002e` taken as the ASCII they spell. In each
//! reading `/` and `\` separate segments, `;params` are cut off a segment,
//! and a segment that is then `.` or `..` refuses the path. NUL at any level
//! refuses it outright: no platform path holds one and C code stops reading
//! at it, so it is simpler to refuse than to guess where a reader stops.
//!
//! Nothing is rewritten: an accepted path goes upstream byte for byte, so
//! `feature%2Fx` stays one segment for a platform that keeps it so.
//!
//! [`reading`] gives the path as the most decoding reader sees it; route
//! selection compares it with the raw path (see `RouteTable::select`).

use std::borrow::Cow;

/// Levels of decoding examined after the raw path. A path still changing
/// past this is refused: real clients encode once, a name holding a literal
/// `%xx` makes two, and three leaves room for one proxy re-encoding it.
const MAX_DECODES: usize = 3;

/// Why a path is refused. The messages never quote the path: it is the
/// caller's text, and error messages reach logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the path has a `.` or `..` segment, written out or encoded")]
    DotSegment,
    #[error("the path holds an encoded NUL")]
    Nul,
    #[error("the path is percent-encoded more than {MAX_DECODES} levels deep")]
    TooDeep,
}

/// Whether `path` (without its query) is safe to route on as written.
pub fn check(path: &str) -> Result<(), Refusal> {
    let raw = path.as_bytes();
    // Nothing to decode and no other separator: the one reading is the raw
    // one. This is every ordinary request, so no allocation here.
    match plain(raw) {
        Some(Plain {
            dot_segment: true, ..
        }) => Err(Refusal::DotSegment),
        Some(_) => Ok(()),
        None => deepest(raw, scan).map(drop),
    }
}

/// The path as the most decoding reader sees it: fully decoded, `\` and
/// decoded slashes as separators, `;params` cut, empty segments dropped
/// (`//` read as `/`), no trailing slash. Borrowed when that is the path
/// itself, as for every path without `%`, `\`, `;` or `//`.
pub fn reading(path: &str) -> Result<Cow<'_, [u8]>, Refusal> {
    let raw = path.as_bytes();
    if plain(raw).is_some_and(|p| !p.empty_segment) {
        return Ok(Cow::Borrowed(as_written(raw)));
    }
    let decoded = deepest(raw, |_| Ok(()))?;
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for segment in segments(&decoded) {
        let segment = without_params(segment);
        if !segment.is_empty() {
            out.push(b'/');
            out.extend_from_slice(segment);
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(Cow::Owned(out))
}

/// [`check`], then [`reading`] where it differs from the path as written
/// (`None`: it reads as written). One pass for a path with nothing to
/// decode, where the two would each make it; every forwarded request
/// comes here.
pub fn checked_reading(path: &str) -> Result<Option<Vec<u8>>, Refusal> {
    match plain(path.as_bytes()) {
        Some(Plain {
            dot_segment: true, ..
        }) => Err(Refusal::DotSegment),
        Some(Plain {
            empty_segment: false,
            ..
        }) => Ok(None),
        _ => {
            check(path)?;
            Ok(match reading(path)? {
                Cow::Borrowed(_) => None,
                Cow::Owned(reading) => Some(reading),
            })
        }
    }
}

/// The reading of a plain path without empty segments: itself, without a
/// trailing slash.
fn as_written(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b"/")
        .filter(|t| !t.is_empty())
        .unwrap_or(raw)
}

/// What one pass over a path with nothing to decode finds.
struct Plain {
    /// A `.` or `..` segment.
    dot_segment: bool,
    /// An empty segment past the first (`//`).
    empty_segment: bool,
}

/// `None` if any reader could decode, split on or cut at a byte of `raw`;
/// else its segments, looked at in the same pass: every request's path
/// goes through here once ([`checked_reading`]).
fn plain(raw: &[u8]) -> Option<Plain> {
    let mut found = Plain {
        dot_segment: false,
        empty_segment: false,
    };
    // The current segment's length, and how many of its bytes are dots.
    let (mut len, mut dots) = (0usize, 0usize);
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'%' | b'\\' | b';' | 0 | 0x80.. => return None,
            b'/' => {
                found.dot_segment |= len > 0 && len == dots && len <= 2;
                found.empty_segment |= len == 0 && i > 0;
                (len, dots) = (0, 0);
            }
            b'.' => (len, dots) = (len + 1, dots + 1),
            _ => len += 1,
        }
    }
    found.dot_segment |= len > 0 && len == dots && len <= 2;
    Some(found)
}

/// Runs `each` on the raw path and on every decoded level of it, and
/// returns the last level (the one no further decoding changes).
fn deepest(
    raw: &[u8],
    mut each: impl FnMut(&[u8]) -> Result<(), Refusal>,
) -> Result<Vec<u8>, Refusal> {
    let mut level = raw.to_vec();
    each(&level)?;
    for _ in 0..MAX_DECODES {
        let next = decode(&level);
        if next == level {
            return Ok(level);
        }
        each(&next)?;
        level = next;
    }
    if decode(&level) != level {
        return Err(Refusal::TooDeep);
    }
    Ok(level)
}

/// The checks on one reading.
fn scan(level: &[u8]) -> Result<(), Refusal> {
    if level.contains(&0) {
        return Err(Refusal::Nul);
    }
    if segments(level).map(without_params).any(is_dot_segment) {
        return Err(Refusal::DotSegment);
    }
    Ok(())
}

/// Segments as a reader that takes `\` for `/` (Windows, IIS, some
/// frameworks) splits them.
fn segments(level: &[u8]) -> impl Iterator<Item = &[u8]> {
    level.split(|&b| b == b'/' || b == b'\\')
}

/// A segment without its `;params` (Servlet containers and others drop
/// them before resolving `..`: `..;x` is `..` to them).
fn without_params(segment: &[u8]) -> &[u8] {
    segment.split(|&b| b == b';').next().unwrap_or(segment)
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// One level of decoding: `%XX` and `%uXXXX` (below 0x80) to bytes, then
/// overlong UTF-8 forms of ASCII to ASCII. Invalid escapes stay as written.
fn decode(level: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(level.len());
    let mut i = 0;
    while i < level.len() {
        let (byte, len) = escape_at(&level[i..]).unwrap_or((level[i], 1));
        bytes.push(byte);
        i += len;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let (byte, len) = overlong_ascii(&bytes[i..]).unwrap_or((bytes[i], 1));
        out.push(byte);
        i += len;
    }
    out
}

/// The byte an escape at the start of `s` stands for, and its length.
fn escape_at(s: &[u8]) -> Option<(u8, usize)> {
    match s {
        [b'%', b'u' | b'U', a, b, c, d, ..] => {
            let value = [a, b, c, d]
                .iter()
                .try_fold(0u32, |acc, &&h| Some(acc * 16 + u32::from(hex(h)?)))?;
            let byte = u8::try_from(value).ok().filter(u8::is_ascii)?;
            Some((byte, 6))
        }
        [b'%', hi, lo, ..] => Some((hex(*hi)? * 16 + hex(*lo)?, 3)),
        _ => None,
    }
}

fn hex(h: u8) -> Option<u8> {
    (h as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// An overlong UTF-8 encoding of an ASCII byte at the start of `s` (2 to 6
/// bytes long, as lenient decoders still accept): the byte and the length.
fn overlong_ascii(s: &[u8]) -> Option<(u8, usize)> {
    let lead = *s.first()?;
    let len = lead.leading_ones() as usize;
    if !(2..=6).contains(&len) {
        return None;
    }
    let seq = s.get(..len)?;
    let mut value = u32::from(lead & (0x7F >> len));
    for &c in &seq[1..] {
        if c & 0xC0 != 0x80 {
            return None;
        }
        value = (value << 6) | u32::from(c & 0x3F);
    }
    let byte = u8::try_from(value).ok().filter(u8::is_ascii)?;
    Some((byte, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling the contract names, each in place of `..` and
    /// between two other segments.
    const HOSTILE: &[&str] = &[
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        ".%2e",
        "..%2F",
        "%2e%2e%2f",
        "..;",
        "..;x=y",
        "..%3B",
        "..%3bx",
        "..\\",
        "..%5C",
        "%5c..",
        "%252e%252e",
        "%25252e%25252e",
        "%c0%ae%c0%ae",
        "%C0%AE.",
        "%e0%80%ae%e0%80%ae",
        "%f0%80%80%ae.",
        "%u002e%u002e",
        "..%00",
        "%2500",
        "a%00b",
    ];

    #[test]
    fn every_spelling_of_a_dot_segment_is_refused() {
        for seg in HOSTILE {
            for path in [
                format!("/orgs/a/{seg}/b"),
                format!("/orgs/a/{seg}"),
                format!("/{seg}"),
            ] {
                assert!(check(&path).is_err(), "{path} passed");
            }
        }
        for path in [
            "/orgs/a%2F..%2Fb",
            "/orgs/a%2f%2e%2e%2fb",
            "/orgs/a\\..\\b",
            "/orgs/a%5C..%5Cb",
            "/orgs/a%255C..%255Cb",
            "/orgs/a%c0%af..%c0%afb",
            "/orgs/a%c1%9c..",
            "/orgs/a/..;/b",
            "/orgs/a/.;/b",
        ] {
            assert!(check(path).is_err(), "{path} passed");
        }
    }

    #[test]
    fn refusals_say_why_without_the_path() {
        assert_eq!(check("/a/%2e%2e/b"), Err(Refusal::DotSegment));
        assert_eq!(check("/a/b%00"), Err(Refusal::Nul));
        assert_eq!(check("/a/%2525252e"), Err(Refusal::TooDeep));
        let message = Refusal::TooDeep.to_string();
        assert!(!message.contains("/a"), "{message}");
    }

    /// The route's one call gives what the check and the reading give apart.
    #[test]
    fn the_checked_reading_is_the_check_then_the_reading() {
        let paths = [
            "/",
            "//",
            "/a",
            "/a/",
            "/a//b",
            "/orgs/x/repos",
            "/a/./b",
            "/a/..",
            "/%2e%2e/a",
            "/a%2fb",
            "/a%252fb",
            "/a\\b",
            "/a;p/b",
            "/a%00",
            "/%25252525",
            "/caf\u{e9}",
            "/a/.b",
            "/a%2F%2Fb/",
        ];
        for path in paths {
            let apart = check(path).and_then(|()| {
                reading(path).map(|r| match r {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(r) => Some(r),
                })
            });
            assert_eq!(checked_reading(path), apart, "{path:?}");
        }
    }

    /// `plain`'s one pass finds what splitting the path finds.
    #[test]
    fn the_one_pass_agrees_with_splitting() {
        let paths = [
            "",
            "/",
            "//",
            "/a",
            "/a/",
            "/a//b",
            "//a",
            "/a/b//",
            ".",
            "..",
            "...",
            "/.",
            "/..",
            "/...",
            "/./a",
            "/a/../b",
            "/a/.b",
            "/a/b.",
            "/a/.../b",
            "/.a./",
            "a/..",
            "/a%2fb",
            "/a\\b",
            "/a;b",
            "/a\0b",
            "/caf\u{e9}",
        ];
        for path in paths {
            let raw = path.as_bytes();
            let decodable = raw
                .iter()
                .any(|&b| matches!(b, b'%' | b'\\' | b';' | 0) || !b.is_ascii());
            let found = plain(raw);
            assert_eq!(found.is_none(), decodable, "{path:?}");
            if let Some(found) = found {
                let dot = raw.split(|&b| b == b'/').any(is_dot_segment);
                assert_eq!(found.dot_segment, dot, "{path:?}");
                let empty = raw.windows(2).any(|w| w == b"//");
                assert_eq!(found.empty_segment, empty, "{path:?}");
            }
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/orgs/a.b/repos",
            "/repos/x/...",
            "/repos/x/.../y",
            "/repos/o/r/contents/.github/workflows",
            "/orgs/a/.well-known",
            "/repos/o/r/git/refs/heads/feature%2Fx",
            "/repos/o/r/branches/feature%2Fx",
            "/repos/o/r/contents/a%20b.md",
            "/repos/o/r/contents/100%25",
            "/repos/o/r/contents/%2e%2e%2e",
            "/repos/o/r/contents/.%2e.",
            "/repos/o/r/contents/..a",
            "/repos/o/r/contents/a;b",
            "/repos/o/r/contents/%E4%B8%AD",
            "/repos/o/r/contents/中文",
            "/x/%zz",
            "/x/%c0",
        ] {
            assert_eq!(check(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn the_reading_is_what_a_decoding_platform_sees() {
        let read = |p| String::from_utf8(reading(p).unwrap().into_owned()).unwrap();
        assert_eq!(read("/orgs/a/"), "/orgs/a");
        assert_eq!(read("/orgs/a"), "/orgs/a");
        assert_eq!(read("/"), "/");
        assert_eq!(read("/orgs//a"), "/orgs/a");
        assert_eq!(read("/orgs/%61/x"), "/orgs/a/x");
        assert_eq!(read("/orgs/a%2Fx"), "/orgs/a/x");
        assert_eq!(read("/orgs/a%255Cx"), "/orgs/a/x");
        assert_eq!(read("/orgs/a;p=1/x"), "/orgs/a/x");
        assert!(matches!(reading("/a/b"), Ok(Cow::Borrowed(_))));
        assert_eq!(reading("/a/%2525252e"), Err(Refusal::TooDeep));
    }

    #[test]
    fn overlong_forms_decode_to_ascii_only() {
        assert_eq!(overlong_ascii(&[0xC0, 0xAE]), Some((b'.', 2)));
        assert_eq!(overlong_ascii(&[0xC0, 0xAF]), Some((b'/', 2)));
        assert_eq!(overlong_ascii(&[0xC1, 0x9C]), Some((b'\\', 2)));
        assert_eq!(overlong_ascii(&[0xE0, 0x80, 0xAE]), Some((b'.', 3)));
        assert_eq!(overlong_ascii(&[0xF0, 0x80, 0x80, 0xAE]), Some((b'.', 4)));
        // A real two-byte character is not ASCII and stays as it is.
        assert_eq!(overlong_ascii("é".as_bytes()), None);
        assert_eq!(overlong_ascii(&[0xC0]), None);
        assert_eq!(overlong_ascii(&[0xC0, 0x2E]), None);
    }
}
