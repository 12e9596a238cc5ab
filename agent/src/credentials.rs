//! Credentials of every identity (the gateway and each device), resolved from the
//! configuration, the key files it names and systemd's `$CREDENTIALS_DIRECTORY`.
//!
//! Per identity, one of:
//! - `auth = "sas"`: a symmetric key (base64). A file named after the device id in
//!   `$CREDENTIALS_DIRECTORY` wins (so `LoadCredential=`/`LoadCredentialEncrypted=` work);
//!   else the id's entry in `keys_file`, a TOML table `device-id = "base64 key"`.
//! - `auth = "group-key"`: a key derived from the enrollment group's key (base64), read from
//!   `group-key` in `$CREDENTIALS_DIRECTORY`, else from `group_key_file`:
//!   `base64(hmac_sha256(base64dec(group_key), device_id))` (the DPS symmetric-key group
//!   convention).
//! - `auth = "x509"`: a PEM certificate chain and private key.
//!
//! Key files (keys file, group key file, X.509 key) that group or others may read or write
//! are refused, with the `chmod` that fixes it; files under `$CREDENTIALS_DIRECTORY` are
//! systemd's and skip that check. Keys are validated but never shown: not in errors, logs or
//! `Debug` output.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{AuthConfig, Config, ConfigError, ConfigErrors, FileSetting, Location};
use crate::hub::{Credential, Secret};

/// The environment variable systemd sets to the directory of the unit's credentials.
pub const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";

/// The name of the enrollment group key in `$CREDENTIALS_DIRECTORY`.
pub const GROUP_KEY_CREDENTIAL: &str = "group-key";

/// One identity the gateway connects as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its device id in the hub.
    pub id: String,
    /// How it authenticates.
    pub credential: Credential,
    /// Whether this is the gateway's own identity (else an attached device's).
    pub is_gateway: bool,
}

/// `$CREDENTIALS_DIRECTORY`, if set and not empty.
pub fn credentials_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(CREDENTIALS_DIRECTORY_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Resolves the credentials of every identity, the gateway first, then the devices in
/// configuration order. Reports every missing or unusable credential.
pub fn resolve(
    config: &Config,
    credentials_dir: Option<&Path>,
) -> Result<Vec<Identity>, ConfigErrors> {
    let base_dir = config
        .files
        .first()
        .and_then(|f| f.parent())
        .unwrap_or(Path::new(""));
    let mut resolver = Resolver {
        credentials_dir,
        base_dir,
        errors: Vec::new(),
        keys_files: HashMap::new(),
        group_keys: HashMap::new(),
    };
    let mut identities = Vec::new();
    let gateway = std::iter::once((
        &config.gateway.id,
        &config.gateway.auth,
        &config.gateway.defined_at,
        true,
    ));
    let devices = config
        .devices
        .iter()
        .map(|d| (&d.id, &d.auth, &d.defined_at, false));
    for (id, auth, defined_at, is_gateway) in gateway.chain(devices) {
        let context = if is_gateway {
            "gateway".to_owned()
        } else {
            format!("device {id:?}")
        };
        if let Some(credential) = resolver.credential(id, auth, defined_at, &context) {
            identities.push(Identity {
                id: id.clone(),
                credential,
                is_gateway,
            });
        }
    }
    if resolver.errors.is_empty() {
        Ok(identities)
    } else {
        Err(ConfigErrors(resolver.errors))
    }
}

/// The device key derived from an enrollment group key:
/// `base64(hmac_sha256(group_key, device_id))`.
pub fn derive_device_key(group_key: &[u8], device_id: &str) -> Secret {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(group_key).expect("HMAC accepts keys of any length");
    mac.update(device_id.as_bytes());
    Secret::new(STANDARD.encode(mac.finalize().into_bytes()))
}

/// Refuses a key file that group or others may read or write, saying how to fix it.
pub fn check_key_file_mode(path: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("reading key file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let group_or_others = mode & 0o077;
    if group_or_others == 0 {
        return Ok(());
    }
    let what = if group_or_others & 0o044 == 0 {
        "write"
    } else {
        "read"
    };
    Err(format!(
        "refusing key file {path}: mode {mode:04o} lets group or others {what} it; restrict it with chmod 600 {path}",
        path = path.display()
    ))
}

/// A base64 key, decoded; `None` if it is not valid (non-empty) base64.
fn decode_key(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.trim()).ok().filter(|k| !k.is_empty())
}

/// A keys file: per id, its key, or `None` when the entry was unusable (already reported).
type KeysFile = HashMap<String, Option<Secret>>;

struct Resolver<'a> {
    credentials_dir: Option<&'a Path>,
    /// The configuration directory: files below it are shown relative to it, as in
    /// configuration errors.
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
    /// Loaded keys files; `None` when unusable (reported once).
    keys_files: HashMap<PathBuf, Option<KeysFile>>,
    /// Loaded group keys by source; `None` when unusable (reported once).
    group_keys: HashMap<PathBuf, Option<Vec<u8>>>,
}

