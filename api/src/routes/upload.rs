//! `POST /v1/media`: a file for a media send, stored in S3 under the caller's org
//! (`{org}/uploads/{random}[/{filename}]`). The returned `s3_key` goes into a send
//! (`{"type": "media", "kind": ..., "s3_key": ...}`); the whatsapp sink uploads it to
//! the Graph API and sends it by id, and refuses a key outside the sending org.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name (documents show it); letters, digits, `.`, `_`, `-`.
    pub filename: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Uploaded {
    /// Use as `s3_key` in a media send.
    pub s3_key: String,
    pub mime_type: String,
    pub size: u64,
}

/// The MIME type of a `Content-Type` header, lower-cased, without parameters.
pub fn mime_of(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// A file name safe as the last level of a key, or `None`.
pub fn safe_filename(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then(|| name.to_string())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "media_too_large",
        format!("the file is larger than the {limit}-byte limit"),
    )
}

/// Upload a file (the raw body, `Content-Type` its MIME type) for a media send.
#[utoipa::path(post, path = "/v1/media", tag = "media", security(("bearer" = [])),
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file's bytes; `Content-Type` must be its MIME type (one of `[api] upload_types`)."),
    responses((status = 201, body = Uploaded), (status = 413, body = crate::error::ErrorBody),
        (status = 415, body = crate::error::ErrorBody)))]
pub async fn upload_media(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
    let mime = mime_of(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    if !state.config.upload_types.contains(&mime) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {mime:?} is not accepted; allowed: {}",
                state.config.upload_types.join(", ")
            ),
        ));
    }
    let filename = match &query.filename {
        Some(name) => Some(safe_filename(name).ok_or_else(|| {
            ApiError::invalid("filename is 1-128 letters, digits, '.', '_' or '-'")
        })?),
        None => None,
    };
    let limit = state.config.upload_max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("the file is empty"));
    }
    let mut key = format!(
        "{}/uploads/{}",
        caller.org,
        crate::auth::sessions::random_id(16)
    );
    if let Some(name) = &filename {
        key = format!("{key}/{name}");
    }
    let size = bytes.len() as u64;
    state
        .s3
        .put_object()
        .bucket(&state.s3_bucket)
        .key(&key)
        .content_type(&mime)
        .body(bytes.into())
        .send()
        .await
        .map_err(|e| ApiError::unavailable(aws_sdk_s3::error::DisplayErrorContext(e)))?;
    Ok((
        StatusCode::CREATED,
        Json(Uploaded {
            s3_key: key,
            mime_type: mime,
            size,
        }),
    ))
}

/// Whether `key` is an upload of `org` that exists: a key of another org, or none,
/// is "no such media" (its existence is not revealed).
pub async fn check_key(state: &AppState, org: &str, key: &str) -> ApiResult<()> {
    let own = key
        .strip_prefix(org)
        .and_then(|rest| rest.strip_prefix("/uploads/"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(".."));
    if !own || key.len() > 512 {
        return Err(ApiError::not_found("media"));
    }
    match state
        .s3
        .head_object()
        .bucket(&state.s3_bucket)
        .key(key)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
            Err(ApiError::not_found("media"))
        }
        Err(err) => Err(ApiError::unavailable(
            aws_sdk_s3::error::DisplayErrorContext(err),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types_and_file_names() {
        assert_eq!(mime_of("Image/PNG; charset=x"), "image/png");
        assert_eq!(mime_of(""), "");
        assert_eq!(
            safe_filename("report-1.pdf").as_deref(),
            Some("report-1.pdf")
        );
        for bad in ["", "../x", ".hidden", "a/b", "a b", "ä.pdf"] {
            assert_eq!(safe_filename(bad), None, "{bad}");
        }
    }
}
