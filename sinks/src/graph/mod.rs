//! The Graph API edge shared by the whatsapp sink (sends, uploads) and the media sink
//! (downloads): one HTTP client, Meta's error envelope parsed into one error type,
//! and the one rule of which failures are worth retrying ([`GraphError::retry`]).

pub mod config;
mod follow;

use std::time::Duration;

use events::webhook::ApiError;
use serde::Deserialize;
use serde_json::Value;

pub use config::{GraphConfig, GraphNumber};
pub use follow::following_directory;

/// Why a Graph API call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Meta answered with its error envelope.
    #[error("graph api {status}: ({code}) {message}{details}", code = .error.code,
        message = .error.message.as_deref().unwrap_or("no message"), details = details(.error))]
    Api { status: u16, error: Box<ApiError> },
    /// The request never reached Meta (connection refused, DNS): safe to repeat.
    #[error("graph api not reachable: {0}")]
    Unreachable(String),
    /// The request may have reached Meta but no answer came back (timeout, reset):
    /// whether a message went out is unknown.
    #[error("graph api did not answer: {0}")]
    NoAnswer(String),
    /// An answer that is neither a success nor Meta's error envelope.
    #[error("graph api answered {status} with an unreadable body: {reason}")]
    Unreadable { status: u16, reason: String },
    #[error("no access token configured for phone number {0}")]
    NoToken(String),
    /// The directory's token for the number does not open with `[sealing] keys`.
    #[error("the access token of phone number {0} does not open: {1}")]
    Sealed(String, String),
}

/// `: {details}` from Meta's `error_data`, the part that says what to fix.
fn details(error: &ApiError) -> String {
    error
        .error_data
        .as_ref()
        .and_then(|d| d["details"].as_str())
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Meta refused it for now (throttled, overloaded): nothing was sent; try later.
    Later,
    /// Meta or the network is down: nothing was sent; pause like a store that is down.
    Outage,
    /// It will never succeed as it is (bad token, bad parameter).
    Never,
    /// It may or may not have been carried out: never repeat a send.
    Unknown,
}

/// Codes Meta documents as "try again later".
const THROTTLED: &[i64] = &[4, 80007, 130429, 131056, 131048];
/// Codes Meta documents as temporary service errors.
const TEMPORARY: &[i64] = &[1, 2, 131000, 131016, 133004];

impl GraphError {
    pub fn retry(&self) -> Retry {
        match self {
            GraphError::Api { status, error } => {
                if *status == 429 || THROTTLED.contains(&error.code) {
                    Retry::Later
                } else if *status >= 500 || TEMPORARY.contains(&error.code) {
                    Retry::Outage
                } else {
                    Retry::Never
                }
            }
            GraphError::Unreachable(_) => Retry::Outage,
            GraphError::NoAnswer(_) => Retry::Unknown,
            GraphError::Unreadable { status, .. } if *status >= 500 => Retry::Outage,
            GraphError::Unreadable { .. } | GraphError::NoToken(_) | GraphError::Sealed(..) => {
                Retry::Never
            }
        }
    }

    /// The error as an [`ApiError`] for a result record.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            GraphError::Api { error, .. } => (**error).clone(),
            other => api_error(0, "graph api call failed", &other.to_string()),
        }
    }
}

/// An [`ApiError`] of our own making (window refusals, bad payloads), shaped like
/// Meta's so clients read one kind of error.
pub fn api_error(code: i64, title: &str, details: &str) -> ApiError {
    ApiError {
        code,
        title: Some(title.to_string()),
        message: Some(title.to_string()),
        error_data: Some(serde_json::json!({ "details": details })),
        href: None,
        extra: Default::default(),
    }
}

/// Meta's error envelope: `{"error": {message, type, code, error_subcode,
/// error_data: {messaging_product, details}, fbtrace_id}}`.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Debug, Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    error_data: Option<Value>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

