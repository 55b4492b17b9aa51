//! Property tests of path checking and route selection: generated paths,
//! built from ordinary names and every spelling of `.`, `/`, `\`, `;` and
//! NUL the contract lists, checked against a small reference decoder written
//! here independently of `src/routes/path.rs`.
//!
//! Runs 2000 cases per property unless `PROPTEST_CASES` says otherwise.

use atomgit_proxy::routes::path::{self, Refusal};
use atomgit_proxy::routes::{InstallationSelector, Miss, Route, RouteCredential, RouteTable};
use http::Method;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => default.cases,
        None => 2000,
    };
    ProptestConfig { cases, ..default }
}

/// Pieces paths are made of. Single characters let escapes form across
/// pieces (`%` `2` `e`), so the decoder meets spellings no list names.
const ATOMS: &[&str] = &[
    "a",
    "b",
    "e",
    "c",
    "f",
    "2",
    "5",
    "u",
    "-",
    "_",
    ".",
    "..",
    "/",
    "\\",
    ";",
    "%",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "%3b",
    "%3B",
    "%25",
    "%252e",
    "%00",
    "%c0%ae",
    "%c0%af",
    "%c1%9c",
    "%e0%80%ae",
    "%u002e",
    "%61",
];

/// A dot segment in each spelling the contract names; each, standing as a
/// segment of an otherwise safe path, must be refused.
const HOSTILE: &[&str] = &[
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "..%2F",
    "%2e%2e%2f",
    "..;",
    "..;x",
    "..%3B",
    "..\\",
    "..%5C",
    "%5C..",
    "%252e%252e",
    "%25252e",
    "%c0%ae%c0%ae",
    "%c0%ae",
    "%e0%80%ae%e0%80%ae",
    "%u002e%u002e",
    "..%00",
    "%00",
];

fn any_path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ATOMS), 0..14)
        .prop_map(|atoms| format!("/{}", atoms.concat()))
}

/// A name as the platform has them: never only dots.
fn safe_segment() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,10}".prop_filter("not a dot segment", |s| s != "." && s != "..")
}

/// Safe segments, some of them two names joined by an encoded slash.
fn safe_segments() -> impl Strategy<Value = Vec<String>> {
    let segment = prop_oneof![
        3 => safe_segment(),
        1 => (safe_segment(), safe_segment()).prop_map(|(a, b)| format!("{a}%2F{b}")),
    ];
    prop::collection::vec(segment, 0..6)
}

/// One level of the reference decoder: `%uXXXX` for the code points the
/// generator writes, `%XX`, then the overlong forms the generator writes.
fn decode_once(level: &[u8]) -> Vec<u8> {
    let level = replace(level, b"%u002e", b".");
    let bytes: Vec<u8> = percent_encoding::percent_decode(&level).collect();
    let bytes = replace(&bytes, &[0xE0, 0x80, 0xAE], b".");
    let bytes = replace(&bytes, &[0xC0, 0xAE], b".");
    let bytes = replace(&bytes, &[0xC0, 0xAF], b"/");
    replace(&bytes, &[0xC1, 0x9C], b"\\")
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// The raw path and every decoded level of it, to a fixed point.
fn levels(path: &str) -> Vec<Vec<u8>> {
    let mut levels = vec![path.as_bytes().to_vec()];
    for _ in 0..16 {
        let next = decode_once(levels.last().expect("one level at least"));
        if &next == levels.last().expect("one level at least") {
            break;
        }
        levels.push(next);
    }
    levels
}

/// Segments of one level, split on `/` and `\`, each without `;params`.
fn segments(level: &[u8]) -> Vec<&[u8]> {
    level
        .split(|&b| b == b'/' || b == b'\\')
        .map(|s| s.split(|&b| b == b';').next().unwrap_or(s))
        .collect()
}

/// The deepest reading's non-empty segments.
fn read_segments(path: &str) -> Vec<Vec<u8>> {
    let deepest = levels(path).pop().expect("one level at least");
    segments(&deepest)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn route(n: usize, prefix: String) -> Route {
    Route {
        name: format!("r{n}").into(),
        prefix,
        methods: None,
        host: None,
        clients: None,
        strip_prefix: false,
        credential: RouteCredential::Installation(InstallationSelector::Id(n as u64)),
        api_version: None,
        scope: None,
        app: "default".into(),
    }
}

/// Route prefixes from a small vocabulary, so paths often hit them.
fn prefixes() -> impl Strategy<Value = Vec<String>> {
    let word = prop::sample::select(&["orgs", "repos", "a", "ab", "b"][..]);
    let prefix = prop_oneof![
        1 => Just("/".to_owned()),
        6 => prop::collection::vec(word, 1..4).prop_map(|w| format!("/{}", w.join("/"))),
    ];
    prop::collection::vec(prefix, 1..5)
}

/// Paths over the same vocabulary, with spellings that decode into it.
fn routed_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(
        &[
            "orgs", "repos", "a", "ab", "b", "/", "/", "/", "%61", "%2F", "%2f", "\\", "%5C", ";x",
            "%3B", "//", "%2561", "x",
        ][..],
    );
    prop::collection::vec(piece, 0..10).prop_map(|p| format!("/{}", p.concat()))
}

/// Whether `prefix` is `/` or whole leading segments of `segs`.
fn under(prefix: &str, segs: &[&[u8]]) -> bool {
    let want: Vec<&[u8]> = prefix
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::as_bytes)
        .collect();
    segs.len() >= want.len() && segs[..want.len()] == want[..]
}

