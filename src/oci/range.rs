//! Single byte ranges for blob `Range` requests (RFC 9110 §14), parsed and resolved against a blob's size.

use std::fmt;

/// Why a `Range` header cannot be served as a single part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not a `bytes` range lasti understands; RFC 9110 says to ignore the header.
    #[error("invalid range")]
    Invalid,
    /// Several ranges at once; lasti does not serve multipart responses.
    #[error("multiple ranges are not supported")]
    MultipleRanges,
    /// The range lies outside the blob; answered with 416.
    #[error("range not satisfiable")]
    Unsatisfiable,
}

/// One requested range, before the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `first-last`, both inclusive, `first <= last`.
    FromTo(u64, u64),
    /// `first-`, to the end of the blob.
    From(u64),
    /// `-n`, the last `n` bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// Parses a `Range` header value holding exactly one `bytes` range.
    ///
    /// Numbers too large for a `u64` saturate: such a range is past any real blob anyway,
    /// so it ends up clamped or unsatisfiable, as RFC 9110 asks.
    pub fn parse(header: &str) -> Result<RangeSpec, RangeError> {
        let (unit, set) = header.split_once('=').ok_or(RangeError::Invalid)?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Err(RangeError::Invalid);
        }
        // RFC 9110 list syntax allows empty elements, so `bytes=0-1,` is still one range.
        let mut ranges = set.split(',').map(str::trim).filter(|r| !r.is_empty());
        let first = ranges.next().ok_or(RangeError::Invalid)?;
        if ranges.next().is_some() {
            return Err(RangeError::MultipleRanges);
        }
        Self::parse_one(first)
    }

    fn parse_one(range: &str) -> Result<RangeSpec, RangeError> {
        let (first, last) = range.split_once('-').ok_or(RangeError::Invalid)?;
        let (first, last) = (first.trim(), last.trim());
        match (first.is_empty(), last.is_empty()) {
            (true, false) => match parse_number(last)? {
                0 => Err(RangeError::Invalid),
                n => Ok(RangeSpec::Suffix(n)),
            },
            (false, true) => Ok(RangeSpec::From(parse_number(first)?)),
            (false, false) => {
                let (a, b) = (parse_number(first)?, parse_number(last)?);
                if a <= b {
                    Ok(RangeSpec::FromTo(a, b))
                } else {
                    Err(RangeError::Invalid)
                }
            }
            (true, true) => Err(RangeError::Invalid),
        }
    }

    /// The bytes this range selects from a blob of `size` bytes (RFC 9110 §14.1.2).
    pub fn resolve(self, size: u64) -> Result<ByteRange, RangeError> {
        let last = size.checked_sub(1).ok_or(RangeError::Unsatisfiable)?;
        let (start, end) = match self {
            RangeSpec::FromTo(a, b) => (a, b.min(last)),
            RangeSpec::From(a) => (a, last),
            RangeSpec::Suffix(0) => return Err(RangeError::Unsatisfiable),
            RangeSpec::Suffix(n) => (size.saturating_sub(n), last),
        };
        if start > last || start > end {
            return Err(RangeError::Unsatisfiable);
        }
        Ok(ByteRange { start, end })
    }
}

/// ASCII digits only (no sign, no spaces inside), saturating at `u64::MAX`.
fn parse_number(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Invalid);
    }
    Ok(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// The header form, `bytes=a-b`, for forwarding a range upstream.
impl fmt::Display for RangeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeSpec::FromTo(a, b) => write!(f, "bytes={a}-{b}"),
            RangeSpec::From(a) => write!(f, "bytes={a}-"),
            RangeSpec::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

/// A resolved range within a blob: both ends inclusive, `start <= end < size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Offset of the first byte served.
    pub start: u64,
    /// Offset of the last byte served (inclusive).
    pub end: u64,
}

impl ByteRange {
    /// How many bytes the range covers, for `Content-Length`; 0 if `end < start`.
    pub fn len(&self) -> u64 {
        match self.end.checked_sub(self.start) {
            Some(span) => span.saturating_add(1),
            None => 0,
        }
    }

    /// True only for a hand-built range with `end < start`; resolved ranges are never empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `Content-Range` value of a 206 response: `bytes start-end/size`.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }
}