/// Reads an error answer: Meta's envelope, or an unreadable one.
pub fn parse_error(status: u16, body: &[u8]) -> GraphError {
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error }) => {
            let mut extra = serde_json::Map::new();
            if let Some(kind) = error.kind {
                extra.insert("type".into(), Value::String(kind));
            }
            if let Some(sub) = error.error_subcode {
                extra.insert("error_subcode".into(), Value::from(sub));
            }
            if let Some(trace) = error.fbtrace_id {
                extra.insert("fbtrace_id".into(), Value::String(trace));
            }
            GraphError::Api {
                status,
                error: Box::new(ApiError {
                    code: error.code,
                    title: error.message.clone(),
                    message: error.message,
                    error_data: error.error_data,
                    href: None,
                    extra,
                }),
            }
        }
        Err(err) => GraphError::Unreadable {
            status,
            reason: format!(
                "{err}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// Media metadata (`GET /{version}/{media_id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct MediaInfo {
    pub url: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub file_size: Option<u64>,
    #[serde(default)]
    pub id: Option<String>,
}

/// The Graph API client.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    config: GraphConfig,
    /// Business numbers registered through the API, with their sealed tokens.
    credentials: Option<Credentials>,
}

/// The directory's numbers and the keys that open their tokens.
#[derive(Clone)]
struct Credentials {
    directory: runtime::directory::DirectoryHandle,
    sealer: runtime::seal::Sealer,
}

impl GraphClient {
    pub fn new(config: GraphConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()?;
        Ok(Self {
            http,
            config,
            credentials: None,
        })
    }

    /// Calls with each number's own token from the directory (opened with the
    /// sealing keys at each call, never kept in clear); numbers the directory does
    /// not know fall back to `[graph]`'s tokens.
    pub fn with_directory(
        mut self,
        directory: runtime::directory::DirectoryHandle,
        sealer: runtime::seal::Sealer,
    ) -> Self {
        self.credentials = Some(Credentials { directory, sealer });
        self
    }

    pub fn config(&self) -> &GraphConfig {
        &self.config
    }

    /// Whether this deployment handles the number: every number, or with
    /// `only_listed_numbers` those listed in `[graph] numbers` (sharding by number).
    pub fn handles(&self, phone_number_id: &str) -> bool {
        self.config.handles(phone_number_id)
    }

    /// Whether a token is there to call with for this number.
    pub fn has_token(&self, phone_number_id: &str) -> bool {
        self.token(phone_number_id).is_ok()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}/{path}",
            self.config.base_url.trim_end_matches('/'),
            self.config.api_version
        )
    }

    /// Opens a payload the API sealed (a login code) with the sealing keys.
    pub fn open(&self, sealed: &events::directory::Sealed) -> Result<String, String> {
        let credentials = self
            .credentials
            .as_ref()
            .ok_or("this sink has no sealing keys")?;
        credentials
            .sealer
            .open(sealed)
            .map_err(|err| err.to_string())
    }

    /// The number's token: its own from the directory, else `[graph]`'s.
    fn token(&self, phone_number_id: &str) -> Result<runtime::Secret, GraphError> {
        if let Some(credentials) = &self.credentials
            && let Some(number) = credentials.directory.get().number(phone_number_id)
        {
            return credentials
                .sealer
                .open(&number.access_token)
                .map(runtime::Secret::new)
                .map_err(|err| GraphError::Sealed(phone_number_id.to_string(), err.to_string()));
        }
        self.config
            .token(phone_number_id)
            .cloned()
            .ok_or_else(|| GraphError::NoToken(phone_number_id.to_string()))
    }

    /// `POST /{version}/{phone_number_id}/{edge}` with a JSON body; the JSON answer.
    pub async fn post_json(
        &self,
        phone_number_id: &str,
        edge: &str,
        body: &Value,
    ) -> Result<Value, GraphError> {
        let token = self.token(phone_number_id)?;
        let request = self
            .http
            .post(self.url(&format!("{phone_number_id}/{edge}")))
            .bearer_auth(token.expose())
            .json(body);
        json_answer(request.send().await).await
    }

    /// `POST /{version}/{phone_number_id}/media` (multipart); the new media id.
    pub async fn upload_media(
        &self,
        phone_number_id: &str,
        bytes: Vec<u8>,
        mime_type: &str,
        file_name: &str,
    ) -> Result<String, GraphError> {
        let token = self.token(phone_number_id)?;
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file_name.to_string())
            .mime_str(mime_type)
            .map_err(|e| GraphError::Unreadable {
                status: 0,
                reason: format!("bad mime type {mime_type}: {e}"),
            })?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime_type.to_string())
            .part("file", part);
        let request = self
            .http
            .post(self.url(&format!("{phone_number_id}/media")))
            .bearer_auth(token.expose())
            .multipart(form);
        let answer = json_answer(request.send().await).await?;
        answer["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| GraphError::Unreadable {
                status: 200,
                reason: format!("no media id in {answer}"),
            })
    }

    /// `GET /{version}/{media_id}`: where to download a media file.
    pub async fn media_info(
        &self,
        phone_number_id: &str,
        media_id: &str,
    ) -> Result<MediaInfo, GraphError> {
        let token = self.token(phone_number_id)?;
        let request = self
            .http
            .get(format!(
                "{}?phone_number_id={phone_number_id}",
                self.url(media_id)
            ))
            .bearer_auth(token.expose());
        let answer = json_answer(request.send().await).await?;
        serde_json::from_value(answer.clone()).map_err(|e| GraphError::Unreadable {
            status: 200,
            reason: format!("{e}: {answer}"),
        })
    }

    /// Downloads a media URL from [`Self::media_info`] (it needs the token too).
    pub async fn download(&self, phone_number_id: &str, url: &str) -> Result<Vec<u8>, GraphError> {
        let token = self.token(phone_number_id)?;
        let response = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        if (200..300).contains(&status) {
            Ok(body.to_vec())
        } else {
            Err(parse_error(status, &body))
        }
    }
}

