//! RFC 9110 lexical pieces shared by the header parsers here: tokens, quoted-strings and comma lists.

/// True for an RFC 9110 `tchar`, the characters a token is made of.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True for a non-empty run of `tchar`s.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// True for what a quoted-string may hold unescaped: tab, visible ASCII, space, obs-text.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..) && b != 0x7f
}

/// Splits on `sep` except inside a quoted-string, so `x="a,b"` stays whole.
pub(super) fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in current.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                // `sep` is ASCII, so `i` and `i + 1` are char boundaries.
                _ if b == sep && !quoted => {
                    rest = Some(&current[i + 1..]);
                    return Some(&current[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

/// A byte cursor over one header value. Methods that fail leave `pos` at the fault,
/// so a caller can say where; methods that only look ahead restore it themselves.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    /// Offset of the next unread byte.
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `s`.
    pub(super) fn new(s: &'a str) -> Self {
        Self {
            bytes: s.as_bytes(),
            pos: 0,
        }
    }

    /// The next byte, unread.
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `b` if it is next.
    pub(super) fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        self.pos += usize::from(found);
        found
    }

    /// Consumes the longest run of bytes matching `pred`; `None` if there is none.
    pub(super) fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        let run = &self.bytes[start..self.pos];
        (!run.is_empty()).then(|| String::from_utf8_lossy(run).into_owned())
    }

    /// Consumes a token.
    pub(super) fn token(&mut self) -> Option<String> {
        self.take_while(is_tchar)
    }

    /// Skips spaces and tabs, returning how many.
    pub(super) fn skip_ws(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Skips whitespace and empty list elements; true if anything is left.
    pub(super) fn skip_separators(&mut self) -> bool {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
        self.pos < self.bytes.len()
    }

    /// True at the end of the input or of a list element.
    pub(super) fn at_item_end(&self) -> bool {
        matches!(self.peek(), None | Some(b','))
    }

    /// Consumes a quoted-string and returns it unescaped; `None` if there is none or it is malformed.
    pub(super) fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    self.pos += 1;
                    out.push(
                        self.peek()
                            .filter(|&e| is_qdtext(e) || e == b'"' || e == b'\\')?,
                    );
                }
                b if is_qdtext(b) => out.push(b),
                _ => return None,
            }
            self.pos += 1;
        }
        self.pos += 1;
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens() {
        assert!(is_token("application") && is_token("*") && is_token("a.b+c"));
        assert!(!is_token("") && !is_token("a b") && !is_token("a/b") && !is_token("é"));
    }

    #[test]
    fn splits_outside_quotes_only() {
        let parts: Vec<_> = split_outside_quotes(r#"a, b;x="c,\"d", e"#, b',').collect();
        assert_eq!(parts, ["a", r#" b;x="c,\"d""#, " e"]);
        assert_eq!(split_outside_quotes("", b',').collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn quoted_strings() {
        let mut c = Cursor::new(r#""a\"b\\c" rest"#);
        assert_eq!(c.quoted().as_deref(), Some(r#"a"b\c"#));
        assert_eq!(c.pos, 9);
        for bad in ["\"open", "\"a\\", "\"a\0\"", "\"a\\\n\"", "noquote"] {
            assert_eq!(Cursor::new(bad).quoted(), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn split_rejoins_to_the_input(s in any::<String>()) {
            let parts: Vec<_> = split_outside_quotes(&s, b',').collect();
            prop_assert_eq!(parts.join(","), s);
        }

        #[test]
        fn quoting_round_trips(s in "[\t -~\u{80}-\u{10ffff}]{0,40}") {
            let quoted = format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
            let mut cursor = Cursor::new(&quoted);
            prop_assert_eq!(cursor.quoted(), Some(s));
            prop_assert_eq!(cursor.pos, quoted.len());
        }

        #[test]
        fn cursor_never_panics(s in any::<String>()) {
            let mut c = Cursor::new(&s);
            while c.skip_separators() {
                if c.quoted().is_none() && c.token().is_none() && c.take_while(|b| b > b' ').is_none() {
                    c.pos += 1;
                }
            }
        }
    }
}
