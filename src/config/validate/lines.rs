//! Which line a key is written on. A YAML value has no positions, and
//! serde_yaml's parser gives one only with an error; so the original text is
//! walked with a visitor that fails on purpose at the wanted key, and the
//! failure carries the key's position.

use super::yaml_errors::{Seg, Step, parse_path};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The line of the key at `field` (a shown path such as
/// `routes[1].match.path_prefix`), or of the nearest enclosing key written.
pub(super) fn line_of_field(text: &str, field: &str) -> Option<usize> {
    let segs = parse_path(field)?;
    (1..=segs.len())
        .rev()
        .find_map(|n| line_of(text, &segs[..n]))
}

pub(super) fn line_of_steps(text: &str, at: &[Step]) -> Option<usize> {
    let segs: Vec<Seg<'_>> = at
        .iter()
        .map(|s| match s {
            Step::Key(k) => Seg::Key(k),
            Step::Index(i) => Seg::Index(*i),
        })
        .collect();
    (1..=segs.len())
        .rev()
        .find_map(|n| line_of(text, &segs[..n]))
}

/// The failure the finder raises on purpose; no document text in it.
const FOUND: &str = "\u{1}found";

fn line_of(text: &str, path: &[Seg<'_>]) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let de = serde_yaml::Deserializer::from_str(text);
    match Finder(path).deserialize(de) {
        // serde_yaml puts the path in front of the message.
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| l.line()),
        _ => None,
    }
}

/// Walks to `path` and fails there: at the key for a key, at the element
/// for an index.
struct Finder<'p, 's>(&'p [Seg<'s>]);

impl<'de> DeserializeSeed<'de> for Finder<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Finder<'_, '_> {
    fn here<E: de::Error>(&self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }

    fn miss<E: de::Error>(&self) -> Result<(), E> {
        Err(E::custom("not found"))
    }
}

impl<'de> Visitor<'de> for Finder<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        if self.0.is_empty() {
            self.here()
        } else {
            self.miss()
        }
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        if self.0.is_empty() {
            self.here()
        } else {
            self.miss()
        }
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        if self.0.is_empty() {
            self.here()
        } else {
            self.miss()
        }
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        if self.0.is_empty() {
            self.here()
        } else {
            self.miss()
        }
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        if self.0.is_empty() {
            self.here()
        } else {
            self.miss()
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.0.is_empty() {
            self.here()
        } else {
            self.miss()
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.0.split_first() else {
            return if self.0.is_empty() {
                self.here()
            } else {
                self.miss()
            };
        };
        let seed = KeyIs {
            want,
            last: rest.is_empty(),
        };
        while let Some(hit) = map.next_key_seed(seed)? {
            if hit {
                return map.next_value_seed(Finder(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        self.miss()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.0.split_first() else {
            return if self.0.is_empty() {
                self.here()
            } else {
                self.miss()
            };
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return self.miss();
            }
        }
        match seq.next_element_seed(Finder(rest))? {
            Some(()) => Ok(()),
            None => self.miss(),
        }
    }
}

/// A mapping key: whether it is the one wanted; fails on it when it is the
/// path's last step, so the failure carries the key's position.
#[derive(Clone, Copy)]
struct KeyIs<'w> {
    want: &'w str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.want, self.last) {
            (true, true) => Err(E::custom(FOUND)),
            (hit, _) => Ok(hit),
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_found_for_nested_keys() {
        let text = "a: 1\nroutes:\n  - name: x\n    match:\n      path_prefix: /a\n  - name: y\n    match: { host: h }\n";
        assert_eq!(super::line_of_field(text, "routes[1].match.host"), Some(7));
        assert_eq!(
            super::line_of_field(text, "routes[0].match.path_prefix"),
            Some(5)
        );
        assert_eq!(
            super::line_of_field(text, "routes[0].match.nothing"),
            Some(4)
        );
        assert_eq!(super::line_of_field(text, "routes[1]"), Some(6));
    }
}
