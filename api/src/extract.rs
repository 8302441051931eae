//! Axum's JSON, query and path extractors, with their rejections turned into the
//! API's error shape (axum's own are text/plain).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: always an object (serde would otherwise read a struct from an
/// array, field by field, so `[null, null]` passed for an update of nothing).
pub struct Body<T>(pub T);
/// Query parameters.
pub struct Query<T>(pub T);
/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) if !value.is_object() => {
                Err(ApiError::invalid("the body must be a JSON object"))
            }
            Ok(axum::Json(value)) => serde_json::from_value(value).map(Body).map_err(|e| {
                ApiError::invalid(format!(
                    "Failed to deserialize the JSON body into the target type: {e}"
                ))
            }),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected content-type: application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                e.body_text(),
            )),
            Err(e) => Err(ApiError::invalid(e.body_text())),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::invalid(e.body_text()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::invalid(e.body_text()))
    }
}

/// A count from JSON: an integer, or a number with no fraction (`3.0`). JSON Schema's
/// `integer` admits `3.0`, so clients generated from the OpenAPI document may send it.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number from 0 to 2^32-1")))
}

/// [`whole_number`], optional (`null` or absent: none).
pub fn some_whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::Deserialize;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => whole_number(serde_json::Value::Number(n))
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod whole_number_tests {
    #[derive(serde::Deserialize)]
    struct Capacity {
        #[serde(deserialize_with = "super::whole_number")]
        n: u32,
        #[serde(default, deserialize_with = "super::some_whole_number")]
        m: Option<u32>,
    }

    #[test]
    fn whole_numbers_with_or_without_a_point_are_counts() {
        let c: Capacity = serde_json::from_str(r#"{"n": 313.0, "m": 2}"#).unwrap();
        assert_eq!((c.n, c.m), (313, Some(2)));
        let c: Capacity = serde_json::from_str(r#"{"n": 3, "m": null}"#).unwrap();
        assert_eq!((c.n, c.m), (3, None));
        for bad in [
            r#"{"n": 1.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 1e20}"#,
            r#"{"n": "3"}"#,
        ] {
            assert!(serde_json::from_str::<Capacity>(bad).is_err(), "{bad}");
        }
    }
}
