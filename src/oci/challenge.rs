//! Upstream `WWW-Authenticate` challenges (RFC 9110 §11), read to learn where and how to fetch a token.

use std::fmt;

use super::http_syntax::Cursor;

/// Longest header value parsed; anything longer is refused rather than scanned.
pub const MAX_CHALLENGE_LEN: usize = 8 * 1024;

/// Why a `WWW-Authenticate` value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The value is longer than [`MAX_CHALLENGE_LEN`] bytes.
    #[error("WWW-Authenticate value is {len} bytes long; the limit is {max}", max = MAX_CHALLENGE_LEN)]
    TooLong {
        /// The rejected value's length in bytes.
        len: usize,
    },
    /// The value breaks the auth-param grammar.
    #[error("malformed WWW-Authenticate value at byte {at}: expected {expected}")]
    Syntax {
        /// Byte offset of the problem.
        at: usize,
        /// What the parser was looking for there.
        expected: &'static str,
    },
}

/// An authentication scheme, matched without regard to case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `Basic`: username and password on every request.
    Basic,
    /// `Bearer`: fetch a token from the realm, the registry norm.
    Bearer,
    /// Any other scheme, as sent.
    Other(String),
}

impl Scheme {
    fn from_token(token: &str) -> Self {
        if token.eq_ignore_ascii_case("basic") {
            Self::Basic
        } else if token.eq_ignore_ascii_case("bearer") {
            Self::Bearer
        } else {
            Self::Other(token.to_owned())
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Basic => f.write_str("Basic"),
            Self::Bearer => f.write_str("Bearer"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// One challenge: a scheme and its parameters, names lowercased, values unquoted.
///
/// A `token68` credential (`Negotiate abc==`) is accepted but not kept: registries never send one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// How to authenticate.
    pub scheme: Scheme,
    /// The auth-params in order, names lowercased; duplicates are kept.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Parses every challenge in one header value; an empty value holds none.
    pub fn parse(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
        if header.len() > MAX_CHALLENGE_LEN {
            return Err(ChallengeError::TooLong { len: header.len() });
        }
        let mut cursor = Cursor::new(header);
        let mut challenges = Vec::new();
        while cursor.skip_separators() {
            challenges.push(challenge(&mut cursor)?);
        }
        Ok(challenges)
    }

    /// The first value of parameter `name`, compared without regard to case.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Where to fetch a token (Bearer) or the protection space (Basic).
    pub fn realm(&self) -> Option<&str> {
        self.param("realm")
    }

    /// The `service` to name in the token request.
    pub fn service(&self) -> Option<&str> {
        self.param("service")
    }

    /// The `scope` the registry wants a token for, e.g. `repository:library/ubuntu:pull`.
    pub fn scope(&self) -> Option<&str> {
        self.param("scope")
    }
}

/// The header form, every value quoted; it parses back to the same challenge.
impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.scheme)?;
        for (i, (name, value)) in self.params.iter().enumerate() {
            let lead = if i == 0 { " " } else { ", " };
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "{lead}{name}=\"{escaped}\"")?;
        }
        Ok(())
    }
}

/// A `ChallengeError::Syntax` at the cursor's position.
fn syntax(cursor: &Cursor<'_>, expected: &'static str) -> ChallengeError {
    ChallengeError::Syntax {
        at: cursor.pos,
        expected,
    }
}

/// `auth-scheme [ 1*SP ( token68 / #auth-param ) ]`.
fn challenge(c: &mut Cursor<'_>) -> Result<Challenge, ChallengeError> {
    let scheme = Scheme::from_token(&c.token().ok_or_else(|| syntax(c, "auth-scheme"))?);
    let mut challenge = Challenge {
        scheme,
        params: Vec::new(),
    };
    let spaced = c.skip_ws() > 0;
    if c.at_item_end() {
        return Ok(challenge);
    }
    if !spaced {
        return Err(syntax(c, "space after auth-scheme"));
    }
    if !skip_token68(c) {
        params(c, &mut challenge.params)?;
    }
    Ok(challenge)
}

/// Consumes a token68 credential if one is there, else leaves the cursor untouched.
fn skip_token68(c: &mut Cursor<'_>) -> bool {
    let start = c.pos;
    let body = c.take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    c.take_while(|b| b == b'=');
    c.skip_ws();
    if body.is_some() && c.at_item_end() {
        return true;
    }
    c.pos = start;
    false
}

/// Reads auth-params until the input ends or the next challenge's scheme begins.
fn params(c: &mut Cursor<'_>, out: &mut Vec<(String, String)>) -> Result<(), ChallengeError> {
    loop {
        let name = c.token().ok_or_else(|| syntax(c, "parameter name"))?;
        c.skip_ws();
        if !c.eat(b'=') {
            return Err(syntax(c, "'=' after parameter name"));
        }
        c.skip_ws();
        out.push((name.to_ascii_lowercase(), value(c)?));
        c.skip_ws();
        if !c.at_item_end() {
            return Err(syntax(c, "',' between parameters"));
        }
        if !c.skip_separators() || !param_ahead(c) {
            return Ok(());
        }
    }
}