fn transport(err: reqwest::Error) -> GraphError {
    if err.is_connect() || err.is_builder() {
        GraphError::Unreachable(err.to_string())
    } else {
        GraphError::NoAnswer(err.to_string())
    }
}

async fn json_answer(response: reqwest::Result<reqwest::Response>) -> Result<Value, GraphError> {
    let response = response.map_err(transport)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(transport)?;
    if !(200..300).contains(&status) {
        return Err(parse_error(status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| GraphError::Unreadable {
        status,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(status: u16, code: i64) -> GraphError {
        let body = serde_json::json!({"error": {
            "message": "(#130429) Rate limit hit", "type": "OAuthException", "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": "too many"},
            "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}});
        parse_error(status, body.to_string().as_bytes())
    }

    #[test]
    fn metas_envelope_is_read_whole() {
        let GraphError::Api { status, error } = meta(429, 130429) else {
            panic!("not an api error");
        };
        assert_eq!((status, error.code), (429, 130429));
        assert_eq!(error.message.as_deref(), Some("(#130429) Rate limit hit"));
        assert_eq!(error.error_data.unwrap()["details"], "too many");
        assert_eq!(error.extra["fbtrace_id"], "Az8or2yhqkZfEZ-_4Qn_Bam");
    }

    #[test]
    fn throttling_is_retried_later_and_bad_requests_never() {
        assert_eq!(meta(429, 130429).retry(), Retry::Later);
        assert_eq!(meta(400, 131056).retry(), Retry::Later);
        assert_eq!(meta(500, 131000).retry(), Retry::Outage);
        assert_eq!(meta(503, 2).retry(), Retry::Outage);
        assert_eq!(meta(401, 190).retry(), Retry::Never);
        assert_eq!(meta(400, 100).retry(), Retry::Never);
        assert_eq!(
            GraphError::Unreachable("refused".into()).retry(),
            Retry::Outage
        );
        assert_eq!(
            GraphError::NoAnswer("timeout".into()).retry(),
            Retry::Unknown
        );
        assert_eq!(
            parse_error(502, b"<html>bad gateway").retry(),
            Retry::Outage
        );
        assert_eq!(parse_error(400, b"<html>").retry(), Retry::Never);
    }
}
