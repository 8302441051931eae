//! Per-device MQTT credentials, enforced by the broker itself: each device gets its
//! own client (username = client id = `{org}:{agent_id}:{session_id}`, random
//! password) in Mosquitto's dynamic-security plugin, with a role per agent that may
//! subscribe only to the agent's own inbox and the org's conversation and presence
//! topics, and publish only its own presence (`.../presence/{agent_id}`) and
//! conversation activity (`.../conversations/+/activity/{agent_id}`). The broker
//! refuses everything else, so one org can never read another's topics.
//!
//! Commands go over dynsec's `$CONTROL/dynamic-security/v1` API, as the service
//! client (whose role may use it; see scripts/stack). With EMQX (docker-compose) the
//! same rule is served through its HTTP authorization hook.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use runtime::mqtt::MqttConnection;
use serde_json::{Value, json};

const CONTROL: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";

/// What an agent's device may do, as dynsec ACLs: a rendering of
/// [`events::access::grants`], the one rule every broker and the live feed apply.
pub fn agent_acls(prefix: &str, org: &str, agent_id: &str) -> Vec<Value> {
    use events::access::{Action, grants};
    grants(prefix, org, agent_id)
        .into_iter()
        .map(|g| {
            let kind = match g.action {
                Action::Subscribe => "subscribePattern",
                Action::Publish => "publishClientSend",
            };
            json!({ "acltype": kind, "topic": g.filter, "priority": 0, "allow": true })
        })
        .collect()
}

pub fn role_name(org: &str, agent_id: &str) -> String {
    format!("agent:{org}:{agent_id}")
}

/// The dynsec commands that (re)create a device's client with a fresh password.
pub fn provision_commands(
    prefix: &str,
    org: &str,
    agent_id: &str,
    username: &str,
    password: &str,
    correlation: &str,
) -> Value {
    let role = role_name(org, agent_id);
    json!({ "commands": [
        { "command": "createRole", "rolename": role, "acls": agent_acls(prefix, org, agent_id) },
        { "command": "deleteClient", "username": username },
        { "command": "createClient", "username": username, "password": password,
          "clientid": username, "roles": [ { "rolename": role } ],
          "correlationData": correlation },
    ]})
}

/// A device's broker username (also its client id): `{org}:{agent_id}:{session_id}`.
pub fn username(org: &str, agent_id: &str, session_id: &str) -> String {
    format!("{org}:{agent_id}:{session_id}")
}

/// `(org, agent_id, session_id)` of a device's username; `None` for any other client
/// (the service, the dynsec admin, other applications'). Ids never hold `:`.
pub fn parse_username(username: &str) -> Option<(&str, &str, &str)> {
    let mut parts = username.split(':');
    let (org, agent, session) = (parts.next()?, parts.next()?, parts.next()?);
    let ours = parts.next().is_none()
        && [org, agent, session]
            .iter()
            .all(|id| events::ids::is_valid_id(id));
    ours.then_some((org, agent, session))
}

/// Deletes devices' clients (their sessions ended) in one message; the
/// correlation rides on the last command. A client that is already gone is fine.
pub fn revoke_commands(usernames: &[String], correlation: &str) -> Value {
    let last = usernames.len().saturating_sub(1);
    let commands: Vec<Value> = usernames
        .iter()
        .enumerate()
        .map(|(i, username)| {
            let mut command = json!({ "command": "deleteClient", "username": username });
            if i == last {
                command["correlationData"] = json!(correlation);
            }
            command
        })
        .collect();
    json!({ "commands": commands })
}

/// Lists every client's username.
pub fn list_commands(correlation: &str) -> Value {
    json!({ "commands": [
        { "command": "listClients", "verbose": false, "count": -1, "offset": 0,
          "correlationData": correlation },
    ]})
}

