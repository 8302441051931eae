//! `/v1/auth`: OTP login, refresh, logout and per-device sessions.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use events::delivery::OutboundMessage;
use events::directory::Role;
use mongodb::bson::{self, Document, doc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::auth::jwt::Claims;
use crate::auth::otp::{self, OtpState, RequestDecision, VerifyDecision};
use crate::auth::sessions::{self, RefreshDecision, RefreshToken, Session};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::now_ms;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpRequest {
    /// The user's email, or
    #[schema(pattern = r"^[^@]+@[^@]+$", max_length = 254)]
    pub email: Option<String>,
    /// their phone number (digits, with country code).
    #[schema(pattern = r"^\+?[0-9]{6,20}$")]
    pub phone: Option<String>,
    /// Needed only when the same email or phone belongs to users of several orgs.
    #[schema(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
    pub org: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OtpChallenge {
    pub challenge_id: String,
    pub expires_in_secs: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpVerify {
    #[schema(max_length = 64)]
    pub challenge_id: String,
    /// The six digits received.
    #[schema(pattern = r"^[0-9]{6}$")]
    pub code: String,
    /// A stable id of the device: one session per device.
    #[schema(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
    pub device_id: String,
    pub device_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: u64,
    /// Single use: every refresh returns a new one.
    pub refresh_token: String,
    pub session_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub session_id: String,
    pub device_id: String,
    pub device_name: Option<String>,
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
    /// The session of the token that asked.
    pub current: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub org: String,
    pub agent_id: String,
    pub role: String,
    pub name: Option<String>,
    pub session_id: String,
}

fn normalize_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

/// Digits only (`+1 (650) 555-1234` → `16505551234`), as WhatsApp ids are.
pub fn normalize_phone(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// A phone number as the API takes it (the spec's pattern `^\+?[0-9]{6,20}$`).
pub fn phone_is_valid(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    (6..=20).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
}

/// Ask for a one-time code. Always `202` with a challenge id, whether or not the user
/// exists, is within the resend cooldown or is locked out: the answer says nothing
/// about the account (no enumeration), and a code is sent only when the policy
/// allows, so the endpoint cannot be used to pump paid messages.
#[utoipa::path(post, path = "/v1/auth/otp/request", tag = "auth", request_body = OtpRequest,
    responses((status = 202, body = OtpChallenge), (status = 400, body = crate::error::ErrorBody)))]
pub async fn request_otp(
    State(state): State<AppState>,
    Body(req): Body<OtpRequest>,
) -> ApiResult<(StatusCode, Json<OtpChallenge>)> {
    use store::directory::Agent as A;
    let mut filter = doc! { A::ACTIVE: true };
    let email_ok = |e: &String| e.contains('@') && e.chars().count() <= 254;
    let phone_ok = |p: &String| phone_is_valid(p);
    if req.email.as_ref().is_some_and(|e| !email_ok(e))
        || req.phone.as_ref().is_some_and(|p| !phone_ok(p))
    {
        return Err(ApiError::invalid("the email or phone number is malformed"));
    }
    match (&req.email, &req.phone) {
        // Both given: the email decides.
        (Some(email), _) if email.contains('@') && email.chars().count() <= 254 => {
            filter.insert(A::EMAIL, normalize_email(email));
        }
        (None, Some(phone)) if phone_is_valid(phone) => {
            filter.insert(A::PHONE, normalize_phone(phone));
        }
        _ => return Err(ApiError::invalid("give either an email or a phone number")),
    }
    if let Some(org) = &req.org {
        crate::routes::valid_id("org", org)?;
        filter.insert(A::ORG, org);
    }
    let challenge_id = sessions::random_id(16);
    let answer = (
        StatusCode::ACCEPTED,
        Json(OtpChallenge {
            challenge_id: challenge_id.clone(),
            expires_in_secs: state.config.otp.ttl_secs,
        }),
    );
    let agents: Vec<store::directory::Agent> = {
        use futures::TryStreamExt;
        state
            .read(store::directory::AGENTS)
            .find(filter)
            .limit(2)
            .await?
            .try_collect()
            .await?
    };
    let [agent] = agents.as_slice() else {
        tracing::info!(
            matches = agents.len(),
            "otp requested for no single known user"
        );
        return Ok(answer);
    };
    if agent.org.is_empty() || agent.agent_id.is_empty() {
        return Ok(answer);
    }
    let (org, agent_id, phone) = (
        agent.org.clone(),
        agent.agent_id.clone(),
        agent.phone.clone(),
    );
    // The rest happens after the answer, so a known user's answer takes no longer
    // than an unknown one's (the lookup above is the same for both).
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(err) = issue_code(&state, &org, &agent_id, phone, &challenge_id).await {
            tracing::warn!(%org, %agent_id, error = %err.message, "one-time code not issued");
        }
    });
    Ok(answer)
}

