//! `Idempotency-Key` on the POSTs that become commands: a retry with the same key
//! (same org and agent) answers the first attempt's command id and publishes
//! nothing again; the same key with a different request is 422.
//!
//! The key is claimed by inserting `{org}:{agent}:{key}` as the `_id` of
//! `idempotency_keys` (so of concurrent duplicates exactly one wins), with the
//! request's fingerprint and the command id; a TTL index forgets it after
//! `[api] idempotency_ttl_secs`. If publishing then fails, the claim is released,
//! so a retry can try again.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use mongodb::bson::{DateTime, Document, doc};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub const COLLECTION: &str = "idempotency_keys";
pub const HEADER: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if any: 1-128 visible ASCII characters (400
/// otherwise).
#[derive(Debug, Clone, Default)]
pub struct IdempotencyKey(pub Option<String>);

/// Whether a key is acceptable.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic())
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(Self(None));
        };
        match value.to_str() {
            Ok(key) if valid_key(key) => Ok(Self(Some(key.to_string()))),
            _ => Err(ApiError::invalid(
                "Idempotency-Key is 1-128 visible ASCII characters",
            )),
        }
    }
}

/// The fingerprint of what a request asks (its path and what it would publish).
pub fn fingerprint(path: &str, request: &serde_json::Value) -> String {
    let mut hash = Sha256::new();
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(request.to_string().as_bytes());
    hex::encode(hash.finalize())
}

/// What to do with a request.
pub enum Claim {
    /// First time (or no key): publish under `command_id`; `release` on failure.
    Fresh(Reservation),
    /// Seen before: answer this command id, publish nothing.
    Replay(String),
}

pub struct Reservation {
    pub command_id: String,
    id: Option<String>,
}

impl Reservation {
    /// Forgets the claim (publishing failed): a retry with the key may try again.
    pub async fn release(self, state: &AppState) {
        if let Some(id) = self.id
            && let Err(err) = state
                .db
                .collection::<Document>(COLLECTION)
                .delete_one(doc! { "_id": &id })
                .await
        {
            tracing::warn!(%err, "idempotency claim not released; it expires with its TTL");
        }
    }
}

fn duplicate(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|es| es.iter().any(|e| e.code == 11000)),
        _ => err.to_string().contains("E11000"),
    }
}

/// Claims `key` for this caller and request, or finds the earlier claim.
pub async fn claim(
    state: &AppState,
    caller: &Caller,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> ApiResult<Claim> {
    let command_id = crate::routes::command_id();
    let Some(key) = &key.0 else {
        return Ok(Claim::Fresh(Reservation {
            command_id,
            id: None,
        }));
    };
    let id = format!("{}:{}:{key}", caller.org, caller.user_id);
    let keys = state.db.collection::<Document>(COLLECTION);
    let inserted = keys
        .insert_one(doc! {
            "_id": &id,
            "org": &caller.org,
            "agent_id": &caller.user_id,
            "fingerprint": fingerprint,
            "command_id": &command_id,
            "created_at": DateTime::now(),
        })
        .await;
    match inserted {
        Ok(_) => Ok(Claim::Fresh(Reservation {
            command_id,
            id: Some(id),
        })),
        Err(err) if duplicate(&err) => {
            let earlier = keys.find_one(doc! { "_id": &id }).await?.ok_or_else(|| {
                ApiError::conflict("the idempotency key is being released; retry")
            })?;
            if earlier.get_str("fingerprint").ok() != Some(fingerprint) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                ));
            }
            let command_id = earlier
                .get_str("command_id")
                .map_err(ApiError::unavailable)?
                .to_string();
            Ok(Claim::Replay(command_id))
        }
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fingerprints() {
        assert!(valid_key("3f2a-retry_1"));
        for bad in ["", "a b", "ä", &"x".repeat(129)] {
            assert!(!valid_key(bad), "{bad}");
        }
        let a = fingerprint("/p", &serde_json::json!({"a": 1}));
        assert_eq!(a, fingerprint("/p", &serde_json::json!({"a": 1})));
        assert_ne!(a, fingerprint("/p", &serde_json::json!({"a": 2})));
        assert_ne!(a, fingerprint("/q", &serde_json::json!({"a": 1})));
    }
}