proptest! {
    #![proptest_config(config())]

    /// Soundness: an accepted path has, at no level of decoding, a `.` or
    /// `..` segment or a NUL.
    #[test]
    fn accepted_paths_have_no_dot_segment_in_any_reading(path in any_path()) {
        if path::check(&path).is_ok() {
            for level in levels(&path) {
                prop_assert!(!level.contains(&0), "NUL in {path}");
                for seg in segments(&level) {
                    prop_assert!(seg != b"." && seg != b"..", "dot segment in {path}");
                }
            }
        }
    }

    /// Ordinary names (dots inside, `...`, encoded slashes between names)
    /// always pass.
    #[test]
    fn safe_paths_are_accepted(segs in safe_segments(), trailing in any::<bool>()) {
        let mut path = format!("/{}", segs.join("/"));
        if trailing && !segs.is_empty() {
            path.push('/');
        }
        prop_assert_eq!(path::check(&path), Ok(()), "{}", path);
    }

    /// Any listed spelling of a dot segment, anywhere in a safe path, is
    /// refused.
    #[test]
    fn a_hostile_segment_anywhere_is_refused(
        segs in safe_segments(),
        at in any::<prop::sample::Index>(),
        hostile in prop::sample::select(HOSTILE),
    ) {
        let mut segs = segs;
        segs.insert(at.index(segs.len() + 1), hostile.to_owned());
        let path = format!("/{}", segs.join("/"));
        prop_assert!(path::check(&path).is_err(), "{} passed", path);
    }

    /// Route selection: the route taken is the first whose prefix is whole
    /// leading segments of the path as written, and also the first for the
    /// path as a decoding platform reads it; paths that read as written are
    /// never refused as ambiguous.
    #[test]
    fn the_route_taken_is_the_route_the_platform_reads(
        prefixes in prefixes(),
        path in routed_path(),
    ) {
        let table = RouteTable::new(
            prefixes.into_iter().enumerate().map(|(n, p)| route(n, p)).collect(),
        );
        let raw: Vec<&[u8]> = path.as_bytes().split(|&b| b == b'/').filter(|s| !s.is_empty()).collect();
        let raw_first = table.iter().find(|r| {
            r.prefix == "/" || path == r.prefix || path.starts_with(&format!("{}/", r.prefix))
        });
        let read = read_segments(&path);
        let read: Vec<&[u8]> = read.iter().map(Vec::as_slice).collect();
        let read_first = table.iter().find(|r| under(&r.prefix, &read));
        match table.select(&Method::GET, &[], &path, None, None) {
            Ok(chosen) => {
                prop_assert!(under(&chosen.prefix, &raw), "{} under {}", path, chosen.prefix);
                prop_assert_eq!(Some(&*chosen.name), raw_first.map(|r| &*r.name));
                prop_assert_eq!(Some(&*chosen.name), read_first.map(|r| &*r.name));
            }
            Err(Miss::NoRoute) => prop_assert!(raw_first.is_none()),
            Err(Miss::AmbiguousPath) => {
                let plain = !path.contains(['%', '\\', ';']) && !path.contains("//");
                prop_assert!(!plain, "{} refused though it reads as written", path);
                let read_name = read_first.map(|r| &*r.name);
                let too_deep = matches!(path::reading(&path), Err(Refusal::TooDeep));
                prop_assert!(too_deep || raw_first.map(|r| &*r.name) != read_name);
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
