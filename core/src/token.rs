//! Connect tokens: HS256 JSON Web Tokens with `sub` (the user id) and `exp`.
//!
//! Only what Switchboard needs, written out so it can be read in one sitting: the header must
//! say `"alg":"HS256"` (so `none` and every other algorithm are refused), the signature is
//! checked in constant time before anything of the claims is trusted, `exp` is required and
//! `nbf` honoured when present. Time is an argument (seconds since the Unix epoch), so tests
//! need no clock.
//!
//! The node's WebSocket upgrade and the WebAssembly fake server
//! ([`LocalServer`](crate::local::LocalServer)) both check tokens with this code, so a token
//! one accepts the other accepts. It is plain Rust (HMAC-SHA-256 from the pure-Rust `hmac` and
//! `sha2` crates) and builds for `wasm32-unknown-unknown`.
//!
//! The WebAssembly module's size budget shaped two choices: base64url is written out below
//! (the `base64` crate's general engine costs the module about 6 KB; a property test checks
//! that both accept and produce the same text), and claims are parsed from text, sharing the
//! codec's JSON reader instead of adding a second one for bytes.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted, in bytes (HS256 wants at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a token was refused. The node logs the reason and tells the client only that the
/// token was not accepted (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts, or parts that are not JSON.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm than HS256 (including `none`).
    #[error("algorithm {0:?} is not accepted; only HS256")]
    Algorithm(String),
    /// The signature does not match the secret.
    #[error("bad signature")]
    Signature,
    /// `exp` is missing.
    #[error("the token has no exp claim")]
    NoExpiry,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `sub` is missing or empty.
    #[error("the token has no sub claim")]
    NoSubject,
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<f64>,
}

/// The secret tokens are signed with.
#[derive(Clone)]
pub struct TokenSecret(Vec<u8>);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

