//! Connect tokens: HS256 JSON Web Tokens with `sub` (the user id) and `exp`.
//!
//! Only what Switchboard needs, written out so it can be read in one sitting: the header must
//! say `"alg":"HS256"` (so `none` and every other algorithm are refused), the signature is
//! checked in constant time before anything of the claims is trusted, `exp` is required and
//! `nbf` honoured when present, both with [`LEEWAY_SECONDS`] of slack for clocks that
//! disagree. The optional `info` claim is an object the application signs about the user
//! (a name, an avatar): presence shows it. Time is an argument (seconds since the Unix epoch),
//! so tests need no clock.
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
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::presence::Meta;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted, in bytes (HS256 wants at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// How far the clocks of the application that signs tokens and of the node may disagree: a
/// token is accepted until `exp` plus this, and from `nbf` minus this.
pub const LEEWAY_SECONDS: u64 = 30;

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
    /// `info` is not a JSON object, or has `phx_` fields.
    #[error("the token's info claim must be a JSON object without phx_ fields")]
    Info,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user (`sub`).
    pub sub: String,
    /// `exp`, in seconds since the Unix epoch.
    pub exp: u64,
    /// The `info` claim.
    pub info: Option<Meta>,
}

impl Verified {
    /// Seconds from `now` until the token stops being accepted (`exp` plus the leeway).
    #[must_use]
    pub fn valid_for(&self, now: u64) -> u64 {
        (self.exp + LEEWAY_SECONDS).saturating_sub(now)
    }
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    info: Option<Box<RawValue>>,
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
        self.sign_with_info(sub, exp, None)
    }

    /// Signs a token for `sub` that expires at `exp`, with `info` as its `info` claim.
    #[must_use]
    pub fn sign_with_info(&self, sub: &str, exp: u64, info: Option<&Meta>) -> String {
        let header = base64url::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            sub: Some(sub.to_owned()),
            exp: Some(exp as f64),
            nbf: None,
            info: info.and_then(|info| RawValue::from_string(info.as_str().to_owned()).ok()),
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
        self.verify_claims(token, now).map(|verified| verified.sub)
    }

    /// Verifies `token` at time `now` (seconds since the Unix epoch): what it says.
    ///
    /// # Errors
    /// [`TokenError`] says why the token is refused.
    pub fn verify_claims(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
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
        let (now, leeway) = (now as f64, LEEWAY_SECONDS as f64);
        let exp = match claims.exp {
            None => return Err(TokenError::NoExpiry),
            Some(exp) if exp + leeway <= now => return Err(TokenError::Expired),
            Some(exp) => exp,
        };
        if claims.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(TokenError::NotYetValid);
        }
        let sub = match claims.sub {
            Some(sub) if !sub.is_empty() => sub,
            _ => return Err(TokenError::NoSubject),
        };
        let info = claims
            .info
            .map(|info| Meta::parse(info.get(), "the token's info claim"))
            .transpose()
            .map_err(|_| TokenError::Info)?;
        Ok(Verified {
            sub,
            // A float exp past u64 saturates; a negative one is long expired (refused above).
            exp: exp as u64,
            info,
        })
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
    fn expired_tokens_are_refused_after_the_leeway() {
        let token = secret().sign("u", NOW);
        assert_eq!(
            secret().verify(&token, NOW),
            Ok("u".to_owned()),
            "within the leeway"
        );
        let verified = secret().verify_claims(&token, NOW - 5).unwrap();
        assert_eq!(verified.valid_for(NOW - 5), LEEWAY_SECONDS + 5);
        assert_eq!(
            secret().verify(&token, NOW + LEEWAY_SECONDS - 1),
            Ok("u".to_owned())
        );
        assert_eq!(
            secret().verify(&token, NOW + LEEWAY_SECONDS),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn the_info_claim_is_an_object_the_application_signs() {
        let info = Meta::parse(r#"{"name":"Ada"}"#, "info").unwrap();
        let token = secret().sign_with_info("ada", NOW + 60, Some(&info));
        let verified = secret().verify_claims(&token, NOW).unwrap();
        assert_eq!(verified.info, Some(info));
        assert_eq!(verified.exp, NOW + 60);
        let key = b"0123456789abcdef0123456789abcdef";
        for bad in [r#"[1]"#, r#""Ada""#, r#"{"phx_ref":"x"}"#] {
            let forged = forge(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sub":"u","exp":1900000000,"info":{bad}}}"#),
                key,
            );
            assert_eq!(
                secret().verify_claims(&forged, NOW),
                Err(TokenError::Info),
                "{bad}"
            );
        }
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
        let almost = forge(
            r#"{"alg":"HS256"}"#,
            &format!(
                r#"{{"sub":"u","exp":1900000000,"nbf":{}}}"#,
                NOW + LEEWAY_SECONDS
            ),
            key,
        );
        assert_eq!(
            secret().verify(&almost, NOW),
            Ok("u".to_owned()),
            "clock skew"
        );
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
