//! JSON Web Tokens (RFC 7519) in the compact JWS form (RFC 7515) with HS256 only: the one
//! algorithm the API issues and accepts, written over `hmac` and `sha2` (which the webhook
//! signatures use too) instead of a JWT crate whose RSA and elliptic-curve code we would never
//! run.
//!
//! Keys rotate ([`KeyRing`]): the current key signs, older ones still verify, and each token
//! names its key in the header's `kid`.
//!
//! Verification checks, in order: three base64url parts without padding; a header that is a
//! JSON object with `"alg": "HS256"` and no `crit`; the HMAC in constant time with the key the
//! `kid` names; only then is the payload parsed. Claims are the caller's business
//! ([`super::TokenKeys::verify`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// An HS256 key: signs and verifies, and names itself in the header's `kid`.
#[derive(Clone)]
pub(crate) struct Hs256Key {
    mac: HmacSha256,
    /// `kid`: 16 hex digits of an HMAC of a fixed label under the key (names the key, reveals
    /// nothing of it).
    kid: String,
    /// `{"alg":"HS256","typ":"JWT","kid":"..."}`, base64url.
    header: String,
}

impl Hs256Key {
    /// A key over the bytes of `secret` (HMAC takes a key of any length).
    pub(crate) fn new(secret: &[u8]) -> Self {
        // `new_from_slice` fails only for fixed-length keys, which HMAC has not.
        let mac = match HmacSha256::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        let mut label = mac.clone();
        label.update(b"orch-http jwt key id");
        let kid = hex::encode(&label.finalize().into_bytes()[..8]);
        let header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
        Hs256Key { mac, kid, header }
    }

    fn signature(&self, signing_input: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac
    }

    /// `header.payload.signature` for `claims`.
    pub(crate) fn sign<C: Serialize>(&self, claims: &C) -> Result<String, serde_json::Error> {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let signing_input = format!("{}.{payload}", self.header);
        let signature =
            URL_SAFE_NO_PAD.encode(self.signature(&signing_input).finalize().into_bytes());
        Ok(format!("{signing_input}.{signature}"))
    }

    /// The claims of `token` if it is an HS256 token signed with this key. The error says what
    /// is wrong, for a person.
    #[cfg(test)]
    pub(crate) fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, String> {
        KeyRing {
            keys: vec![self.clone()],
        }
        .verify(token)
    }
}

/// The keys tokens are signed and verified with: the first signs, every one verifies (key
/// rotation). A token whose header names a `kid` is checked with that key only; a token
/// without one (issued before keys were named) with each key in turn.
#[derive(Clone)]
pub(crate) struct KeyRing {
    keys: Vec<Hs256Key>,
}

impl KeyRing {
    /// `signing` signs; it and `previous` verify.
    pub(crate) fn new<'a>(signing: &[u8], previous: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut keys = vec![Hs256Key::new(signing)];
        keys.extend(previous.into_iter().map(Hs256Key::new));
        KeyRing { keys }
    }

    /// Signs with the current key.
    pub(crate) fn sign<C: Serialize>(&self, claims: &C) -> Result<String, serde_json::Error> {
        self.keys[0].sign(claims)
    }

    /// The claims of `token` if it is an HS256 token signed with one of the keys.
    pub(crate) fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS (header.payload.signature)".to_owned());
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header: Map<String, Value> = decode_json(header, "header")?;
        match header.get("alg").and_then(Value::as_str) {
            Some("HS256") => {}
            Some(other) => return Err(format!("algorithm {other:?} is not allowed (HS256 only)")),
            None => return Err("header has no algorithm".to_owned()),
        }
        if header.contains_key("crit") {
            return Err("critical header extensions are not supported".to_owned());
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "signature is not base64url".to_owned())?;
        let candidates: Vec<&Hs256Key> = match header.get("kid") {
            None => self.keys.iter().collect(),
            Some(Value::String(kid)) => self.keys.iter().filter(|k| &k.kid == kid).collect(),
            Some(_) => return Err("kid is not a string".to_owned()),
        };
        if candidates.is_empty() {
            return Err("signed with a key that is no longer accepted (unknown kid)".to_owned());
        }
        // Every candidate is checked, so the time taken does not say which one matched.
        let mut valid = false;
        for key in candidates {
            valid |= key
                .signature(signing_input)
                .verify_slice(&signature)
                .is_ok();
        }
        if !valid {
            return Err("invalid signature".to_owned());
        }
        // A claims set is a JSON object (serde would read a struct from an array too).
        let claims: Map<String, Value> = decode_json(payload, "payload")?;
        serde_json::from_value(Value::Object(claims)).map_err(|e| format!("invalid claims: {e}"))
    }
}