impl Resolver<'_> {
    fn error(
        &mut self,
        location: Option<Location>,
        context: &str,
        field: &str,
        message: impl Into<String>,
    ) {
        self.errors
            .push(ConfigError::field(location, context, field, message));
    }

    /// `dir/name` when the credentials directory has such a file. A name that is not a plain
    /// file name (`.`, `..`) is never looked up.
    fn in_credentials_dir(&self, name: &str) -> Option<PathBuf> {
        if name == "." || name == ".." {
            return None;
        }
        let path = self.credentials_dir?.join(name);
        path.is_file().then_some(path)
    }

    fn credential(
        &mut self,
        id: &str,
        auth: &AuthConfig,
        at: &Location,
        context: &str,
    ) -> Option<Credential> {
        match auth {
            AuthConfig::Sas { keys_file } => self.sas_key(id, keys_file.as_ref(), at, context),
            AuthConfig::GroupKey { group_key_file } => {
                let group_key = self.group_key(group_key_file.as_ref(), at, context)?;
                Some(Credential::SymmetricKey(derive_device_key(&group_key, id)))
            }
            AuthConfig::X509 {
                cert_file,
                key_file,
            } => {
                let cert_ok = self.check_cert(cert_file, context);
                let key_ok = self.check_private_key(key_file, context);
                (cert_ok && key_ok).then(|| Credential::X509 {
                    cert_file: cert_file.path.clone(),
                    key_file: key_file.path.clone(),
                })
            }
        }
    }

    fn sas_key(
        &mut self,
        id: &str,
        keys_file: Option<&FileSetting>,
        at: &Location,
        context: &str,
    ) -> Option<Credential> {
        if let Some(path) = self.in_credentials_dir(id) {
            return match std::fs::read_to_string(&path) {
                Ok(text) if decode_key(&text).is_some() => {
                    Some(Credential::SymmetricKey(Secret::new(text.trim())))
                }
                Ok(_) => {
                    self.error(
                        Some(at.clone()),
                        context,
                        "",
                        format!("credential {}: not a valid base64 key", path.display()),
                    );
                    None
                }
                Err(e) => {
                    self.error(
                        Some(at.clone()),
                        context,
                        "",
                        format!("reading credential {}: {e}", path.display()),
                    );
                    None
                }
            };
        }
        let Some(file) = keys_file else {
            let message = format!("no SAS key: {}, and no keys_file is set", self.dir_hint(id));
            self.error(Some(at.clone()), context, "", message);
            return None;
        };
        let keys = self.keys_file(file)?;
        match keys.get(id) {
            Some(Some(key)) => Some(Credential::SymmetricKey(key.clone())),
            Some(None) => None, // reported with the keys file's line
            None => {
                let message = format!(
                    "no SAS key: no entry {id:?} in keys file {}, and {}",
                    file.path.display(),
                    self.dir_hint(id)
                );
                self.error(Some(at.clone()), context, "", message);
                None
            }
        }
    }

    fn dir_hint(&self, name: &str) -> String {
        match self.credentials_dir {
            Some(dir) => format!("no credential {name:?} in {}", dir.display()),
            None => format!(
                "no credential {name:?} (${CREDENTIALS_DIRECTORY_ENV} is not set: outside systemd, pass --credentials-dir)"
            ),
        }
    }

    /// Reads a keys file once; `None` (reported) if unusable.
    fn keys_file(&mut self, file: &FileSetting) -> Option<&KeysFile> {
        if !self.keys_files.contains_key(&file.path) {
            let loaded = self.load_keys_file(file);
            self.keys_files.insert(file.path.clone(), loaded);
        }
        self.keys_files[&file.path].as_ref()
    }

    fn load_keys_file(&mut self, file: &FileSetting) -> Option<KeysFile> {
        let text = self.read_key_file(file, "", "keys_file")?;
        let (table, syntax) = toml::de::DeTable::parse_recoverable(&text);
        let index = crate::config::line_index(&text);
        let shown = match file.path.strip_prefix(self.base_dir) {
            Ok(relative) if !self.base_dir.as_os_str().is_empty() => relative.to_path_buf(),
            _ => file.path.clone(),
        };
        let location = |offset: usize| {
            let (line, column) = index.line_col(offset);
            Location {
                file: shown.clone(),
                line,
                column,
            }
        };
        let mut ok = true;
        for e in syntax {
            // The parser's messages name the problem, not the text: no key material shows.
            let at = e.span().map(|s| location(s.start));
            self.error(
                at,
                "",
                "",
                format!("invalid TOML: {}", e.message().replace('\n', " ")),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        let mut keys = KeysFile::new();
        for (id, value) in table.get_ref() {
            let key = value
                .get_ref()
                .as_str()
                .and_then(decode_key)
                .map(|_| Secret::new(value.get_ref().as_str().expect("checked").trim()));
            if key.is_none() {
                self.error(
                    Some(location(value.span().start)),
                    &format!("key {:?}", id.get_ref()),
                    "",
                    "expected a base64 key string (the value is not shown)",
                );
            }
            keys.insert(id.get_ref().to_string(), key);
        }
        Some(keys)
    }

    /// The group key from the credentials directory or `file`, once per source.
    fn group_key(
        &mut self,
        file: Option<&FileSetting>,
        at: &Location,
        context: &str,
    ) -> Option<Vec<u8>> {
        if let Some(path) = self.in_credentials_dir(GROUP_KEY_CREDENTIAL) {
            if !self.group_keys.contains_key(&path) {
                let key = match std::fs::read_to_string(&path) {
                    Ok(text) => decode_key(&text).or_else(|| {
                        self.error(
                            None,
                            "",
                            "",
                            format!("credential {}: not a valid base64 key", path.display()),
                        );
                        None
                    }),
                    Err(e) => {
                        self.error(
                            None,
                            "",
                            "",
                            format!("reading credential {}: {e}", path.display()),
                        );
                        None
                    }
                };
                self.group_keys.insert(path.clone(), key);
            }
            return self.group_keys[&path].clone();
        }
        let Some(file) = file else {
            let message = format!(
                "no group key: {}, and no group_key_file is set",
                self.dir_hint(GROUP_KEY_CREDENTIAL)
            );
            self.error(Some(at.clone()), context, "", message);
            return None;
        };
        if !self.group_keys.contains_key(&file.path) {
            let key = self
                .read_key_file(file, "", "group_key_file")
                .and_then(|text| {
                    decode_key(&text).or_else(|| {
                        self.error(
                            Some(file.defined_at.clone()),
                            "",
                            "group_key_file",
                            format!("{}: not a valid base64 key", file.path.display()),
                        );
                        None
                    })
                });
            self.group_keys.insert(file.path.clone(), key);
        }
        self.group_keys[&file.path].clone()
    }

    /// Reads a key file after the permission check (skipped under the credentials dir).
    fn read_key_file(&mut self, file: &FileSetting, context: &str, field: &str) -> Option<String> {
        let systemds = self
            .credentials_dir
            .is_some_and(|d| file.path.starts_with(d));
        if !systemds && let Err(why) = check_key_file_mode(&file.path) {
            self.error(Some(file.defined_at.clone()), context, field, why);
            return None;
        }
        match std::fs::read_to_string(&file.path) {
            Ok(text) => Some(text),
            Err(e) => {
                self.error(
                    Some(file.defined_at.clone()),
                    context,
                    field,
                    format!("reading {}: {e}", file.path.display()),
                );
                None
            }
        }
    }

    fn check_cert(&mut self, file: &FileSetting, context: &str) -> bool {
        let problem = match std::fs::read(&file.path) {
            Err(e) => Some(format!("reading {}: {e}", file.path.display())),
            Ok(bytes) => {
                match rustls_pemfile::certs(&mut bytes.as_slice()).collect::<Result<Vec<_>, _>>() {
                    Ok(certs) if !certs.is_empty() => None,
                    Ok(_) => Some(format!("{}: no PEM certificate in it", file.path.display())),
                    Err(_) => Some(format!("{}: not a valid PEM file", file.path.display())),
                }
            }
        };
        if let Some(problem) = &problem {
            self.error(
                Some(file.defined_at.clone()),
                context,
                "cert_file",
                problem.clone(),
            );
        }
        problem.is_none()
    }

    fn check_private_key(&mut self, file: &FileSetting, context: &str) -> bool {
        let Some(text) = self.read_key_file(file, context, "key_file") else {
            return false;
        };
        let problem = match rustls_pemfile::private_key(&mut text.as_bytes()) {
            Ok(Some(_)) => return true,
            Ok(None) => "no PEM private key in it",
            Err(_) => "not a valid PEM file", // details could quote the file: not shown
        };
        self.error(
            Some(file.defined_at.clone()),
            context,
            "key_file",
            format!("{}: {problem}", file.path.display()),
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_derivation_matches_the_dps_convention() {
        // Independent reading: `printf meter-01 | openssl dgst -sha256 -mac HMAC
        //   -macopt hexkey:000102…1f -binary | base64`.
        let group_key: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            derive_device_key(&group_key, "meter-01").expose(),
            "gZUvWllqeRC09jKRJRuGyNXafcPWlGjmzYv19CPM0PQ="
        );
    }

    #[test]
    fn keys_decode_only_as_non_empty_base64() {
        assert!(decode_key("AAECAw==\n").is_some());
        assert!(decode_key("").is_none());
        assert!(decode_key("not base64!").is_none());
    }
}
