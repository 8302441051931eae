//! Who is calling: OTP login, JWT access tokens, rotating refresh tokens, and the
//! [`Caller`] extractor every protected handler takes.
//!
//! Every protected query is scoped by `Caller::org`, which comes from the verified
//! token and nowhere else.

pub mod jwt;
pub mod otp;
pub mod sessions;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use mongodb::bson::{Document, doc};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller, from the access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: String,
    pub user_id: String,
    pub role: String,
    pub session_id: String,
    /// When the access token expires (seconds since the epoch): a long-lived answer
    /// such as the live feed ends then.
    pub expires_at_secs: i64,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

/// A caller who is an admin (403 otherwise).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::unauthorized("a bearer access token is required"))?;
        let claims = state.jwt.verify(token.trim()).map_err(|e| match e {
            jwt::JwtError::Expired => ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_expired",
                "the access token has expired",
            ),
            jwt::JwtError::Invalid(_) => ApiError::unauthorized("the access token is not valid"),
        })?;
        // A revoked session (logout, reuse detected, agent deactivated) kills its
        // access tokens at once, not at their expiry.
        if !session_live(&state.db, &claims.org, &claims.sid).await? {
            return Err(ApiError::unauthorized("the session has ended"));
        }
        state.limit_user(&claims.org, &claims.sub)?;
        let caller = Caller {
            org: claims.org,
            user_id: claims.sub,
            role: claims.role,
            session_id: claims.sid,
            expires_at_secs: claims.exp,
        };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// Whether the session `sid` of `org` is still live (not logged out, not revoked).
pub async fn session_live(
    db: &mongodb::Database,
    org: &str,
    sid: &str,
) -> Result<bool, mongodb::error::Error> {
    Ok(db
        .collection::<Document>(sessions::SESSIONS)
        .find_one(doc! { "_id": sid, "org": org, "revoked_at_ms": null })
        .await?
        .is_some())
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.is_admin() {
            Ok(Admin(caller))
        } else {
            Err(ApiError::forbidden())
        }
    }
}