/// Stores a new challenge for a known user and sends its code, if the policy allows
/// one now (not locked out, not within the resend cooldown). Two requests at once
/// send one code: the new state replaces the previous one only if it is unchanged.
async fn issue_code(
    state: &AppState,
    org: &str,
    agent_id: &str,
    phone: Option<String>,
    challenge_id: &str,
) -> ApiResult<()> {
    let policy = state.config.otp;
    let key = format!("{org}:{agent_id}");
    let otps = state.db.collection::<Document>(sessions::OTPS);
    let previous_doc = otps.find_one(doc! { "_id": &key }).await?;
    let previous = previous_doc
        .as_ref()
        .and_then(|d| bson::from_document::<OtpState>(d.clone()).ok());
    let now = now_ms();
    let attempts = match otp::on_request(previous.as_ref(), now, &policy) {
        RequestDecision::Send { attempts } => attempts,
        RequestDecision::Cooldown { .. } => {
            tracing::info!(%org, %agent_id, "otp within the resend cooldown: no code sent");
            return Ok(());
        }
        RequestDecision::Locked { .. } => {
            tracing::info!(%org, %agent_id, "otp requested while locked out: no code sent");
            return Ok(());
        }
    };
    let code = otp::new_code();
    let fresh = OtpState {
        challenge_id: challenge_id.to_string(),
        code_hash: otp::hash(&state.pepper, challenge_id, &code),
        expires_at_ms: now + (policy.ttl_secs as i64) * 1000,
        attempts,
        last_attempt_at_ms: previous.as_ref().map_or(0, |p| p.last_attempt_at_ms),
        last_sent_at_ms: now,
        used: false,
    };
    let mut stored = bson::to_document(&fresh).map_err(ApiError::unavailable)?;
    stored.insert("_id", &key);
    stored.insert("org", org);
    stored.insert("agent_id", agent_id);
    let swapped = match (&previous_doc, &previous) {
        (Some(_), Some(p)) => {
            otps.replace_one(
                doc! { "_id": &key, "challenge_id": &p.challenge_id,
                "last_sent_at_ms": p.last_sent_at_ms, "attempts": i64::from(p.attempts) },
                stored,
            )
            .await?
            .matched_count
                == 1
        }
        // A state this version cannot read: replaced (it holds no lock we can see).
        (Some(_), None) => {
            otps.replace_one(doc! { "_id": &key }, stored)
                .await?
                .matched_count
                == 1
        }
        (None, _) => match otps.insert_one(stored).await {
            Ok(_) => true,
            Err(err) if is_duplicate(&err) => false,
            Err(err) => return Err(err.into()),
        },
    };
    if !swapped {
        tracing::info!(%org, %agent_id, "another otp request or attempt won the race: no code sent");
        return Ok(());
    }
    if state.config.dev_mode {
        tracing::info!(%org, %agent_id, challenge = %challenge_id, %code, "one-time code (dev mode)");
    }
    deliver_code(state, org, phone, challenge_id, &code).await
}

fn is_duplicate(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(&*err.kind, ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == 11000)
}

