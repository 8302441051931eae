//! Per-device MQTT credentials, enforced by the broker itself: each device gets its
//! own client (username = client id = `{org}:{agent_id}:{session_id}`, random
//! password) in Mosquitto's dynamic-security plugin, with a role per agent that may
//! subscribe only to the agent's own inbox and the org's conversation and presence
//! topics, and publish only its own presence and conversation activity. The broker
//! refuses everything else, so one org can never read another's topics.
//!
//! Commands go over dynsec's `$CONTROL/dynamic-security/v1` API, as the service
//! client (whose role may use it; see scripts/stack). With EMQX (docker-compose) the
//! same ACLs would be expressed through its JWT authentication instead.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use runtime::mqtt::MqttConnection;
use serde_json::{Value, json};

const CONTROL: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE: &str = "$CONTROL/dynamic-security/v1/response";

/// What an agent's device may do, as dynsec ACLs.
pub fn agent_acls(prefix: &str, org: &str, agent_id: &str) -> Vec<Value> {
    let acl = |kind: &str, topic: String| json!({ "acltype": kind, "topic": topic, "priority": 0, "allow": true });
    vec![
        acl(
            "subscribePattern",
            format!("{prefix}/{org}/agents/{agent_id}/inbox"),
        ),
        acl(
            "subscribePattern",
            format!("{prefix}/{org}/conversations/#"),
        ),
        acl("subscribePattern", format!("{prefix}/{org}/presence/#")),
        acl(
            "publishClientSend",
            format!("{prefix}/{org}/presence/{agent_id}"),
        ),
        acl(
            "publishClientSend",
            format!("{prefix}/{org}/conversations/+/activity"),
        ),
    ]
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

/// Deletes a device's client (its session ended).
pub fn revoke_commands(username: &str, correlation: &str) -> Value {
    json!({ "commands": [
        { "command": "deleteClient", "username": username, "correlationData": correlation },
    ]})
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
/// command failed.
pub async fn run(
    mqtt: &MqttConnection,
    commands: &Value,
    correlation: &str,
) -> Result<(), MqttAccessError> {
    let client_id = format!("coexist-api-{}", crate::auth::sessions::random_id(8));
    let mut options = MqttOptions::new(client_id, &mqtt.host, mqtt.port);
    options
        .set_credentials(&mqtt.username, mqtt.password.expose())
        .set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true);
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
                        None => Ok(()),
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
}
