//! JSON Web Tokens (RFC 7519) in the compact JWS form (RFC 7515) with HS256 only: the one
//! algorithm the API issues and accepts, written over `hmac` and `sha2` (which the webhook
//! signatures use too) instead of a JWT crate whose RSA and elliptic-curve code we would never
//! run.
//!
//! Verification checks, in order: three base64url parts without padding; a header that is a
//! JSON object with `"alg": "HS256"` and no `crit`; the HMAC in constant time; only then is the
//! payload parsed. Claims are the caller's business ([`super::TokenKeys::verify`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The header of every token issued: `{"alg":"HS256","typ":"JWT"}`, base64url.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// An HS256 key: signs and verifies.
#[derive(Clone)]
pub(crate) struct Hs256Key {
    mac: HmacSha256,
}

impl Hs256Key {
    /// A key over the bytes of `secret` (HMAC takes a key of any length).
    pub(crate) fn new(secret: &[u8]) -> Self {
        // `new_from_slice` fails only for fixed-length keys, which HMAC has not.
        let mac = match HmacSha256::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        Hs256Key { mac }
    }

    fn signature(&self, signing_input: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac
    }

    /// `header.payload.signature` for `claims`.
    pub(crate) fn sign<C: Serialize>(&self, claims: &C) -> Result<String, serde_json::Error> {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let signing_input = format!("{HEADER}.{payload}");
        let signature =
            URL_SAFE_NO_PAD.encode(self.signature(&signing_input).finalize().into_bytes());
        Ok(format!("{signing_input}.{signature}"))
    }

    /// The claims of `token` if it is an HS256 token signed with this key. The error says what
    /// is wrong, for a person.
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
        self.signature(signing_input)
            .verify_slice(&signature)
            .map_err(|_| "invalid signature".to_owned())?;
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
    fn the_header_constant_is_the_hs256_header() {
        let decoded = URL_SAFE_NO_PAD.decode(HEADER).unwrap();
        assert_eq!(decoded, br#"{"alg":"HS256","typ":"JWT"}"#);
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
