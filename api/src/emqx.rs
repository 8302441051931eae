//! EMQX's HTTP authentication and authorization hooks: how devices log in to EMQX
//! (deployments) with the credentials `POST /v1/mqtt/credentials` issues, under the
//! same rule Mosquitto's dynamic-security roles render ([`events::access`]).
//!
//! Served on their own listener (`[api] hooks_listen`), reachable by the broker
//! only, never on the public one: EMQX posts
//! - `POST /emqx/authn` `{"username":"${username}","password":"${password}","clientid":"${clientid}"}`
//! - `POST /emqx/authz` `{"username":"${username}","clientid":"${clientid}","topic":"${topic}","action":"${action}"}`
//!
//! and reads `{"result":"allow"|"deny"|"ignore","is_superuser":bool}` (EMQX 5's
//! documented shapes; `deploy/emqx/emqx.conf` configures both). A device logs in as
//! `{org}:{agent}:{session}` with the client id equal to its username while its
//! session is live and the password matches the hash stored with the session; the
//! service account of `[mqtt]` is the superuser. Nothing else gets in, and the
//! answer is never `ignore`: EMQX would pass an ignored request to the next source.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use mongodb::bson::{Document, doc};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::state::AppState;

/// The hooks' paths on the internal listener (deploy/emqx/emqx.conf calls them).
pub const AUTHN_PATH: &str = "/emqx/authn";
pub const AUTHZ_PATH: &str = "/emqx/authz";

/// Where a session keeps the hash of its device's broker password (EMQX only).
pub const PASSWORD_HASH_FIELD: &str = "mqtt_password_hash";

/// EMQX's authentication request (the body template in emqx.conf).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthnRequest {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub clientid: String,
}

/// EMQX's authorization request.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthzRequest {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub clientid: String,
    #[serde(default)]
    pub topic: String,
    /// `publish` or `subscribe`.
    #[serde(default)]
    pub action: String,
}

/// `allow`, `deny` or `ignore` (we never answer `ignore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The hooks' answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub result: Verdict,
    pub is_superuser: bool,
}

impl Answer {
    const DENY: Answer = Answer {
        result: Verdict::Deny,
        is_superuser: false,
    };
}