/// True if the next item is `name =` rather than a new challenge's scheme.
fn param_ahead(c: &mut Cursor<'_>) -> bool {
    let start = c.pos;
    let is_param = c.token().is_some() && {
        c.skip_ws();
        c.peek() == Some(b'=')
    };
    c.pos = start;
    is_param
}

/// A quoted-string, or (leniently) any run of visible characters up to the next comma.
fn value(c: &mut Cursor<'_>) -> Result<String, ChallengeError> {
    if c.peek() == Some(b'"') {
        return c
            .quoted()
            .ok_or_else(|| syntax(c, "well-formed quoted-string"));
    }
    // Some registries send `realm=https://...` unquoted, which is not a token.
    c.take_while(|b| b > b' ' && b != b',' && b != b'"' && b != 0x7f)
        .ok_or_else(|| syntax(c, "parameter value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HUB: &str = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push repository:x:pull",error="insufficient_scope""#;

    #[test]
    fn reads_a_registry_bearer_challenge() {
        let all = Challenge::parse(HUB).unwrap();
        assert_eq!(all.len(), 1);
        let c = &all[0];
        assert_eq!(c.scheme, Scheme::Bearer);
        assert_eq!(c.realm(), Some("https://auth.docker.io/token"));
        assert_eq!(c.service(), Some("registry.docker.io"));
        assert_eq!(
            c.scope(),
            Some("repository:library/ubuntu:pull,push repository:x:pull")
        );
        assert_eq!(c.param("ERROR"), Some("insufficient_scope"));
        assert_eq!(c.param("missing"), None);
    }

    #[test]
    fn reads_several_challenges_and_odd_spacing() {
        let header = r#"  basic Realm = "x\"y\\" , , BEARER realm=https://a/b?c=d;e , Negotiate abc+/== ,Custom"#;
        let all = Challenge::parse(header).unwrap();
        let schemes: Vec<_> = all.iter().map(|c| c.scheme.to_string()).collect();
        assert_eq!(schemes, ["Basic", "Bearer", "Negotiate", "Custom"]);
        assert_eq!(all[2].scheme, Scheme::Other("Negotiate".into()));
        assert_eq!(all[0].params, [("realm".to_owned(), r#"x"y\"#.to_owned())]);
        assert_eq!(all[1].realm(), Some("https://a/b?c=d;e"));
        assert!(all[2].params.is_empty() && all[3].params.is_empty());
        assert_eq!(Challenge::parse(" , ").unwrap(), []);
    }

    #[test]
    fn rejects_malformed_and_oversized_values() {
        let bad = [
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="x\"#,
            "Bearer a=b c",
            "Bearer a=\"b\" ,=c",
            r#"Bearer realm="a" service="b""#,
            "Bearer realm=\"a\0b\"",
            "Bearer realm=\"a\\\nb\"",
            "=x",
            "Bearer,realm=\"x\"",
            "Bearer\"x\"",
        ];
        for header in bad {
            assert!(Challenge::parse(header).is_err(), "{header:?}");
        }
        let long = format!("Bearer realm=\"{}\"", "a".repeat(MAX_CHALLENGE_LEN));
        let too_long = ChallengeError::TooLong { len: long.len() };
        assert_eq!(Challenge::parse(&long), Err(too_long));
    }

    fn challenge() -> impl Strategy<Value = Challenge> {
        let scheme = prop_oneof![
            Just(Scheme::Basic),
            Just(Scheme::Bearer),
            "[A-Z][a-z]{1,8}".prop_map(Scheme::Other)
        ];
        let param = ("[a-z][a-z0-9_-]{0,8}", "[ -~]{0,30}");
        (scheme, proptest::collection::vec(param, 0..4))
            .prop_map(|(scheme, params)| Challenge { scheme, params })
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = Challenge::parse(&s);
        }

        #[test]
        fn near_misses_never_panic(s in "[A-Za-z =,\"\\\\:/ \t]{0,60}") {
            let _ = Challenge::parse(&s);
        }

        #[test]
        fn display_round_trips(all in proptest::collection::vec(challenge(), 1..4)) {
            let all: Vec<Challenge> = all.into_iter().map(|mut c| {
                if let Scheme::Other(s) = &c.scheme {
                    c.scheme = Scheme::from_token(s);
                }
                c
            }).collect();
            let header = all.iter().map(Challenge::to_string).collect::<Vec<_>>().join(", ");
            prop_assert_eq!(Challenge::parse(&header), Ok(all));
        }
    }
}
