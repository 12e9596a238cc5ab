//! Shared access signature (SAS) tokens, as IoT Hub issues and checks them.
//!
//! A token reads
//! `SharedAccessSignature sr={urlenc(resource)}&sig={urlenc(b64(hmac_sha256(b64dec(key), sr + "\n" + se)))}&se={epoch}`
//! with the fields in any order and an optional `skn` (the policy name of a hub-level key).
//! The string to sign is the `sr` field *exactly as it appears in the token* (still URL-encoded)
//! followed by a newline and the `se` field: every SDK signs what it sends, and encoders differ
//! on which characters they escape, so the hub must not re-encode before checking.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every token.
const PREFIX: &str = "SharedAccessSignature ";

/// RFC 3986 unreserved characters stay as they are; everything else is escaped.
const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a valid token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasClaims {
    /// `se`: the token is valid while `now < expiry_epoch_secs`; the hub closes a connection
    /// authenticated with it when this instant passes.
    pub expiry_epoch_secs: u64,
    /// `skn`, when the token names a shared access policy (hub-level keys).
    pub key_name: Option<String>,
    /// The URL-decoded `sr` of the token.
    pub resource: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The text is not a well-formed token.
    #[error("malformed SAS token: {0}")]
    Malformed(String),
    /// `sr` names another resource than the one being accessed.
    #[error("SAS token resource {got:?} does not match {expected:?}")]
    ResourceMismatch {
        /// The resource the token had to name.
        expected: String,
        /// The decoded `sr` of the token.
        got: String,
    },
    /// `se` is not after the current time.
    #[error("SAS token expired at {expiry} (now {now})")]
    Expired {
        /// `se` of the token (seconds since the Unix epoch).
        expiry: u64,
        /// The time of the check (seconds since the Unix epoch).
        now: u64,
    },
    /// The signature matches none of the keys.
    #[error("SAS token signature does not match any key")]
    BadSignature,
}

/// The resource URI of a device identity: `{host}/devices/{device_id}`.
pub fn device_resource(host: &str, device_id: &str) -> String {
    format!("{host}/devices/{device_id}")
}

/// Checks a device token: `sr` must be `{host}/devices/{device_id}` (host compared
/// case-insensitively), the signature must match one of `keys_b64` (the device's primary and
/// secondary keys, base64), and `se` must be after `now_epoch_secs`.
pub fn verify(
    token: &str,
    host: &str,
    device_id: &str,
    keys_b64: &[&str],
    now_epoch_secs: u64,
) -> Result<SasClaims, SasError> {
    verify_resource(
        token,
        &device_resource(host, device_id),
        keys_b64,
        now_epoch_secs,
    )
}

/// Checks a token for any resource (for example the bare host name, for the service API):
/// the decoded `sr` must equal `expected_resource`, comparing the host part (before the first
/// `/`) case-insensitively and the rest exactly; one trailing `/` on `sr` is tolerated.
pub fn verify_resource(
    token: &str,
    expected_resource: &str,
    keys_b64: &[&str],
    now_epoch_secs: u64,
) -> Result<SasClaims, SasError> {
    let fields = parse(token)?;
    let resource = percent_decode_str(fields.sr)
        .decode_utf8()
        .map_err(|_| SasError::Malformed("sr is not UTF-8 after URL-decoding".into()))?
        .into_owned();
    if !same_resource(&resource, expected_resource) {
        return Err(SasError::ResourceMismatch {
            expected: expected_resource.to_owned(),
            got: resource,
        });
    }
    // Digits only: `u64::from_str` would also take a leading `+`.
    let expiry: u64 = Some(fields.se)
        .filter(|se| !se.is_empty() && se.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|se| se.parse().ok())
        .ok_or_else(|| SasError::Malformed(format!("se {:?} is not an epoch time", fields.se)))?;
    let sig_b64 = percent_decode_str(fields.sig)
        .decode_utf8()
        .map_err(|_| SasError::Malformed("sig is not UTF-8 after URL-decoding".into()))?;
    let sig = B64
        .decode(sig_b64.as_bytes())
        .map_err(|_| SasError::BadSignature)?;
    let to_sign = format!("{}\n{}", fields.sr, fields.se);
    // Check the signature before the expiry, so an expired-but-forged token reads as forged.
    let signed = keys_b64.iter().any(|key| {
        B64.decode(key.trim()).is_ok_and(|key| {
            let mut mac =
                HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
            mac.update(to_sign.as_bytes());
            // `verify_slice` compares in constant time.
            mac.verify_slice(&sig).is_ok()
        })
    });
    if !signed {
        return Err(SasError::BadSignature);
    }
    if now_epoch_secs >= expiry {
        return Err(SasError::Expired {
            expiry,
            now: now_epoch_secs,
        });
    }
    Ok(SasClaims {
        expiry_epoch_secs: expiry,
        key_name: fields
            .skn
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()),
        resource,
    })
}

/// Builds a device token for `{host}/devices/{device_id}` signed with `key_b64`.
///
/// # Panics
/// If `key_b64` is not base64: keys are generated or validated when a device is registered.
pub fn generate(host: &str, device_id: &str, key_b64: &str, expiry_epoch_secs: u64) -> String {
    generate_for_resource(
        &device_resource(host, device_id),
        key_b64,
        None,
        expiry_epoch_secs,
    )
}