/// The usernames in a `listClients` response.
pub fn listed_usernames(response: &Value) -> Vec<String> {
    response["data"]["clients"]
        .as_array()
        .map(|clients| {
            clients
                .iter()
                .filter_map(|c| c.as_str().or_else(|| c["username"].as_str()))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The device clients to delete: those of an org this API serves (`orgs`: one with
/// sessions in its database; a shared broker may carry other deployments' clients)
/// whose session is not live (revoked, expired or unknown).
pub fn stale_clients(
    usernames: &[String],
    orgs: &std::collections::HashSet<String>,
    live_sessions: &std::collections::HashSet<String>,
) -> Vec<String> {
    usernames
        .iter()
        .filter(|u| {
            parse_username(u).is_some_and(|(org, _, session)| {
                orgs.contains(org) && !live_sessions.contains(session)
            })
        })
        .cloned()
        .collect()
}

/// Deletes the broker clients named (their sessions ended).
pub async fn delete_clients(
    mqtt: &MqttConnection,
    usernames: &[String],
) -> Result<(), MqttAccessError> {
    if usernames.is_empty() {
        return Ok(());
    }
    let correlation = crate::auth::sessions::random_id(8);
    match run(
        mqtt,
        &revoke_commands(usernames, &correlation),
        &correlation,
    )
    .await
    {
        // The last one was already gone: fine, that is the point.
        Ok(_) | Err(MqttAccessError::Refused(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// One pass of the reconcile: deletes every device client of this API's orgs whose
/// session is no longer live (revoked, expired, or unknown), so a broker login never
/// outlives its session, even when the deletion at revocation time failed. Returns
/// how many were deleted.
pub async fn reconcile(
    mqtt: &MqttConnection,
    db: &mongodb::Database,
    now_ms: i64,
) -> anyhow::Result<usize> {
    use futures::TryStreamExt;
    use mongodb::bson::{Document, doc};
    let correlation = crate::auth::sessions::random_id(8);
    let listed = run(mqtt, &list_commands(&correlation), &correlation).await?;
    let usernames = listed_usernames(&listed);
    let devices: Vec<(&str, &str)> = usernames
        .iter()
        .filter_map(|u| parse_username(u).map(|(org, _, session)| (org, session)))
        .collect();
    if devices.is_empty() {
        return Ok(0);
    }
    let sessions = db.collection::<Document>(crate::auth::sessions::SESSIONS);
    let session_ids: Vec<&str> = devices.iter().map(|(_, s)| *s).collect();
    let found: Vec<Document> = sessions
        .find(doc! { "_id": { "$in": &session_ids } })
        .projection(doc! { "_id": 1, "org": 1, "revoked_at_ms": 1, "expires_at_ms": 1 })
        .await?
        .try_collect()
        .await?;
    let live: std::collections::HashSet<String> = found
        .iter()
        .filter(|d| {
            matches!(
                d.get("revoked_at_ms"),
                None | Some(mongodb::bson::Bson::Null)
            ) && crate::routes::millis(d, "expires_at_ms").is_some_and(|e| e > now_ms)
        })
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect();
    let mut orgs: Vec<&str> = devices.iter().map(|(o, _)| *o).collect();
    orgs.sort_unstable();
    orgs.dedup();
    let ours: std::collections::HashSet<String> = sessions
        .distinct("org", doc! { "org": { "$in": &orgs } })
        .await?
        .into_iter()
        .filter_map(|o| o.as_str().map(str::to_string))
        .collect();
    let stale = stale_clients(&usernames, &ours, &live);
    delete_clients(mqtt, &stale).await?;
    Ok(stale.len())
}

#[derive(Debug, thiserror::Error)]
pub enum MqttAccessError {
    #[error("mqtt broker: {0}")]
    Broker(String),
    #[error("dynamic security refused: {0}")]
    Refused(String),
    #[error("no answer from dynamic security within 10 s")]
    Timeout,
}

/// Sends `commands` and waits for the response carrying `correlation`; fails if that
/// command failed, else returns its response.
pub async fn run(
    mqtt: &MqttConnection,
    commands: &Value,
    correlation: &str,
) -> Result<Value, MqttAccessError> {
    let client_id = format!("coexist-api-{}", crate::auth::sessions::random_id(8));
    let mut options = MqttOptions::new(client_id, &mqtt.host, mqtt.port);
    options
        .set_credentials(&mqtt.username, mqtt.password.expose())
        .set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true)
        // A listClients answer on a busy broker is large.
        .set_max_packet_size(16 * 1024 * 1024, 1024 * 1024);
    let (client, mut events) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        client
            .subscribe(RESPONSE, QoS::AtLeastOnce)
            .await
            .map_err(|e| MqttAccessError::Broker(e.to_string()))?;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    client
                        .publish(CONTROL, QoS::AtLeastOnce, false, commands.to_string())
                        .await
                        .map_err(|e| MqttAccessError::Broker(e.to_string()))?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE => {
                    let Ok(answer) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let Some(mine) = answer["responses"]
                        .as_array()
                        .and_then(|r| r.iter().find(|r| r["correlationData"] == correlation))
                    else {
                        continue;
                    };
                    return match mine["error"].as_str() {
                        Some(error) => Err(MqttAccessError::Refused(error.to_string())),
                        None => Ok(mine.clone()),
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(MqttAccessError::Broker(e.to_string())),
            }
        }
    })
    .await
    .unwrap_or(Err(MqttAccessError::Timeout));
    let _ = client.disconnect().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acls_never_leave_the_org() {
        for acl in agent_acls("coexist", "acme", "ann") {
            let topic = acl["topic"].as_str().unwrap();
            assert!(topic.starts_with("coexist/acme/"), "{topic}");
        }
        let commands = provision_commands("coexist", "acme", "ann", "acme:ann:s1", "pw", "c1");
        assert_eq!(commands["commands"][2]["clientid"], "acme:ann:s1");
    }

    #[test]
    fn stale_clients_are_our_orgs_devices_without_a_live_session() {
        let usernames: Vec<String> = [
            "acme:ann:live",
            "acme:ann:ended",
            "acme:bob:gone",
            "other:eve:ended",
            "coexist",
            "admin",
            "a:b:c:d",
        ]
        .map(String::from)
        .to_vec();
        let orgs = ["acme".to_string()].into();
        let live = ["live".to_string()].into();
        assert_eq!(
            stale_clients(&usernames, &orgs, &live),
            vec!["acme:ann:ended".to_string(), "acme:bob:gone".to_string()]
        );
        assert_eq!(parse_username("acme:ann:s1"), Some(("acme", "ann", "s1")));
        assert_eq!(parse_username("+:ann:s1"), None);
    }

    #[test]
    fn one_message_deletes_many_clients() {
        let commands = revoke_commands(&["a:b:1".into(), "a:b:2".into()], "c");
        assert_eq!(commands["commands"][1]["username"], "a:b:2");
        assert_eq!(commands["commands"][1]["correlationData"], "c");
        assert!(commands["commands"][0].get("correlationData").is_none());
        let listed = json!({ "data": { "clients": ["a:b:1", "coexist"] } });
        assert_eq!(listed_usernames(&listed), vec!["a:b:1", "coexist"]);
    }
}
