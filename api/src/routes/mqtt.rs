//! `/v1/mqtt/credentials`: the device's own MQTT login, limited by the broker to the
//! caller's inbox and org.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::config::MqttBroker;
use crate::error::{ApiError, ApiResult};
use crate::mqtt_access;
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MqttCredentials {
    pub host: String,
    pub port: u16,
    /// Also the only client id these credentials accept.
    pub username: String,
    pub password: String,
    pub client_id: String,
    /// Where this agent's assignments, new messages and command results arrive.
    pub inbox_topic: String,
    /// Subscribe to `.../conversations/#` or to single conversations.
    pub conversations_topic: String,
    pub presence_topic: String,
}

/// Issue (or re-issue, with a new password) this device's MQTT credentials.
#[utoipa::path(post, path = "/v1/mqtt/credentials", tag = "mqtt", security(("bearer" = [])),
    responses((status = 200, body = MqttCredentials)))]
pub async fn credentials(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<MqttCredentials>> {
    // Both become topic levels of the ACL: never a wildcard, whatever the token says.
    crate::routes::valid_id("org", &caller.org)?;
    crate::routes::valid_id("agent_id", &caller.user_id)?;
    let prefix = &state.mqtt.topic_prefix;
    let username = format!("{}:{}:{}", caller.org, caller.user_id, caller.session_id);
    let password = crate::auth::sessions::random_id(24);
    let correlation = crate::auth::sessions::random_id(8);
    match state.config.mqtt_broker {
        // EMQX asks the hooks (crate::emqx), which check this hash and the session.
        MqttBroker::Emqx => {
            let stored = crate::emqx::store_password(&state, &caller.session_id, &password)
                .await
                .map_err(ApiError::unavailable)?;
            if !stored {
                return Err(ApiError::unauthorized("session ended"));
            }
        }
        MqttBroker::Mosquitto => {
            let commands = mqtt_access::provision_commands(
                prefix,
                &caller.org,
                &caller.user_id,
                &username,
                &password,
                &correlation,
            );
            mqtt_access::run(&state.mqtt, &commands, &correlation)
                .await
                .map_err(ApiError::unavailable)?;
        }
    }
    let host = if state.config.mqtt_public_host.is_empty() {
        state.mqtt.host.clone()
    } else {
        state.config.mqtt_public_host.clone()
    };
    let port = if state.config.mqtt_public_port == 0 {
        state.mqtt.port
    } else {
        state.config.mqtt_public_port
    };
    Ok(Json(MqttCredentials {
        host,
        port,
        client_id: username.clone(),
        username,
        password,
        inbox_topic: format!("{prefix}/{}/agents/{}/inbox", caller.org, caller.user_id),
        conversations_topic: format!("{prefix}/{}/conversations/#", caller.org),
        presence_topic: format!("{prefix}/{}/presence/{}", caller.org, caller.user_id),
    }))
}
