//! The client's `Accept` header, reduced to the media ranges lasti matches a
//! stored manifest's type against. It is never forwarded upstream: the
//! upstream is always asked for every modern type, so that it never
//! converts, and the client's choice is made here.

use super::http_syntax::{is_token, split_outside_quotes};
use super::media_type::essence;

/// Most distinct media ranges kept from one request; real clients send fewer than ten.
pub const MAX_ACCEPT_ENTRIES: usize = 64;

/// The media ranges a client will take, lowercased, without parameters, `q=0` ones dropped.
///
/// An empty list (no `Accept` header, or none usable) means the client stated
/// no preference, which RFC 9110 reads as "any type": such a client gets
/// whatever the upstream holds. `*/*` means the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptList {
    entries: Vec<String>,
}

impl AcceptList {
    /// Parses every `Accept` header line; malformed entries are skipped, not fatal.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> AcceptList {
        let mut entries: Vec<String> = Vec::new();
        for value in values {
            for item in split_outside_quotes(value, b',') {
                if entries.len() == MAX_ACCEPT_ENTRIES {
                    return AcceptList { entries };
                }
                if let Some(range) = parse_item(item) {
                    if !entries.contains(&range) {
                        entries.push(range);
                    }
                }
            }
        }
        AcceptList { entries }
    }

    /// True when the client sent no usable `Accept` entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The media ranges, in the client's order.
    pub fn entries(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(String::as_str)
    }

    /// True when a response of `media_type` (parameters ignored) satisfies the client.
    pub fn allows(&self, media_type: &str) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        let mt = essence(media_type).to_ascii_lowercase();
        let major = mt.split_once('/').map_or(mt.as_str(), |(major, _)| major);
        self.entries
            .iter()
            .any(|range| match range.strip_suffix("/*") {
                Some("*") => true,
                Some(range_major) => range_major == major,
                None => *range == mt,
            })
    }
}

/// One `type/subtype;params` item as a lowercase media range, or `None` if unusable or `q=0`.
fn parse_item(item: &str) -> Option<String> {
    let mut parts = split_outside_quotes(item, b';');
    let range = parts.next()?.trim();
    let (major, minor) = range.split_once('/')?;
    if !is_token(major) || !is_token(minor) || (major == "*" && minor != "*") {
        return None;
    }
    if parts.any(is_zero_quality) {
        return None;
    }
    Some(range.to_ascii_lowercase())
}

/// True for a `q=0`, `q=0.0`, ... parameter, which RFC 9110 calls "not acceptable".
fn is_zero_quality(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    let zero = match value.trim().strip_prefix('0') {
        Some("") => true,
        Some(fraction) => fraction
            .strip_prefix('.')
            .is_some_and(|z| z.len() <= 3 && z.bytes().all(|b| b == b'0')),
        None => false,
    };
    zero && name.trim().eq_ignore_ascii_case("q")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media_type::{DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};
    use proptest::prelude::*;

    #[test]
    fn empty_allows_anything() {
        let list = AcceptList::parse([]);
        assert!(list.is_empty());
        assert!(list.allows("anything/at-all"));
        assert!(list.allows(DOCKER_MANIFEST_V2));
        assert!(AcceptList::parse(["", " , ,", "garbage", "*/json"]).is_empty());
    }

    #[test]
    fn merges_lines_strips_parameters_and_drops_q_zero() {
        let list = AcceptList::parse([
            "Application/VND.OCI.image.manifest.v1+json; q=0.9, text/plain;q=0",
            "application/vnd.docker.distribution.manifest.v2+json ;charset=\"a,b\"",
            "application/json;q=0.000, image/png;q=0.5, application/vnd.oci.image.manifest.v1+json",
        ]);
        let want = [OCI_MANIFEST, DOCKER_MANIFEST_V2, "image/png"];
        assert_eq!(list.entries().collect::<Vec<_>>(), want);
        assert!(list.allows(&format!("{OCI_MANIFEST}; charset=utf-8")));
        assert!(!list.allows("text/plain"));
        assert!(!list.allows("application/json"));
        assert!(!list.allows(OCI_INDEX));
    }

    #[test]
    fn wildcards() {
        assert!(AcceptList::parse(["*/*"]).allows(OCI_INDEX));
        let app = AcceptList::parse(["application/*"]);
        assert!(app.allows(OCI_INDEX));
        assert!(!app.allows("text/plain"));
        assert!(!AcceptList::parse(["text/*"]).allows(DOCKER_MANIFEST_V2));
    }

    #[test]
    fn zero_quality_forms() {
        for zero in ["q=0", " Q = 0.0 ", "q=0.", "q=0.000"] {
            assert!(is_zero_quality(zero), "{zero:?}");
        }
        for nonzero in ["q=1", "q=0.001", "q=", "x=0", "q=0.0000", "q", "q=00"] {
            assert!(!is_zero_quality(nonzero), "{nonzero:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(lines in proptest::collection::vec(any::<String>(), 0..4), mt in any::<String>()) {
            let list = AcceptList::parse(lines.iter().map(String::as_str));
            let _ = list.allows(&mt);
            prop_assert!(list.entries().count() <= MAX_ACCEPT_ENTRIES);
        }

        #[test]
        fn listed_types_are_allowed(types in proptest::collection::vec("[a-z]{1,8}/[a-z0-9.+-]{1,20}", 1..6)) {
            let joined = types.join(", ");
            let list = AcceptList::parse([joined.as_str()]);
            prop_assert_eq!(&list, &AcceptList::parse(types.iter().map(String::as_str)));
            for t in &types {
                prop_assert!(list.allows(t));
            }
        }
    }
}