/// Sends the code as a WhatsApp authentication template from the org's first
/// business number (`messages.outbound`, sealed, opened and sent by the whatsapp
/// sink).
async fn deliver_code(
    state: &AppState,
    org: &str,
    phone: Option<String>,
    challenge_id: &str,
    code: &str,
) -> ApiResult<()> {
    let Some(to) = phone.filter(|p| !p.is_empty()) else {
        tracing::warn!(%org, "user has no phone number: the code cannot be sent by WhatsApp");
        return Ok(());
    };
    use store::directory::BusinessNumber as N;
    let sender = state
        .read(store::directory::BUSINESS_NUMBERS)
        .find_one(doc! { N::ORG: org })
        .sort(doc! { N::KEY: 1 })
        .await?
        .map(|d| d.phone_number_id);
    let Some(phone_number_id) = sender else {
        tracing::warn!(%org, "org has no business number: the code cannot be sent by WhatsApp");
        return Ok(());
    };
    let message = OutboundMessage {
        id: format!("otp-{challenge_id}"),
        org: org.to_string(),
        conversation_id: events::ids::conversation_id(&phone_number_id, &to),
        phone_number_id: phone_number_id.clone(),
        to: to.clone(),
        sent_by: events::delivery::SENT_BY_AUTH.into(),
        at_ms: now_ms(),
        // Sealed: the code must not sit in clear on the topic (see
        // `OutboundPayload::Sealed`); only the whatsapp sink opens it.
        payload: events::outbound::OutboundPayload::sealed(
            state.sealer.seal(
                &auth_template(
                    &state.config.otp_template,
                    &state.config.otp_template_language,
                    code,
                )
                .to_string(),
            ),
        )
        .to_value(),
    };
    state
        .publisher
        .send_json(
            events::topics::MESSAGES_OUTBOUND,
            &phone_number_id,
            &message,
            vec![],
        )
        .await?;
    Ok(())
}

/// An authentication template with a copy-code button: the code fills the body's
/// parameter and the button's (the whatsapp sink adds the envelope).
pub fn auth_template(name: &str, language: &str, code: &str) -> serde_json::Value {
    let components = vec![
        serde_json::json!({ "type": "body", "parameters": [ { "type": "text", "text": code } ] }),
        serde_json::json!({ "type": "button", "sub_type": "url", "index": "0",
            "parameters": [ { "type": "text", "text": code } ] }),
    ];
    events::outbound::OutboundPayload::template(name, language, Some(components)).to_value()
}

fn locked(retry_after_ms: i64) -> ApiError {
    ApiError::too_many(
        "otp_locked",
        "too many wrong codes; try again later",
        (retry_after_ms.max(0) as u64).div_ceil(1000),
    )
}

/// Exchange a code for tokens; opens a session for the device (replacing its last).
///
/// Each attempt is paid for before the code is compared: one atomic update reserves
/// it (`otp::reservable`), so concurrent guesses cannot share one count. Wrong codes
/// count across the user's codes; `max_attempts` of them lock the user out.
#[utoipa::path(post, path = "/v1/auth/otp/verify", tag = "auth", request_body = OtpVerify,
    responses((status = 200, body = TokenPair), (status = 401, body = crate::error::ErrorBody),
              (status = 429, body = crate::error::ErrorBody)))]
