//! SAS token generation and checking: known vectors computed independently (Python's `hmac`,
//! in the format of Microsoft's documentation example), and properties over arbitrary inputs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hub_emulator::sas::{self, SasError};
use proptest::prelude::*;

/// base64("twinbridge-known-vector-key-0001")
const KEY: &str = "dHdpbmJyaWRnZS1rbm93bi12ZWN0b3Ita2V5LTAwMDE=";
const SE: u64 = 1_456_971_697;

/// Computed with Python: `b64(hmac.new(b64dec(KEY), sr + "\n" + se, sha256))`, URL-encoded.
const VECTOR_UPPER: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice1&sig=D1HGOWgB%2BVI9qVMhV8k9IX5x3tz%2FONlP98667IKwVfs%3D&se=1456971697";
/// Microsoft's documentation example encodes with lowercase hex (`%2f`); the signature covers
/// `sr` exactly as sent, so this token has another signature and must verify too.
const VECTOR_LOWER: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2fdevices%2fdevice1&sig=ByGSo09YdzTCuzHFb1fcglEFJwLCPlgezxQxi2ccnyg%3D&se=1456971697";
/// A hub-level (service) token with a policy name.
const VECTOR_SERVICE: &str = "SharedAccessSignature sr=myhub.azure-devices.net&sig=9Z3arXNyHg2a%2B4T9TEmTSngfxs7BCJwsi8ywEPZ44LA%3D&se=1456971697&skn=iothubowner";

#[test]
fn generate_matches_independent_vector() {
    assert_eq!(
        sas::generate("myhub.azure-devices.net", "device1", KEY, SE),
        VECTOR_UPPER
    );
}

#[test]
fn verifies_independent_vectors() {
    for token in [VECTOR_UPPER, VECTOR_LOWER] {
        let claims = sas::verify(token, "myhub.azure-devices.net", "device1", &[KEY], SE - 1)
            .expect("the vector is valid before its expiry");
        assert_eq!(claims.expiry_epoch_secs, SE);
        assert_eq!(claims.resource, "myhub.azure-devices.net/devices/device1");
    }
    let claims = sas::verify_resource(VECTOR_SERVICE, "MyHub.azure-devices.net", &[KEY], SE - 1)
        .expect("service vector is valid");
    assert_eq!(claims.key_name.as_deref(), Some("iothubowner"));
    assert_eq!(
        sas::generate_for_resource("myhub.azure-devices.net", KEY, Some("iothubowner"), SE),
        VECTOR_SERVICE
    );
}

#[test]
fn vector_refused_for_other_device_key_or_time() {
    assert!(matches!(
        sas::verify(
            VECTOR_UPPER,
            "myhub.azure-devices.net",
            "device2",
            &[KEY],
            0
        ),
        Err(SasError::ResourceMismatch { .. })
    ));
    assert!(matches!(
        sas::verify(
            VECTOR_UPPER,
            "otherhub.azure-devices.net",
            "device1",
            &[KEY],
            0
        ),
        Err(SasError::ResourceMismatch { .. })
    ));
    let other_key = B64.encode([7u8; 32]);
    assert_eq!(
        sas::verify(
            VECTOR_UPPER,
            "myhub.azure-devices.net",
            "device1",
            &[&other_key],
            0
        ),
        Err(SasError::BadSignature)
    );
    assert_eq!(
        sas::verify(
            VECTOR_UPPER,
            "myhub.azure-devices.net",
            "device1",
            &[KEY],
            SE
        ),
        Err(SasError::Expired {
            expiry: SE,
            now: SE
        })
    );
}

#[test]
fn a_device_token_is_not_a_service_token() {
    assert!(matches!(
        sas::verify_resource(VECTOR_UPPER, "myhub.azure-devices.net", &[KEY], 0),
        Err(SasError::ResourceMismatch { .. })
    ));
}

#[test]
fn a_key_that_is_not_base64_matches_nothing() {
    assert_eq!(
        sas::verify(
            VECTOR_UPPER,
            "myhub.azure-devices.net",
            "device1",
            &["not base64!"],
            0
        ),
        Err(SasError::BadSignature)
    );
}

fn key() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 1..64).prop_map(|b| B64.encode(b))
}

proptest! {
    #[test]
    fn round_trip_any_identity(
        host in "[a-zA-Z0-9.-]{1,40}",
        device in "[a-zA-Z0-9\\-.%_*?!(),:=@$'~+#;/ äö]{1,40}",
        key in key(),
        expiry in 1u64..u64::MAX,
        now_back in 1u64..1_000_000,
    ) {
        let token = sas::generate(&host, &device, &key, expiry);
        let now = expiry.saturating_sub(now_back);
        let claims = sas::verify(&token, &host.to_uppercase(), &device, &[&key], now).unwrap();
        prop_assert_eq!(claims.expiry_epoch_secs, expiry);
        prop_assert_eq!(claims.resource, format!("{host}/devices/{device}"));
    }

    #[test]
    fn any_single_character_change_is_refused(
        device in "[a-z0-9-]{1,20}",
        key in key(),
        pos in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9%&=]",
    ) {
        let token = sas::generate("hub.example", &device, &key, 5_000);
        let mut chars: Vec<char> = token.chars().collect();
        let i = pos.index(chars.len());
        let new = replacement.chars().next().unwrap();
        prop_assume!(chars[i] != new);
        chars[i] = new;
        let tampered: String = chars.into_iter().collect();
        let verdict = sas::verify(&tampered, "hub.example", &device, &[&key], 1_000);
        // The only edits that may be accepted keep the token's meaning: a case change inside
        // the (case-insensitive) host, or of a hex digit of a %XX escape in `sig`.
        if let Ok(claims) = verdict {
            let expected = format!("hub.example/devices/{device}");
            prop_assert!(claims.resource.eq_ignore_ascii_case(&expected));
            prop_assert!(tampered.eq_ignore_ascii_case(&token));
        }
    }

    #[test]
    fn other_keys_are_refused(key in key(), other in key()) {
        prop_assume!(B64.decode(&key).unwrap() != B64.decode(&other).unwrap());
        let token = sas::generate("hub.example", "d", &key, 100);
        prop_assert_eq!(
            sas::verify(&token, "hub.example", "d", &[&other], 0),
            Err(SasError::BadSignature)
        );
        prop_assert!(sas::verify(&token, "hub.example", "d", &[&other, &key], 0).is_ok());
    }

    #[test]
    fn verify_never_panics(token in ".{0,200}", host in ".{0,20}", device in ".{0,20}", now in any::<u64>()) {
        let _ = sas::verify(&token, &host, &device, &[KEY, "###"], now);
        let prefixed = format!("SharedAccessSignature {token}");
        let _ = sas::verify(&prefixed, &host, &device, &[KEY], now);
    }
}
