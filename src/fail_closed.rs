//! Fail closed: a role that serves the network (the API, ingest's webhook receiver)
//! refuses to start on a non-loopback address unless its secrets are real.
//!
//! "Real" means set, and not one of the values this repository publishes: the
//! example config's keys (`coexist.example.toml`, read at build time, so a key added
//! there is refused here without a second list) and `deploy/.env.example`'s
//! `replace-with-...` placeholders. `dev_mode` (which logs one-time codes) counts as
//! a missing secret. On loopback everything is allowed: that is the local stack,
//! the demo and the tests.
//!
//! The decision is pure ([`missing_api_secrets`], [`missing_ingest_secrets`] over the
//! config; [`is_loopback_listen`] over the address), so it is unit-tested; the roles
//! call [`refuse_public_without_secrets`] first thing.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use crate::Config;

/// The example config, as published.
const EXAMPLE: &str = include_str!("../coexist.example.toml");

/// Every secret value the example config publishes.
fn published() -> &'static Vec<String> {
    static PUBLISHED: OnceLock<Vec<String>> = OnceLock::new();
    PUBLISHED.get_or_init(|| {
        let Ok(example) = toml::from_str::<Config>(EXAMPLE) else {
            return Vec::new();
        };
        let mut values: Vec<String> = Vec::new();
        values.extend(
            example
                .api
                .jwt_keys
                .iter()
                .map(|k| k.secret.expose().into()),
        );
        values.push(example.api.otp_pepper.expose().into());
        values.extend(example.sealing.keys.iter().map(|k| k.key.expose().into()));
        values.push(example.ingest.verify_token.expose().into());
        values.extend(example.ingest.app_secrets.iter().map(|s| s.expose().into()));
        values.push(example.mqtt.password.expose().into());
        values.retain(|v| !v.is_empty());
        values
    })
}

/// Not a secret anyone could use: empty, published, or a placeholder.
fn is_placeholder(value: &str) -> bool {
    value.trim().is_empty()
        || value.starts_with("replace-with")
        || published().iter().any(|p| p == value)
}

/// Is `listen` an address only this machine can reach? A name other than
/// `localhost`, or anything unparseable, is treated as public.
pub fn is_loopback_listen(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    if let Some((host, _port)) = listen.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return ip.is_loopback();
        }
    }
    false
}

/// The API's keys that are missing or published, by config path. Empty means the
/// API may serve a public address.
pub fn missing_api_secrets(config: &Config) -> Vec<&'static str> {
    let api = &config.api;
    let mut missing = Vec::new();
    if api.dev_mode {
        missing.push("api.dev_mode (must be false)");
    }
    if api.jwt_keys.is_empty()
        || api
            .jwt_keys
            .iter()
            .any(|k| is_placeholder(k.secret.expose()))
    {
        missing.push("api.jwt_keys");
    }
    if is_placeholder(api.otp_pepper.expose()) {
        missing.push("api.otp_pepper");
    }
    if !sealing_keys_are_real(config) {
        missing.push("sealing.keys");
    }
    missing
}

/// The sealing keys are set and none is published: without them the API seals with
/// a key no other process can open, and ingest cannot open numbers' app secrets.
fn sealing_keys_are_real(config: &Config) -> bool {
    let keys = &config.sealing.keys;
    !keys.is_empty() && !keys.iter().any(|k| is_placeholder(k.key.expose()))
}

/// Ingest's secrets that are missing or published.
pub fn missing_ingest_secrets(config: &Config) -> Vec<&'static str> {
    let ingest = &config.ingest;
    let mut missing = Vec::new();
    if is_placeholder(ingest.verify_token.expose()) {
        missing.push("ingest.verify_token");
    }
    // Numbers' own app secrets come from the directory (sealed): the static seed
    // may be empty, but never published values.
    if ingest
        .app_secrets
        .iter()
        .any(|s| is_placeholder(s.expose()))
    {
        missing.push("ingest.app_secrets");
    }
    if !sealing_keys_are_real(config) {
        missing.push("sealing.keys");
    }
    missing
}

/// `Err` naming the missing keys when `listen` is public and `missing` is not empty.
pub fn refuse_public_without_secrets(
    what: &str,
    listen: &str,
    missing: &[&'static str],
) -> anyhow::Result<()> {
    if missing.is_empty() || is_loopback_listen(listen) {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {what} on {listen}, which is not a loopback address: set real \
         values for {} (the example config's published keys, empty keys and dev_mode are \
         for 127.0.0.1 only)",
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Config {
        toml::from_str(EXAMPLE).unwrap()
    }

    fn real() -> Config {
        let mut config = example();
        config.api.dev_mode = false;
        config.api.jwt_keys = vec![api::config::JwtKey {
            kid: "k".into(),
            secret: runtime::Secret::new("a-real-jwt-key-0123456789abcdef"),
        }];
        config.api.otp_pepper = runtime::Secret::new("a-real-pepper-0123456789");
        config.sealing.keys = vec![runtime::seal::SealKey {
            id: "s".into(),
            key: runtime::Secret::new("cmVhbC1zZWFsLWtleS0zMi1ieXRlcy1sb25nLW9rIQ=="),
        }];
        config.ingest.verify_token = runtime::Secret::new("a-real-verify-token");
        config.ingest.app_secrets = vec![runtime::Secret::new("a-real-app-secret")];
        config
    }

    #[test]
    fn the_example_secrets_are_all_refused_on_a_public_address() {
        let config = example();
        assert_eq!(
            missing_api_secrets(&config),
            vec![
                "api.dev_mode (must be false)",
                "api.jwt_keys",
                "api.otp_pepper",
                "sealing.keys"
            ]
        );
        assert_eq!(
            missing_ingest_secrets(&config),
            vec!["ingest.verify_token", "ingest.app_secrets", "sealing.keys"]
        );
        let err =
            refuse_public_without_secrets("the API", "0.0.0.0:8081", &missing_api_secrets(&config))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("api.jwt_keys") && err.contains("api.otp_pepper"),
            "{err}"
        );
        // The same config on loopback is the local stack: allowed.
        assert!(
            refuse_public_without_secrets(
                "the API",
                "127.0.0.1:8081",
                &missing_api_secrets(&config)
            )
            .is_ok()
        );
    }

    #[test]
    fn defaults_empty_and_placeholders_are_missing() {
        let config = Config::default();
        assert_eq!(
            missing_api_secrets(&config),
            vec!["api.jwt_keys", "api.otp_pepper", "sealing.keys"]
        );
        let mut config = real();
        config.ingest.app_secrets = vec![runtime::Secret::new("replace-with-meta-app-secret")];
        assert_eq!(missing_ingest_secrets(&config), vec!["ingest.app_secrets"]);
    }

    #[test]
    fn real_secrets_serve_anywhere() {
        let config = real();
        assert!(missing_api_secrets(&config).is_empty());
        assert!(missing_ingest_secrets(&config).is_empty());
    }

    #[test]
    fn what_counts_as_loopback() {
        for local in [
            "127.0.0.1:8081",
            "[::1]:8081",
            "localhost:8081",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback_listen(local), "{local}");
        }
        for public in [
            "0.0.0.0:8081",
            "[::]:8081",
            "10.0.0.5:80",
            "api.example.com:443",
            "junk",
        ] {
            assert!(!is_loopback_listen(public), "{public}");
        }
    }
}