pub async fn verify_otp(
    State(state): State<AppState>,
    Body(req): Body<OtpVerify>,
) -> ApiResult<Json<TokenPair>> {
    crate::routes::valid_id("device_id", &req.device_id)?;
    if req.code.len() != 6 || !req.code.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid("the code is six digits"));
    }
    if req.challenge_id.chars().count() > 64 {
        return Err(ApiError::invalid("challenge_id is too long"));
    }
    let policy = state.config.otp;
    let otps = state.db.collection::<Document>(sessions::OTPS);
    let Some(stored) = otps
        .find_one(doc! { "challenge_id": &req.challenge_id })
        .await?
    else {
        return Err(invalid_code());
    };
    let key = stored.get_str("_id").unwrap_or_default().to_string();
    let (org, agent_id) = (
        super::text(&stored, "org").unwrap_or_default(),
        super::text(&stored, "agent_id").unwrap_or_default(),
    );
    state.limit_verify(&key)?;
    let read = |d: Option<Document>| d.and_then(|d| bson::from_document::<OtpState>(d).ok());
    let now = now_ms();
    let refused = |decision: VerifyDecision| match decision {
        VerifyDecision::Expired => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "otp_expired",
            "the code has expired; ask for a new one",
        ),
        VerifyDecision::Locked { retry_after_ms } => locked(retry_after_ms),
        VerifyDecision::Reserve | VerifyDecision::Unknown => invalid_code(),
    };
    let decision = otp::on_verify(read(Some(stored)).as_ref(), &req.challenge_id, now, &policy);
    if decision != VerifyDecision::Reserve {
        return Err(refused(decision));
    }
    // Pay for the attempt before looking at the code.
    let reserved = otps
        .find_one_and_update(
            otp::reservable(&key, &req.challenge_id, now, &policy),
            otp::reservation_update(now),
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await?;
    let Some(reserved) = read(reserved) else {
        // Other attempts took the last ones (or the code expired) meanwhile.
        let current = read(otps.find_one(doc! { "_id": &key }).await?);
        return Err(refused(otp::on_verify(
            current.as_ref(),
            &req.challenge_id,
            now,
            &policy,
        )));
    };
    if !otp::matches(
        &state.pepper,
        &req.challenge_id,
        &req.code,
        &reserved.code_hash,
    ) {
        return Err(match otp::after_wrong(reserved.attempts, now, &policy) {
            Some(until) => locked(until - now),
            None => invalid_code(),
        });
    }
    // Compare-and-swap: one code, one session, even under a race; a login clears the
    // count of wrong codes.
    let spent = otps
        .update_one(
            doc! { "_id": &key, "challenge_id": &req.challenge_id, "used": false },
            doc! { "$set": { "used": true, "attempts": 0 } },
        )
        .await?;
    if spent.modified_count != 1 {
        return Err(invalid_code());
    }
    let agent = active_agent(&state, &org, &agent_id)
        .await?
        .ok_or_else(invalid_code)?;
    let role = agent.role.unwrap_or(Role::Agent).as_str();
    open_session(
        &state,
        &org,
        &agent_id,
        role,
        &req.device_id,
        req.device_name,
    )
    .await
}

fn invalid_code() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_code",
        "the code is wrong or spent",
    )
}

async fn active_agent(
    state: &AppState,
    org: &str,
    agent_id: &str,
) -> ApiResult<Option<store::directory::Agent>> {
    use store::directory::Agent as A;
    Ok(state
        .read(store::directory::AGENTS)
        .find_one(doc! { A::KEY: store::key(org, agent_id), A::ACTIVE: true })
        .await?)
}

async fn open_session(
    state: &AppState,
    org: &str,
    agent_id: &str,
    role: &str,
    device_id: &str,
    device_name: Option<String>,
) -> ApiResult<Json<TokenPair>> {
    let sessions_coll = state.db.collection::<Document>(sessions::SESSIONS);
    let now = now_ms();
    // One session per device: logging in again on it ends the old one, broker
    // login included.
    revoke(
        state,
        doc! { "org": org, "agent_id": agent_id, "device_id": device_id },
        "replaced by a new login",
        Clients::OfEnded,
    )
    .await?;
    let session_id = sessions::random_id(16);
    let refresh = RefreshToken::new(&session_id, 0);
    let session = Session {
        id: session_id.clone(),
        org: org.into(),
        agent_id: agent_id.into(),
        role: role.into(),
        device_id: device_id.into(),
        device_name: device_name.map(|n| n.chars().take(100).collect()),
        refresh_hash: refresh.hash(),
        generation: 0,
        created_at_ms: now,
        last_used_at_ms: now,
        expires_at_ms: now + (state.config.refresh_ttl_secs as i64) * 1000,
        revoked_at_ms: None,
        revoked_reason: None,
        spent_hashes: Vec::new(),
    };
    let document = bson::to_document(&session).map_err(ApiError::unavailable)?;
    sessions_coll.insert_one(document).await?;
    tokens(state, &session, &refresh)
}

