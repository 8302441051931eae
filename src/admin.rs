//! `coexist admin bootstrap`: the directory changes that create an org and its first
//! admin (and optionally its first business number), so a fresh stack has someone
//! who can log in. Ids are deterministic, so running it twice changes nothing.

use events::directory::{Change, DirectoryChange, Role};

use crate::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// The org id (letters, digits, - _ . @ =; never an MQTT wildcard or level).
    #[arg(long)]
    pub org: String,
    /// The org's display name (default: the id).
    #[arg(long)]
    pub name: Option<String>,
    /// The first admin's agent id.
    #[arg(long, default_value = "admin")]
    pub agent_id: String,
    #[arg(long)]
    pub email: Option<String>,
    /// Where one-time codes go (digits with country code).
    #[arg(long)]
    pub phone: Option<String>,
    /// A business number to add; its access token and app secret are read from
    /// COEXIST_BOOTSTRAP_ACCESS_TOKEN and COEXIST_BOOTSTRAP_APP_SECRET.
    #[arg(long)]
    pub phone_number_id: Option<String>,
    #[arg(long, default_value = "")]
    pub display_phone_number: String,
}

/// The changes for `args`, in order (pure, so a test can check them).
pub fn changes(
    args: &BootstrapArgs,
    sealer: &api::seal::Sealer,
    secrets: (&str, &str),
    at_ms: i64,
) -> anyhow::Result<Vec<DirectoryChange>> {
    api::routes::valid_id("org", &args.org).map_err(|e| anyhow::anyhow!(e.message))?;
    api::routes::valid_id("agent_id", &args.agent_id).map_err(|e| anyhow::anyhow!(e.message))?;
    anyhow::ensure!(
        args.email.is_some() || args.phone.is_some(),
        "the admin needs --email or --phone to log in"
    );
    let mut list = vec![
        Change::OrgCreated {
            name: args.name.clone().unwrap_or_else(|| args.org.clone()),
        },
        Change::AgentInvited {
            agent_id: args.agent_id.clone(),
            name: args.agent_id.clone(),
            email: args.email.as_ref().map(|e| e.trim().to_ascii_lowercase()),
            phone: args
                .phone
                .as_ref()
                .map(|p| api::routes::auth::normalize_phone(p)),
            role: Role::Admin,
            capacity: 10,
        },
    ];
    if let Some(number) = &args.phone_number_id {
        api::routes::valid_digits("phone_number_id", number)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        list.push(Change::BusinessNumberUpserted {
            phone_number_id: number.clone(),
            display_phone_number: args.display_phone_number.clone(),
            waba_id: None,
            access_token: sealer.seal(secrets.0),
            app_secret: sealer.seal(secrets.1),
        });
    }
    Ok(list
        .into_iter()
        .enumerate()
        .map(|(i, change)| DirectoryChange {
            id: format!("bootstrap:{}:{i}", args.org),
            org: args.org.clone(),
            issued_by: "bootstrap".into(),
            at_ms,
            change,
        })
        .collect())
}

/// Publishes the bootstrap changes and waits for the broker's acknowledgement; the
/// number's access token and app secret come from `COEXIST_BOOTSTRAP_ACCESS_TOKEN`
/// and `COEXIST_BOOTSTRAP_APP_SECRET` (never from arguments, which `ps` shows).
pub async fn bootstrap(config: &Config, args: &BootstrapArgs) -> anyhow::Result<()> {
    let token = std::env::var("COEXIST_BOOTSTRAP_ACCESS_TOKEN").unwrap_or_default();
    let secret = std::env::var("COEXIST_BOOTSTRAP_APP_SECRET").unwrap_or_default();
    bootstrap_with(config, args, (&token, &secret)).await
}

/// [`bootstrap`] with the number's `(access token, app secret)` given.
pub async fn bootstrap_with(
    config: &Config,
    args: &BootstrapArgs,
    secrets: (&str, &str),
) -> anyhow::Result<()> {
    let sealer = api::seal::Sealer::from_config(&config.sealing)?;
    let list = changes(args, &sealer, secrets, api::now_ms())?;
    let publisher = config.kafka.publisher("admin").await?;
    for change in &list {
        publisher
            .send_json(
                events::topics::DIRECTORY_CHANGES,
                &change.org,
                change,
                vec![],
            )
            .await?;
    }
    println!(
        "org {} with admin {}: {} directory changes published; log in with POST /v1/auth/otp/request",
        args.org,
        args.agent_id,
        list.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(org: &str, agent_id: &str) -> BootstrapArgs {
        BootstrapArgs {
            org: org.into(),
            name: None,
            agent_id: agent_id.into(),
            email: Some("a@b.test".into()),
            phone: None,
            phone_number_id: None,
            display_phone_number: String::new(),
        }
    }

    #[test]
    fn bootstrap_refuses_ids_that_are_mqtt_wildcards_or_levels() {
        let sealer = api::seal::Sealer::from_config(&Default::default()).unwrap();
        for bad in ["+", "#", "a/b", "$SYS", "", "a+b"] {
            assert!(
                changes(&args(bad, "admin"), &sealer, ("", ""), 0).is_err(),
                "{bad:?}"
            );
            assert!(
                changes(&args("acme", bad), &sealer, ("", ""), 0).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            changes(&args("acme", "admin"), &sealer, ("", ""), 0)
                .unwrap()
                .len(),
            2
        );
    }
}