impl TokenSecret {
    /// A secret from its text.
    ///
    /// # Errors
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the token secret must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }

    fn mac(&self) -> HmacSha256 {
        // unwrap: HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// Signs a token for `sub` that expires at `exp` (seconds since the Unix epoch).
    #[must_use]
    pub fn sign(&self, sub: &str, exp: u64) -> String {
        let header = base64url::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            sub: Some(sub.to_owned()),
            exp: Some(exp as f64),
            nbf: None,
        };
        // Serialising a struct of strings and numbers cannot fail.
        let claims = base64url::encode(
            serde_json::to_string(&claims)
                .unwrap_or_default()
                .as_bytes(),
        );
        let signing_input = format!("{header}.{claims}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = base64url::encode(&mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Verifies `token` at time `now` (seconds since the Unix epoch) and returns its `sub`.
    ///
    /// # Errors
    /// [`TokenError`] says why the token is refused.
    pub fn verify(&self, token: &str, now: u64) -> Result<String, TokenError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, claims) = signing_input
            .split_once('.')
            .filter(|(_, claims)| !claims.contains('.'))
            .ok_or(TokenError::Malformed)?;
        let header: Header = decode_json(header)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let signature = base64url::decode(signature).ok_or(TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = decode_json(claims)?;
        let now = now as f64;
        match claims.exp {
            None => return Err(TokenError::NoExpiry),
            Some(exp) if exp <= now => return Err(TokenError::Expired),
            Some(_) => {}
        }
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(TokenError::NotYetValid);
        }
        match claims.sub {
            Some(sub) if !sub.is_empty() => Ok(sub),
            _ => Err(TokenError::NoSubject),
        }
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenError> {
    let bytes = base64url::decode(part).ok_or(TokenError::Malformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::Malformed)?;
    serde_json::from_str(text).map_err(|_| TokenError::Malformed)
}

/// base64url without padding (RFC 4648 §5), as JSON Web Tokens write their parts. Decoding
/// accepts exactly what the `base64` crate's `URL_SAFE_NO_PAD` engine accepts (a property test
/// compares them): only the 64 letters of the alphabet, no padding, no length of the form
/// 4n + 1, and no set bits after the last byte.
mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub(super) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let group = chunk.iter().enumerate().fold(0_u32, |group, (i, &byte)| {
                group | u32::from(byte) << (16 - 8 * i)
            });
            // n bytes make n + 1 letters.
            for i in 0..=chunk.len() {
                let sextet = (group >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[sextet as usize]));
            }
        }
        out
    }

    pub(super) fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if text.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
        for chunk in text.chunks(4) {
            let mut group = 0_u32;
            for (i, &letter) in chunk.iter().enumerate() {
                group |= u32::from(value(letter)?) << (18 - 6 * i);
            }
            // n + 1 letters make n bytes; the bits after them must be zero.
            let bytes = chunk.len() - 1;
            if group & (0x00FF_FFFF >> (8 * bytes)) != 0 {
                return None;
            }
            out.extend((0..bytes).map(|i| (group >> (16 - 8 * i)) as u8));
        }
        Some(out)
    }

    const fn value(letter: u8) -> Option<u8> {
        match letter {
            b'A'..=b'Z' => Some(letter - b'A'),
            b'a'..=b'z' => Some(letter - b'a' + 26),
            b'0'..=b'9' => Some(letter - b'0' + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret() -> TokenSecret {
        TokenSecret::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn forge(header: &str, claims: &str, key: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(input.as_bytes());
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn a_signed_token_verifies_to_its_subject() {
        let token = secret().sign("user-42", NOW + 60);
        assert_eq!(secret().verify(&token, NOW), Ok("user-42".to_owned()));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let token = secret().sign("u", NOW);
        assert_eq!(secret().verify(&token, NOW), Err(TokenError::Expired));
        assert_eq!(secret().verify(&token, NOW + 1), Err(TokenError::Expired));
    }

    #[test]
    fn another_secret_is_a_bad_signature() {
        let token = TokenSecret::new(&"x".repeat(32))
            .unwrap()
            .sign("u", NOW + 60);
        assert_eq!(secret().verify(&token, NOW), Err(TokenError::Signature));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let claims = r#"{"sub":"u","exp":1900000000}"#;
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        );
        assert_eq!(
            secret().verify(&none, NOW),
            Err(TokenError::Algorithm("none".into()))
        );
        let hs512 = forge(
            r#"{"alg":"HS512"}"#,
            claims,
            b"0123456789abcdef0123456789abcdef",
        );
        assert_eq!(
            secret().verify(&hs512, NOW),
            Err(TokenError::Algorithm("HS512".into()))
        );
    }

    #[test]
    fn claims_are_required() {
        let key = b"0123456789abcdef0123456789abcdef";
        let no_exp = forge(r#"{"alg":"HS256"}"#, r#"{"sub":"u"}"#, key);
        assert_eq!(secret().verify(&no_exp, NOW), Err(TokenError::NoExpiry));
        let no_sub = forge(r#"{"alg":"HS256"}"#, r#"{"exp":1900000000}"#, key);
        assert_eq!(secret().verify(&no_sub, NOW), Err(TokenError::NoSubject));
        let later = forge(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"u","exp":1900000000,"nbf":1850000000}"#,
            key,
        );
        assert_eq!(secret().verify(&later, NOW), Err(TokenError::NotYetValid));
    }

    #[test]
    fn tampered_claims_fail_the_signature() {
        let token = secret().sign("alice", NOW + 60);
        let parts: Vec<&str> = token.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(r#"{"sub":"bob","exp":1900000000}"#);
        let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(secret().verify(&tampered, NOW), Err(TokenError::Signature));
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.!!"] {
            assert_eq!(
                secret().verify(token, NOW),
                Err(TokenError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenSecret::new("short").is_err());
    }

    #[test]
    fn signing_writes_what_the_node_always_wrote() {
        // Computed independently (Python's hmac, hashlib and base64) from the claims the
        // node's serde serialisation writes: {"sub":"user-42","exp":1800000060.0}.
        assert_eq!(
            secret().sign("user-42", NOW + 60),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjoxODAwMDAwMDYwLjB9.\
             a0yWSin9ithrfV6se7a5dL808EIR6FbHiO3SPUmy3tA"
        );
    }

    #[test]
    fn base64url_matches_the_base64_crate_at_the_edges() {
        for text in [
            "", "A", "AA", "AB", "AAA", "AAB", "AAAA", "A=", "AA==", "+/", "-_", "a.b",
        ] {
            assert_eq!(
                base64url::decode(text),
                URL_SAFE_NO_PAD.decode(text).ok(),
                "{text:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn base64url_encodes_as_the_base64_crate(bytes in proptest::collection::vec(any::<u8>(), 0..70)) {
            let encoded = base64url::encode(&bytes);
            prop_assert_eq!(&encoded, &URL_SAFE_NO_PAD.encode(&bytes));
            prop_assert_eq!(base64url::decode(&encoded), Some(bytes));
        }

        #[test]
        fn base64url_decodes_as_the_base64_crate(text in "[A-Za-z0-9_=+/.-]{0,20}") {
            prop_assert_eq!(base64url::decode(&text), URL_SAFE_NO_PAD.decode(&text).ok());
        }

        #[test]
        fn base64url_refuses_trailing_bits_as_the_base64_crate(text in "[A-Za-z0-9_-]{0,20}") {
            prop_assert_eq!(base64url::decode(&text), URL_SAFE_NO_PAD.decode(&text).ok());
        }
    }
}