fn decode_json<T: DeserializeOwned>(part: &str, what: &str) -> Result<T, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("{what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| format!("{what} is not a JSON object"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_algorithm_and_the_key() {
        let key = Hs256Key::new(b"a key");
        let decoded = URL_SAFE_NO_PAD.decode(&key.header).unwrap();
        let header: Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"].as_str().unwrap().len(), 16);
        assert_ne!(Hs256Key::new(b"another key").kid, key.kid);
    }

    #[test]
    fn a_ring_signs_with_its_first_key_and_verifies_with_all() {
        let old = Hs256Key::new(b"old key");
        let ring = KeyRing::new(b"new key", [b"old key".as_slice()]);
        let from_old = old.sign(&serde_json::json!({"sub": "x"})).unwrap();
        assert_eq!(ring.verify::<Value>(&from_old).unwrap()["sub"], "x");
        let from_ring = ring.sign(&serde_json::json!({"sub": "y"})).unwrap();
        assert_eq!(
            Hs256Key::new(b"new key")
                .verify::<Value>(&from_ring)
                .unwrap()["sub"],
            "y"
        );
        assert_eq!(
            old.verify::<Value>(&from_ring).unwrap_err(),
            "signed with a key that is no longer accepted (unknown kid)"
        );
        let without_old = KeyRing::new(b"new key", []);
        assert!(without_old.verify::<Value>(&from_old).is_err());
    }

    #[test]
    fn signs_what_it_verifies_and_refuses_other_shapes() {
        let key = Hs256Key::new(b"a key");
        let token = key.sign(&serde_json::json!({"sub": "x"})).unwrap();
        assert_eq!(key.verify::<Value>(&token).unwrap()["sub"], "x");
        let (_, rest) = token.split_once('.').unwrap();
        let with_header = |header: &str| format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header));
        for (token, error) in [
            (
                with_header(r#"{"alg":"none"}"#),
                "algorithm \"none\" is not allowed (HS256 only)",
            ),
            (with_header(r#"{"typ":"JWT"}"#), "header has no algorithm"),
            (
                with_header(r#"{"alg":"HS256","crit":["exp"]}"#),
                "critical header extensions are not supported",
            ),
            (with_header(r#"{"alg":"HS256"}"#), "invalid signature"),
            (
                format!("{token}."),
                "not a compact JWS (header.payload.signature)",
            ),
            (format!("{token}="), "signature is not base64url"),
        ] {
            assert_eq!(key.verify::<Value>(&token).unwrap_err(), error);
        }
    }

    /// RFC 7515 appendix A.1 is HS256 over a header with a line break in it; the signature
    /// covers the base64url parts as sent, which is what this checks.
    #[test]
    fn rfc_7515_appendix_a1_verifies() {
        let key = URL_SAFE_NO_PAD
            .decode(
                "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
            )
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
                     eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
                     dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let claims: Value = Hs256Key::new(&key).verify(token).unwrap();
        assert_eq!(claims["iss"], "joe");
        let other = Hs256Key::new(b"another key");
        assert_eq!(
            other.verify::<Value>(token).unwrap_err(),
            "invalid signature"
        );
    }
}