/// Builds a token for any resource URI, optionally naming a policy (`skn`).
///
/// # Panics
/// If `key_b64` is not base64.
pub fn generate_for_resource(
    resource: &str,
    key_b64: &str,
    key_name: Option<&str>,
    expiry_epoch_secs: u64,
) -> String {
    let sr = utf8_percent_encode(resource, ENCODE_SET).to_string();
    let key = B64
        .decode(key_b64.trim())
        .expect("SAS keys are base64 (checked when the device is registered)");
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(format!("{sr}\n{expiry_epoch_secs}").as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    let mut token = format!(
        "{PREFIX}sr={sr}&sig={}&se={expiry_epoch_secs}",
        utf8_percent_encode(&sig, ENCODE_SET)
    );
    if let Some(name) = key_name {
        let _ = write!(token, "&skn={}", utf8_percent_encode(name, ENCODE_SET));
    }
    token
}

/// The raw (still URL-encoded) fields of a token.
struct Fields<'a> {
    sr: &'a str,
    sig: &'a str,
    se: &'a str,
    skn: Option<&'a str>,
}

fn parse(token: &str) -> Result<Fields<'_>, SasError> {
    let body = token
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| SasError::Malformed(format!("does not start with {PREFIX:?}")))?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for part in body.trim_start().split('&') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| SasError::Malformed(format!("field {part:?} has no '='")))?;
        let slot = match name {
            "sr" => &mut sr,
            "sig" => &mut sig,
            "se" => &mut se,
            "skn" => &mut skn,
            other => return Err(SasError::Malformed(format!("unknown field {other:?}"))),
        };
        if slot.replace(value).is_some() {
            return Err(SasError::Malformed(format!("field {name:?} given twice")));
        }
    }
    let missing = |name: &str| SasError::Malformed(format!("field {name:?} missing"));
    Ok(Fields {
        sr: sr.ok_or_else(|| missing("sr"))?,
        sig: sig.ok_or_else(|| missing("sig"))?,
        se: se.ok_or_else(|| missing("se"))?,
        skn,
    })
}

fn same_resource(got: &str, expected: &str) -> bool {
    let got = got.strip_suffix('/').unwrap_or(got);
    let expected = expected.strip_suffix('/').unwrap_or(expected);
    let split = |s: &str| -> (String, String) {
        match s.split_once('/') {
            Some((host, rest)) => (host.to_owned(), rest.to_owned()),
            None => (s.to_owned(), String::new()),
        }
    };
    let (got_host, got_rest) = split(got);
    let (exp_host, exp_rest) = split(expected);
    got_host.eq_ignore_ascii_case(&exp_host) && got_rest == exp_rest
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const OTHER: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn round_trip() {
        let t = generate("hub.example", "dev-1", KEY, 2000);
        let c = verify(&t, "hub.example", "dev-1", &[KEY], 1000).unwrap();
        assert_eq!(c.expiry_epoch_secs, 2000);
        assert_eq!(c.resource, "hub.example/devices/dev-1");
        assert_eq!(c.key_name, None);
    }

    #[test]
    fn secondary_key_accepted() {
        let t = generate("hub.example", "dev-1", KEY, 2000);
        assert!(verify(&t, "hub.example", "dev-1", &[OTHER, KEY], 1000).is_ok());
        assert_eq!(
            verify(&t, "hub.example", "dev-1", &[OTHER], 1000),
            Err(SasError::BadSignature)
        );
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = generate("hub.example", "dev-1", KEY, 2000);
        assert!(verify(&t, "hub.example", "dev-1", &[KEY], 1999).is_ok());
        assert_eq!(
            verify(&t, "hub.example", "dev-1", &[KEY], 2000),
            Err(SasError::Expired {
                expiry: 2000,
                now: 2000
            })
        );
    }

    #[test]
    fn host_case_insensitive_device_case_sensitive() {
        let t = generate("HUB.Example", "dev-1", KEY, 2000);
        assert!(verify(&t, "hub.example", "dev-1", &[KEY], 1).is_ok());
        assert!(matches!(
            verify(&t, "hub.example", "Dev-1", &[KEY], 1),
            Err(SasError::ResourceMismatch { .. })
        ));
    }

    #[test]
    fn fields_in_any_order_and_skn() {
        let t = generate_for_resource("hub.example", KEY, Some("iothubowner"), 50);
        let body = t.strip_prefix(PREFIX).unwrap();
        let mut parts: Vec<&str> = body.split('&').collect();
        parts.reverse();
        let shuffled = format!("{PREFIX}{}", parts.join("&"));
        let c = verify_resource(&shuffled, "hub.example", &[KEY], 10).unwrap();
        assert_eq!(c.key_name.as_deref(), Some("iothubowner"));
    }

    #[test]
    fn malformed_tokens() {
        for bad in [
            "",
            "sr=a&sig=b&se=1",
            "SharedAccessSignature sr=a&sig=b",
            "SharedAccessSignature sr=a&sig=b&se=1&se=2",
            "SharedAccessSignature sr=a&sig=b&se=1&x=2",
            "SharedAccessSignature sr=a&sig&se=1",
            "SharedAccessSignature sr=a&sig=b&se=+1",
            "SharedAccessSignature sr=a&sig=b&se=",
            "SharedAccessSignature sr=a&sig=b&se=99999999999999999999999",
        ] {
            assert!(
                matches!(
                    verify_resource(bad, "a", &[KEY], 0),
                    Err(SasError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
