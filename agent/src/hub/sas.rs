//! Shared access signature (SAS) tokens and the MQTT username of a device.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// The `api-version` sent in the username.
pub const API_VERSION: &str = "2021-04-12";

/// RFC 3986 unreserved characters stay as they are; everything else is escaped.
const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why a token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The device key is not base64 (the key itself is never shown).
    #[error("the symmetric key of device {device_id} is not valid base64")]
    KeyNotBase64 {
        /// The device whose key it is.
        device_id: String,
    },
}

/// The MQTT username of a device: `{host}/{deviceId}/?api-version=2021-04-12`.
pub fn username(host: &str, device_id: &str) -> String {
    format!("{host}/{device_id}/?api-version={API_VERSION}")
}

/// A device SAS token for `{host}/devices/{device_id}`, signed with `key_b64`, expiring at
/// `expiry_epoch_secs`:
/// `SharedAccessSignature sr={urlenc(resource)}&sig={urlenc(b64(hmac))}&se={expiry}`.
pub fn device_token(
    host: &str,
    device_id: &str,
    key_b64: &str,
    expiry_epoch_secs: u64,
) -> Result<String, SasError> {
    let key = B64
        .decode(key_b64.trim())
        .map_err(|_| SasError::KeyNotBase64 {
            device_id: device_id.to_owned(),
        })?;
    let sr = utf8_percent_encode(&format!("{host}/devices/{device_id}"), ENCODE_SET).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(format!("{sr}\n{expiry_epoch_secs}").as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    Ok(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_epoch_secs}",
        utf8_percent_encode(&sig, ENCODE_SET)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn known_vector() {
        // Computed independently: printf 'myhub.azure-devices.net%2Fdevices%2Fdev-1\n1700000000'
        //   | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(echo $KEY | base64 -d | xxd -p) -binary
        //   | base64
        let token = device_token("myhub.azure-devices.net", "dev-1", KEY, 1_700_000_000)
            .expect("valid key");
        assert_eq!(token, KNOWN_TOKEN);
    }

    const KNOWN_TOKEN: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-1&sig=l7%2Fu96NiMH3c2q8ND0vSv7AgtbSZO7bj2kWfUIF7ugw%3D&se=1700000000";

    #[test]
    fn the_emulator_accepts_our_tokens() {
        // An independent reading of the same spec (hub-emulator's verifier).
        for (host, id) in [
            ("h.example", "d1"),
            ("hub.example", "dev with space+plus/é"),
        ] {
            let token = device_token(host, id, KEY, 2_000_000_000).expect("valid key");
            let claims = hub_emulator::sas::verify(&token, host, id, &[KEY], 1_900_000_000)
                .expect("the emulator accepts the token");
            assert_eq!(claims.expiry_epoch_secs, 2_000_000_000);
            assert_eq!(claims.resource, format!("{host}/devices/{id}"));
        }
        let other = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
        let token = device_token("h", "d1", other, 2_000_000_000).expect("valid key");
        assert!(hub_emulator::sas::verify(&token, "h", "d1", &[KEY], 1).is_err());
    }

    #[test]
    fn username_format() {
        assert_eq!(
            username("h.example", "d1"),
            "h.example/d1/?api-version=2021-04-12"
        );
    }

    #[test]
    fn bad_key_is_an_error_without_the_key() {
        let err = device_token("h", "d1", "not base64!!", 1).unwrap_err();
        assert!(!err.to_string().contains("not base64!!"));
        assert!(err.to_string().contains("d1"));
    }
}