fn tokens(
    state: &AppState,
    session: &Session,
    refresh: &RefreshToken,
) -> ApiResult<Json<TokenPair>> {
    let now = now_ms() / 1000;
    let ttl = state.config.access_ttl_secs;
    let claims = Claims {
        sub: session.agent_id.clone(),
        org: session.org.clone(),
        role: session.role.clone(),
        sid: session.id.clone(),
        iss: state.jwt.issuer().to_string(),
        aud: state.jwt.issuer().to_string(),
        iat: now,
        exp: now + ttl as i64,
    };
    let access_token = state.jwt.sign(&claims).map_err(ApiError::unavailable)?;
    Ok(Json(TokenPair {
        access_token,
        token_type: "Bearer".into(),
        expires_in: ttl,
        refresh_token: refresh.encode(),
        session_id: session.id.clone(),
    }))
}

/// Which sessions' broker clients a revocation deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Those of the sessions it ends.
    OfEnded,
    /// Those of every matching session, also ones that ended earlier (an agent who
    /// is deactivated or demoted keeps no broker login, whatever happened before).
    All,
}

/// The one path every revocation takes (logout, logout everywhere, a revoked
/// device, refresh-token reuse, a new login on the same device, deactivation,
/// demotion): the matching live sessions are marked revoked, which kills their
/// access tokens at once, and their devices' MQTT clients are deleted from the
/// broker. A broker that is down must not keep a user from logging out, so the
/// deletion is best effort; the periodic reconcile (`mqtt_access::reconcile`)
/// deletes whatever it missed.
pub async fn revoke(
    state: &AppState,
    filter: Document,
    reason: &str,
    clients: Clients,
) -> ApiResult<u64> {
    use futures::TryStreamExt;
    let mut live = filter.clone();
    live.insert("revoked_at_ms", bson::Bson::Null);
    let sessions_coll = state.db.collection::<Document>(sessions::SESSIONS);
    let ending: Vec<Document> = sessions_coll
        .find(match clients {
            Clients::OfEnded => live.clone(),
            Clients::All => filter,
        })
        .projection(doc! { "_id": 1, "org": 1, "agent_id": 1 })
        .await?
        .try_collect()
        .await?;
    let result = sessions_coll
        .update_many(
            live,
            doc! { "$set": { "revoked_at_ms": now_ms(), "revoked_reason": reason } },
        )
        .await?;
    let usernames: Vec<String> = ending
        .iter()
        .filter_map(|d| {
            Some(crate::mqtt_access::username(
                &super::text(d, "org")?,
                &super::text(d, "agent_id")?,
                d.get_str("_id").ok()?,
            ))
        })
        .collect();
    // With EMQX the revoked session is the end of the login: its hook asks.
    if !usernames.is_empty() && state.config.mqtt_broker == crate::config::MqttBroker::Mosquitto {
        let mqtt = state.mqtt.clone();
        tokio::spawn(async move {
            if let Err(err) = crate::mqtt_access::delete_clients(&mqtt, &usernames).await {
                tracing::warn!(clients = usernames.len(), error = %err,
                    "mqtt clients not removed; the reconcile will retry");
            }
        });
    }
    Ok(result.modified_count)
}

/// Revokes every session of a user and deletes all their broker clients
/// (deactivation, demotion, logout everywhere).
pub async fn revoke_user(
    state: &AppState,
    org: &str,
    agent_id: &str,
    reason: &str,
) -> ApiResult<u64> {
    revoke(
        state,
        doc! { "org": org, "agent_id": agent_id },
        reason,
        Clients::All,
    )
    .await
}

