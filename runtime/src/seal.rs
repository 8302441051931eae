//! Sealing business-number credentials (access token, app secret) with AES-256-GCM
//! before they reach Kafka or MongoDB. The key id travels with the ciphertext, so keys
//! rotate: seal with the first key, open with whichever sealed it.
//!
//! The API seals; the roles that call Meta or check its signatures (ingest, the
//! whatsapp and media sinks) open, with the same `[sealing] keys`. Nothing else
//! holds the values in clear, and [`Sealer`] never prints a key.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use events::directory::Sealed;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::Secret;

/// `[sealing]`: the keys that seal business-number credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SealingConfig {
    /// AES-256-GCM keys (32 bytes, base64). The first seals; all open, chosen by the
    /// `key_id` stored with each sealed value, so keys rotate by adding a new first
    /// key and keeping the old ones until everything is resealed. Empty: an
    /// ephemeral key (dev only: sealed data dies with the process).
    pub keys: Vec<SealKey>,
}

/// One sealing key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealKey {
    pub id: String,
    /// 32 bytes, base64.
    pub key: Secret,
}

const NONCE_LEN: usize = 12;

/// One random key per process: with no keys configured, every role of one process
/// (`coexist all`, a test) seals and opens alike; another process cannot open it.
fn ephemeral_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes[..]);
        bytes
    })
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("sealing key {0} is not 32 bytes of base64")]
    BadKey(String),
    #[error("no sealing key {0}")]
    UnknownKey(String),
    #[error("sealed data does not open (wrong key or tampered)")]
    Corrupt,
}

#[derive(Clone)]
pub struct Sealer {
    /// Key ids and ciphers; never printed (see the `Debug` impl).
    keys: Vec<(String, Aes256Gcm)>,
}

impl Sealer {
    /// From `[sealing] keys`; empty gets an ephemeral key (dev only).
    pub fn from_config(config: &SealingConfig) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for key in &config.keys {
            let bytes = STANDARD
                .decode(key.key.expose().trim())
                .map_err(|_| SealError::BadKey(key.id.clone()))?;
            keys.push((key.id.clone(), bytes));
        }
        if keys.is_empty() {
            tracing::warn!(
                "sealing.keys is empty: sealing with an ephemeral key shared by the roles of this process only (dev only)"
            );
            keys.push(("ephemeral".into(), ephemeral_key().to_vec()));
        }
        Self::new(&keys)
    }

    pub fn new(keys: &[(String, Vec<u8>)]) -> Result<Self, SealError> {
        let keys = keys
            .iter()
            .map(|(id, bytes)| {
                Aes256Gcm::new_from_slice(bytes)
                    .map(|cipher| (id.clone(), cipher))
                    .map_err(|_| SealError::BadKey(id.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// The ids of the keys this sealer opens.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    pub fn seal(&self, plaintext: &str) -> Sealed {
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce[..]);
        // Encryption with a valid key and a 12-byte nonce does not fail.
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut data = nonce.to_vec();
        data.extend(ciphertext);
        Sealed {
            key_id: id.clone(),
            data: STANDARD.encode(data),
        }
    }

    pub fn open(&self, sealed: &Sealed) -> Result<String, SealError> {
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        let data = STANDARD
            .decode(&sealed.data)
            .map_err(|_| SealError::Corrupt)?;
        if data.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SealError::Corrupt)
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_with_their_key_and_untampered() {
        let a = Sealer::new(&[("a".into(), vec![1; 32])]).unwrap();
        let sealed = a.seal("EAAG-token");
        assert!(!sealed.data.contains("EAAG"));
        assert_eq!(a.open(&sealed).unwrap(), "EAAG-token");
        let rotated = Sealer::new(&[("b".into(), vec![2; 32]), ("a".into(), vec![1; 32])]).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), "EAAG-token");
        assert_eq!(rotated.seal("x").key_id, "b");
        let mut bytes = STANDARD.decode(&sealed.data).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = Sealed {
            key_id: "a".into(),
            data: STANDARD.encode(bytes),
        };
        assert_eq!(a.open(&tampered), Err(SealError::Corrupt));
        assert!(Sealer::new(&[("x".into(), vec![0; 16])]).is_err());
    }
}