/// The stored form of a device password: HMAC-SHA256 under the server's pepper,
/// hex. A leaked sessions collection gives no broker logins.
pub fn password_hash(pepper: &[u8], password: &str) -> String {
    let mut mac = mac(pepper);
    mac.update(password.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn mac(pepper: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(pepper).unwrap_or_else(|_| unreachable!())
}

/// Does `password` match `stored` (constant time)?
fn password_matches(pepper: &[u8], password: &str, stored: &str) -> bool {
    let Ok(expected) = hex::decode(stored) else {
        return false;
    };
    let mut mac = mac(pepper);
    mac.update(password.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// What authentication needs to know about a device's session.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub org: String,
    pub agent_id: String,
    pub live: bool,
    pub password_hash: Option<String>,
}

/// The authentication decision, pure: the service account is the superuser; a
/// device gets in with its own client id, a live session of the org and agent its
/// username names, and the password whose hash that session stores.
pub fn authenticate(
    service: &runtime::mqtt::MqttConnection,
    pepper: &[u8],
    request: &AuthnRequest,
    session: Option<&SessionView>,
) -> Answer {
    if !service.password.is_empty()
        && request.username == service.username
        && constant_time_eq(
            request.password.as_bytes(),
            service.password.expose().as_bytes(),
        )
    {
        return Answer {
            result: Verdict::Allow,
            is_superuser: true,
        };
    }
    let Some((org, agent, _)) = crate::mqtt_access::parse_username(&request.username) else {
        return Answer::DENY;
    };
    let ok = request.clientid == request.username
        && session.is_some_and(|s| {
            s.live
                && s.org == org
                && s.agent_id == agent
                && s.password_hash
                    .as_deref()
                    .is_some_and(|h| password_matches(pepper, &request.password, h))
        });
    if ok {
        Answer {
            result: Verdict::Allow,
            is_superuser: false,
        }
    } else {
        Answer::DENY
    }
}

/// The authorization decision, pure: [`events::access::may`] for the device the
/// username names (its own client id only); everyone else is denied (the service
/// account is a superuser, which EMQX does not ask about).
pub fn authorize(prefix: &str, request: &AuthzRequest) -> Answer {
    use events::access::{Action, may};
    let action = match request.action.as_str() {
        "publish" => Action::Publish,
        "subscribe" => Action::Subscribe,
        _ => return Answer::DENY,
    };
    let allowed = request.clientid == request.username
        && crate::mqtt_access::parse_username(&request.username)
            .is_some_and(|(org, agent, _)| may(prefix, org, agent, action, &request.topic));
    Answer {
        result: if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        is_superuser: false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The hooks' router, for the internal listener.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(AUTHN_PATH, post(authn))
        .route(AUTHZ_PATH, post(authz))
        .with_state(state)
}

async fn authn(State(state): State<AppState>, Json(request): Json<AuthnRequest>) -> Json<Answer> {
    let session = match crate::mqtt_access::parse_username(&request.username) {
        Some((_, _, session_id)) => match load_session(&state, session_id).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "emqx authn: session lookup failed; denying");
                return Json(Answer::DENY);
            }
        },
        None => None,
    };
    Json(authenticate(
        &state.mqtt,
        &state.pepper,
        &request,
        session.as_ref(),
    ))
}

async fn authz(State(state): State<AppState>, Json(request): Json<AuthzRequest>) -> Json<Answer> {
    Json(authorize(&state.mqtt.topic_prefix, &request))
}

async fn load_session(
    state: &AppState,
    session_id: &str,
) -> mongodb::error::Result<Option<SessionView>> {
    let found = state
        .db
        .collection::<Document>(crate::auth::sessions::SESSIONS)
        .find_one(doc! { "_id": session_id })
        .await?;
    let now = crate::now_ms();
    Ok(found.map(|d| SessionView {
        org: d.get_str("org").unwrap_or_default().to_string(),
        agent_id: d.get_str("agent_id").unwrap_or_default().to_string(),
        live: matches!(
            d.get("revoked_at_ms"),
            None | Some(mongodb::bson::Bson::Null)
        ) && crate::routes::millis(&d, "expires_at_ms").is_some_and(|e| e > now),
        password_hash: d.get_str(PASSWORD_HASH_FIELD).ok().map(str::to_string),
    }))
}

/// Stores the hash of a device's new broker password with its session.
pub async fn store_password(
    state: &AppState,
    session_id: &str,
    password: &str,
) -> mongodb::error::Result<bool> {
    let hash = password_hash(&state.pepper, password);
    let updated = state
        .db
        .collection::<Document>(crate::auth::sessions::SESSIONS)
        .update_one(
            doc! { "_id": session_id },
            doc! { "$set": { PASSWORD_HASH_FIELD: hash } },
        )
        .await?;
    Ok(updated.matched_count == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> runtime::mqtt::MqttConnection {
        runtime::mqtt::MqttConnection {
            password: runtime::Secret::new("svc-pw"),
            ..Default::default()
        }
    }

    fn device(password: &str) -> AuthnRequest {
        AuthnRequest {
            username: "acme:ann:s1".into(),
            password: password.into(),
            clientid: "acme:ann:s1".into(),
        }
    }

    #[test]
    fn a_device_needs_its_live_session_and_password() {
        let pepper = b"pepper";
        let session = SessionView {
            org: "acme".into(),
            agent_id: "ann".into(),
            live: true,
            password_hash: Some(password_hash(pepper, "pw")),
        };
        let allow = Answer {
            result: Verdict::Allow,
            is_superuser: false,
        };
        assert_eq!(
            authenticate(&service(), pepper, &device("pw"), Some(&session)),
            allow
        );
        assert_eq!(
            authenticate(&service(), pepper, &device("nope"), Some(&session)),
            Answer::DENY
        );
        assert_eq!(
            authenticate(&service(), pepper, &device("pw"), None),
            Answer::DENY
        );
        let ended = SessionView {
            live: false,
            ..session.clone()
        };
        assert_eq!(
            authenticate(&service(), pepper, &device("pw"), Some(&ended)),
            Answer::DENY
        );
        let other_agent = SessionView {
            agent_id: "bob".into(),
            ..session.clone()
        };
        assert_eq!(
            authenticate(&service(), pepper, &device("pw"), Some(&other_agent)),
            Answer::DENY
        );
        let mut stolen_id = device("pw");
        stolen_id.clientid = "acme:bob:s2".into();
        assert_eq!(
            authenticate(&service(), pepper, &stolen_id, Some(&session)),
            Answer::DENY
        );
        // The hash is keyed: another server's pepper does not match.
        assert_eq!(
            authenticate(&service(), b"other", &device("pw"), Some(&session)),
            Answer::DENY
        );
    }

    #[test]
    fn the_service_account_is_the_superuser_and_only_with_its_password() {
        let svc = AuthnRequest {
            username: "coexist".into(),
            password: "svc-pw".into(),
            clientid: "anything".into(),
        };
        assert!(authenticate(&service(), b"p", &svc, None).is_superuser);
        let wrong = AuthnRequest {
            password: "x".into(),
            ..svc
        };
        assert_eq!(authenticate(&service(), b"p", &wrong, None), Answer::DENY);
        // An empty service password never matches an empty one.
        let empty = runtime::mqtt::MqttConnection::default();
        let blank = AuthnRequest {
            username: "coexist".into(),
            password: String::new(),
            clientid: String::new(),
        };
        assert_eq!(authenticate(&empty, b"p", &blank, None), Answer::DENY);
    }

    #[test]
    fn authorization_is_the_access_rule() {
        let ask = |action: &str, topic: &str| {
            authorize(
                "coexist",
                &AuthzRequest {
                    username: "acme:ann:s1".into(),
                    clientid: "acme:ann:s1".into(),
                    topic: topic.into(),
                    action: action.into(),
                },
            )
            .result
        };
        assert_eq!(
            ask("subscribe", "coexist/acme/agents/ann/inbox"),
            Verdict::Allow
        );
        assert_eq!(
            ask("subscribe", "coexist/acme/agents/bob/inbox"),
            Verdict::Deny
        );
        assert_eq!(ask("publish", "coexist/acme/presence/ann"), Verdict::Allow);
        assert_eq!(ask("publish", "coexist/acme/presence/bob"), Verdict::Deny);
        assert_eq!(ask("all", "coexist/acme/presence/ann"), Verdict::Deny);
    }
}
