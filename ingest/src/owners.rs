//! Who owns each business number, and which app secret speaks for it.
//!
//! Built from the directory (numbers registered through the API, their app secrets
//! opened with the sealing keys) over the static seed (`[ingest] numbers`,
//! `app_secrets`, `default_org`: development and tests). The directory wins. A
//! webhook secret speaks only for its own numbers: [`Owners::authorize`] requires
//! every change of a body to be signed by a secret of the number (or account) it
//! names, so org A's secret cannot bring in events for org B's number.

use std::collections::HashMap;

use events::directory::Directory;
use events::{OrgDirectory, OrgLookup, Webhook};
use runtime::Secret;
use runtime::seal::Sealer;

use crate::config::IngestConfig;
use crate::signature::{self, SignatureError};

/// Numbers and accounts with their orgs and secrets.
#[derive(Debug, Default)]
pub struct Owners {
    /// Directory numbers: `phone_number_id` → (org, app secret).
    numbers: HashMap<String, (String, Secret)>,
    /// Directory accounts: WABA id → (org, the app secrets of its numbers).
    wabas: HashMap<String, (String, Vec<Secret>)>,
    /// The static seed.
    seed: OrgDirectory,
    seed_secrets: Vec<Secret>,
}

/// Whose secret a change must be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// A directory number or account, or a seeded number: its own secrets.
    Known,
    /// No org owns it: any known secret (the body is kept for a replay, which
    /// checks the signature again against the number's own secret once it is added).
    Unknown,
}

impl Owners {
    /// From the static seed alone.
    pub fn seed(config: &IngestConfig) -> Self {
        Self {
            seed: config.org_directory(),
            seed_secrets: config
                .app_secrets
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            ..Self::default()
        }
    }

    /// The directory's numbers over the seed. A secret that does not open (a key
    /// missing from `[sealing]`) is logged by number, never by value, and that
    /// number then accepts no signature.
    pub fn build(directory: &Directory, sealer: &Sealer, config: &IngestConfig) -> Self {
        let mut owners = Self::seed(config);
        let mut sealed_shut = Vec::new();
        for (number, entry) in directory.numbers() {
            let secret = match sealer.open(&entry.app_secret) {
                Ok(secret) => Secret::new(secret),
                Err(_) => {
                    sealed_shut.push(number);
                    Secret::default()
                }
            };
            if let Some(waba) = &entry.waba_id {
                let (_, secrets) = owners
                    .wabas
                    .entry(waba.clone())
                    .or_insert_with(|| (entry.org.clone(), Vec::new()));
                secrets.push(secret.clone());
            }
            owners
                .numbers
                .insert(number.to_string(), (entry.org.clone(), secret));
        }
        if !sealed_shut.is_empty() {
            tracing::warn!(
                numbers = sealed_shut.len(),
                first = sealed_shut[0],
                "app secrets that do not open with [sealing] keys: these numbers' webhooks are refused"
            );
        }
        owners
    }

    /// The secrets that speak for a change naming `phone_number_id` (empty for an
    /// account-level change) of account `waba_id`, and whether anyone owns it.
    fn secrets_for(&self, phone_number_id: &str, waba_id: &str) -> (Ownership, Vec<&Secret>) {
        if let Some((_, secret)) = self.numbers.get(phone_number_id) {
            return (Ownership::Known, vec![secret]);
        }
        if phone_number_id.is_empty()
            && let Some((_, secrets)) = self.wabas.get(waba_id)
        {
            return (Ownership::Known, secrets.iter().collect());
        }
        let seeded = self.seed.org_of(phone_number_id).is_some();
        let ownership = if seeded {
            Ownership::Known
        } else {
            Ownership::Unknown
        };
        (ownership, self.seed_secrets.iter().collect())
    }

    /// Every secret this ingest knows.
    fn all_secrets(&self) -> Vec<&Secret> {
        self.numbers
            .values()
            .map(|(_, s)| s)
            .chain(&self.seed_secrets)
            .collect()
    }

    /// Checks the signature of a parsed body: every change must be signed by a
    /// secret of the number it names; a change for a number nobody owns, by some
    /// secret we know. Returns whether any change names a number nobody owns.
    pub fn authorize(
        &self,
        header: Option<&str>,
        body: &[u8],
        webhook: &Webhook,
    ) -> Result<Ownership, SignatureError> {
        let mut ownership = Ownership::Known;
        let mut named_any = false;
        for entry in &webhook.entry {
            for change in &entry.changes {
                named_any = true;
                let number = change_number(&change.value);
                let (owned, secrets) = self.secrets_for(number, &entry.id);
                let secrets = match owned {
                    Ownership::Known => secrets,
                    Ownership::Unknown => {
                        ownership = Ownership::Unknown;
                        self.all_secrets()
                    }
                };
                signature::verify_any(header, body, &secrets)?;
            }
        }
        if !named_any {
            signature::verify_any(header, body, &self.all_secrets())?;
        }
        Ok(ownership)
    }

