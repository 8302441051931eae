use runtime::Secret;
use serde::{Deserialize, Serialize};

/// `[graph]`: how the whatsapp and media sinks reach Meta's Graph API (or
/// `coexist simulate serve`, which answers in the same formats).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphConfig {
    /// `https://graph.facebook.com` in production; the simulator's address locally.
    pub base_url: String,
    /// The Graph API version in every path (`/{version}/{phone_number_id}/messages`).
    pub api_version: String,
    /// The token of numbers not listed in `numbers` (a system user's token usually
    /// covers every number of a WhatsApp Business Account). Empty: none.
    pub access_token: Secret,
    /// Per business number: its own token and send rate.
    pub numbers: Vec<GraphNumber>,
    /// Handle only the numbers listed in `numbers` and leave the others to another
    /// deployment (sharding by number; also keeps test pipelines on a shared broker
    /// apart). False: every number, with `access_token` when not listed.
    pub only_listed_numbers: bool,
    /// A Graph API call that takes longer has failed.
    pub request_timeout_ms: u64,
}

/// One business number's Graph API settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraphNumber {
    pub phone_number_id: String,
    /// Empty: the top-level `access_token`.
    pub access_token: Secret,
    /// Messages per second this number may send; 0: `[sinks.whatsapp]`'s default.
    pub messages_per_second: u32,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            base_url: "https://graph.facebook.com".into(),
            api_version: "v23.0".into(),
            access_token: Secret::default(),
            numbers: Vec::new(),
            only_listed_numbers: false,
            request_timeout_ms: 30_000,
        }
    }
}

impl GraphConfig {
    /// The number's settings, if listed.
    pub fn number(&self, phone_number_id: &str) -> Option<&GraphNumber> {
        self.numbers
            .iter()
            .find(|n| n.phone_number_id == phone_number_id)
    }

    /// Whether this deployment handles the number at all.
    pub fn handles(&self, phone_number_id: &str) -> bool {
        !self.only_listed_numbers || self.number(phone_number_id).is_some()
    }

    /// The token to call the Graph API with for this number, if any.
    pub fn token(&self, phone_number_id: &str) -> Option<&Secret> {
        let own = self
            .number(phone_number_id)
            .map(|n| &n.access_token)
            .filter(|t| !t.is_empty());
        own.or(Some(&self.access_token).filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_token_wins_over_the_default_and_unlisted_numbers_fall_back() {
        let config = GraphConfig {
            access_token: Secret::new("default"),
            numbers: vec![
                GraphNumber {
                    phone_number_id: "1".into(),
                    access_token: Secret::new("own"),
                    messages_per_second: 0,
                },
                GraphNumber {
                    phone_number_id: "2".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(config.token("1").map(Secret::expose), Some("own"));
        assert_eq!(config.token("2").map(Secret::expose), Some("default"));
        assert_eq!(config.token("3").map(Secret::expose), Some("default"));
        assert!(config.handles("3"));
        let only = GraphConfig {
            only_listed_numbers: true,
            ..config
        };
        assert!(only.handles("1") && !only.handles("3"));
        assert_eq!(GraphConfig::default().token("1"), None);
    }
}