/// The `Content-Range` value of a 416 response: `bytes */size`.
pub fn unsatisfied_content_range(size: u64) -> String {
    format!("bytes */{size}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            RangeSpec::parse("bytes=0-499"),
            Ok(RangeSpec::FromTo(0, 499))
        );
        assert_eq!(
            RangeSpec::parse(" Bytes = 5 - 5 "),
            Ok(RangeSpec::FromTo(5, 5))
        );
        assert_eq!(RangeSpec::parse("bytes=9500-"), Ok(RangeSpec::From(9500)));
        assert_eq!(RangeSpec::parse("bytes=-500"), Ok(RangeSpec::Suffix(500)));
        assert_eq!(RangeSpec::parse("bytes=0-1, "), Ok(RangeSpec::FromTo(0, 1)));
        let huge = "bytes=0-99999999999999999999999999";
        assert_eq!(RangeSpec::parse(huge), Ok(RangeSpec::FromTo(0, u64::MAX)));
    }

    #[test]
    fn rejects_what_it_cannot_serve() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-4",
            "bytes=-0",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
        ] {
            assert_eq!(RangeSpec::parse(bad), Err(RangeError::Invalid), "{bad:?}");
        }
        for bad in ["bytes=1 2-3", "bytes=--1", "bytes=0-1-2", "bytes=٣-4"] {
            assert_eq!(RangeSpec::parse(bad), Err(RangeError::Invalid), "{bad:?}");
        }
        assert_eq!(
            RangeSpec::parse("bytes=0-1,5-6"),
            Err(RangeError::MultipleRanges)
        );
    }

    #[test]
    fn resolves_against_the_size() {
        let r = RangeSpec::FromTo(0, 499).resolve(10_000).unwrap();
        assert_eq!((r.start, r.end, r.len()), (0, 499, 500));
        assert_eq!(r.content_range(10_000), "bytes 0-499/10000");
        assert_eq!(
            RangeSpec::FromTo(5, 99).resolve(10),
            Ok(ByteRange { start: 5, end: 9 })
        );
        assert_eq!(
            RangeSpec::From(3).resolve(10),
            Ok(ByteRange { start: 3, end: 9 })
        );
        assert_eq!(
            RangeSpec::Suffix(4).resolve(10),
            Ok(ByteRange { start: 6, end: 9 })
        );
        assert_eq!(
            RangeSpec::Suffix(40).resolve(10),
            Ok(ByteRange { start: 0, end: 9 })
        );
        assert_eq!(
            RangeSpec::From(10).resolve(10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            RangeSpec::Suffix(0).resolve(10),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(
            RangeSpec::Suffix(1).resolve(0),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(unsatisfied_content_range(10), "bytes */10");
    }

    #[test]
    fn extremes_do_not_overflow() {
        let whole = RangeSpec::FromTo(0, u64::MAX).resolve(u64::MAX).unwrap();
        assert_eq!(whole.len(), u64::MAX);
        assert_eq!(
            ByteRange {
                start: 0,
                end: u64::MAX
            }
            .len(),
            u64::MAX
        );
        assert!(ByteRange { start: 2, end: 1 }.is_empty());
        assert_eq!(
            RangeSpec::Suffix(u64::MAX).resolve(u64::MAX).unwrap().start,
            0
        );
        assert_eq!(
            RangeSpec::From(u64::MAX).resolve(u64::MAX),
            Err(RangeError::Unsatisfiable)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = RangeSpec::parse(&s);
        }

        #[test]
        fn near_misses_never_panic(s in "[bytes= ]{0,8}[0-9 ,-]{0,30}") {
            let _ = RangeSpec::parse(&s);
        }

        #[test]
        fn display_round_trips(a in any::<u64>(), b in any::<u64>(), n in 1..=u64::MAX) {
            let (lo, hi) = (a.min(b), a.max(b));
            for spec in [RangeSpec::FromTo(lo, hi), RangeSpec::From(a), RangeSpec::Suffix(n)] {
                prop_assert_eq!(RangeSpec::parse(&spec.to_string()), Ok(spec));
            }
        }

        #[test]
        fn resolved_ranges_fit_the_blob(a in any::<u64>(), b in any::<u64>(), size in any::<u64>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            for spec in [RangeSpec::FromTo(lo, hi), RangeSpec::From(a), RangeSpec::Suffix(b)] {
                if let Ok(r) = spec.resolve(size) {
                    prop_assert!(r.start <= r.end && r.end < size);
                    prop_assert!(!r.is_empty() && r.len() <= size);
                }
            }
        }
    }
}