    /// Checks a body that could not be parsed: signed by any secret we know (so a
    /// forgery is a 401, not a 400 that confirms the endpoint parses it).
    pub fn authorize_unparsed(
        &self,
        header: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        signature::verify_any(header, body, &self.all_secrets())
    }
}

impl OrgLookup for Owners {
    fn org_for(&self, phone_number_id: &str, waba_id: &str) -> Option<String> {
        if let Some((org, _)) = self.numbers.get(phone_number_id) {
            return Some(org.clone());
        }
        if phone_number_id.is_empty()
            && let Some((org, _)) = self.wabas.get(waba_id)
        {
            return Some(org.clone());
        }
        self.seed.org_of(phone_number_id).map(str::to_string)
    }
}

/// The business number a change's value names (`metadata.phone_number_id`), or
/// empty for an account-level change.
pub fn change_number(value: &serde_json::Value) -> &str {
    value
        .get("metadata")
        .and_then(|m| m.get("phone_number_id"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::directory::{Change, DirectoryChange, Stamp};

    fn sealer() -> Sealer {
        Sealer::new(&[("k".into(), vec![7; 32])]).unwrap()
    }

    fn directory(sealer: &Sealer) -> Directory {
        let mut d = Directory::new();
        for (i, (org, number, secret)) in [("a", "111", "secret-a"), ("b", "222", "secret-b")]
            .into_iter()
            .enumerate()
        {
            let change = DirectoryChange {
                id: format!("c{i}"),
                org: org.into(),
                issued_by: "admin".into(),
                at_ms: 1,
                change: Change::BusinessNumberUpserted {
                    phone_number_id: number.into(),
                    display_phone_number: String::new(),
                    waba_id: Some(format!("waba-{org}")),
                    access_token: sealer.seal("token"),
                    app_secret: sealer.seal(secret),
                },
            };
            d.apply(&change, Stamp::new(1, i as i32, 0));
        }
        d
    }

    fn body(number: &str) -> (Vec<u8>, Webhook) {
        let json = serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "waba", "changes": [{ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "1", "phone_number_id": number },
                "messages": []
            }}]}]
        });
        let bytes = serde_json::to_vec(&json).unwrap();
        (bytes, serde_json::from_value(json).unwrap())
    }

    #[test]
    fn a_secret_speaks_only_for_its_own_numbers() {
        let sealer = sealer();
        let owners = Owners::build(&directory(&sealer), &sealer, &IngestConfig::default());
        let (bytes, webhook) = body("222");
        let by_a = signature::sign(&bytes, "secret-a");
        assert_eq!(
            owners.authorize(Some(&by_a), &bytes, &webhook),
            Err(SignatureError::Mismatch),
            "org A's secret must not bring in org B's number"
        );
        let by_b = signature::sign(&bytes, "secret-b");
        assert_eq!(
            owners.authorize(Some(&by_b), &bytes, &webhook),
            Ok(Ownership::Known)
        );
        assert_eq!(owners.org_for("222", ""), Some("b".into()));
        assert_eq!(owners.org_for("", "waba-a"), Some("a".into()));
    }

    #[test]
    fn an_unknown_number_needs_some_known_secret_and_has_no_org() {
        let sealer = sealer();
        let owners = Owners::build(&directory(&sealer), &sealer, &IngestConfig::default());
        let (bytes, webhook) = body("999");
        let known = signature::sign(&bytes, "secret-a");
        assert_eq!(
            owners.authorize(Some(&known), &bytes, &webhook),
            Ok(Ownership::Unknown)
        );
        let forged = signature::sign(&bytes, "nobody");
        assert_eq!(
            owners.authorize(Some(&forged), &bytes, &webhook),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(owners.org_for("999", "waba"), None);
    }

    #[test]
    fn the_directory_wins_over_the_seed() {
        let sealer = sealer();
        let config = IngestConfig {
            app_secrets: vec![Secret::new("seed-secret")],
            numbers: vec![crate::config::NumberOwner {
                phone_number_id: "111".into(),
                org: "seeded".into(),
            }],
            ..IngestConfig::default()
        };
        let owners = Owners::build(&directory(&sealer), &sealer, &config);
        assert_eq!(owners.org_for("111", ""), Some("a".into()));
        let (bytes, webhook) = body("111");
        let seed_signed = signature::sign(&bytes, "seed-secret");
        assert_eq!(
            owners.authorize(Some(&seed_signed), &bytes, &webhook),
            Err(SignatureError::Mismatch),
            "a number in the directory answers only to its own secret"
        );
    }
}