/// Trade a refresh token for new tokens. Each refresh token works once; using a
/// spent one revokes the session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = crate::error::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    Body(req): Body<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let presented = RefreshToken::parse(&req.refresh_token)
        .filter(|t| t.session_id.len() <= 64)
        .ok_or_else(|| ApiError::unauthorized("not a refresh token"))?;
    let sessions_coll = state.db.collection::<Document>(sessions::SESSIONS);
    let session = sessions_coll
        .find_one(doc! { "_id": &presented.session_id })
        .await?
        .and_then(|d| bson::from_document::<Session>(d).ok());
    let now = now_ms();
    let reuse = || async {
        tracing::warn!(session = %presented.session_id, "refresh token reused: revoking the session");
        revoke(
            &state,
            doc! { "_id": &presented.session_id },
            "refresh token reused",
            Clients::OfEnded,
        )
        .await?;
        Err::<Json<TokenPair>, _>(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "refresh_token_reused",
            "this refresh token was already used; the session is revoked",
        ))
    };
    match sessions::on_refresh(session.as_ref(), &presented, now) {
        RefreshDecision::Rotate => {}
        RefreshDecision::Reuse => return reuse().await,
        RefreshDecision::Revoked => return Err(ApiError::unauthorized("the session has ended")),
        RefreshDecision::Expired => return Err(ApiError::unauthorized("the session has expired")),
        RefreshDecision::Invalid => {
            return Err(ApiError::unauthorized("not a valid refresh token"));
        }
    }
    let Some(mut session) = session else {
        return Err(ApiError::unauthorized("not a valid refresh token"));
    };
    let Some(agent) = active_agent(&state, &session.org, &session.agent_id).await? else {
        revoke_user(&state, &session.org, &session.agent_id, "agent deactivated").await?;
        return Err(ApiError::unauthorized("the account is deactivated"));
    };
    let role = agent.role.unwrap_or(Role::Agent).as_str();
    let next = RefreshToken::new(&session.id, session.generation + 1);
    let swapped = sessions_coll
        .update_one(
            doc! { "_id": &session.id, "refresh_hash": &session.refresh_hash,
            "generation": session.generation, "revoked_at_ms": null },
            doc! { "$set": { "refresh_hash": next.hash(), "generation": next.generation,
            "last_used_at_ms": now, "role": role,
            "spent_hashes": sessions::spend(&session.spent_hashes, &session.refresh_hash) } },
        )
        .await?;
    if swapped.modified_count != 1 {
        // Someone else rotated this very token a moment ago: it was used twice.
        return reuse().await;
    }
    session.role = role.to_string();
    session.generation = next.generation;
    tokens(&state, &session, &next)
}

/// End this device's session.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204)))]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    revoke(
        &state,
        doc! { "_id": &caller.session_id, "org": &caller.org },
        "logout",
        Clients::OfEnded,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the caller, on every device.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses((status = 204)))]
pub async fn logout_all(State(state): State<AppState>, caller: Caller) -> ApiResult<StatusCode> {
    revoke_user(&state, &caller.org, &caller.user_id, "logout everywhere").await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's live sessions, one per device.
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Vec<SessionInfo>)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    use futures::TryStreamExt;
    let found: Vec<Document> = state
        .db
        .collection::<Document>(sessions::SESSIONS)
        .find(doc! { "org": &caller.org, "agent_id": &caller.user_id, "revoked_at_ms": null })
        .sort(doc! { "created_at_ms": -1 })
        .limit(100)
        .await?
        .try_collect()
        .await?;
    Ok(Json(
        found
            .into_iter()
            .filter_map(|d| bson::from_document::<Session>(d).ok())
            .map(|s| SessionInfo {
                current: s.id == caller.session_id,
                session_id: s.id,
                device_id: s.device_id,
                device_name: s.device_name,
                created_at_ms: s.created_at_ms,
                last_used_at_ms: s.last_used_at_ms,
            })
            .collect(),
    ))
}

/// End one of the caller's sessions.
#[utoipa::path(delete, path = "/v1/auth/sessions/{session_id}", tag = "auth",
    security(("bearer" = [])), params(("session_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(session_id): Path<String>,
) -> ApiResult<StatusCode> {
    crate::routes::valid_id("session_id", &session_id)?;
    let n = revoke(
        &state,
        doc! { "_id": &session_id, "org": &caller.org, "agent_id": &caller.user_id },
        "revoked by the user",
        Clients::OfEnded,
    )
    .await?;
    if n == 0 {
        return Err(ApiError::not_found("session"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Me>> {
    let agent = active_agent(&state, &caller.org, &caller.user_id).await?;
    Ok(Json(Me {
        name: agent.and_then(|a| a.name),
        org: caller.org,
        agent_id: caller.user_id,
        role: caller.role,
        session_id: caller.session_id,
    }))
}
