//! `[api]`: where the API listens, its keys, and the limits it enforces at the edge.

use runtime::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    pub listen: String,
    /// Log one-time codes (never in production: anyone with the logs could log in).
    pub dev_mode: bool,
    /// JWT signing keys (HS256). The first signs; all verify, so a key is rotated by
    /// putting the new one first and dropping the old after `access_ttl_secs`. Empty
    /// means an ephemeral random key (tokens die with the process; dev only).
    pub jwt_keys: Vec<JwtKey>,
    /// `iss` and `aud` of access tokens.
    pub jwt_issuer: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// Server-side pepper of the OTP hashes (HMAC-SHA256). Empty: ephemeral.
    pub otp_pepper: Secret,
    pub otp: OtpPolicy,
    /// The WhatsApp authentication template that carries the code.
    pub otp_template: String,
    pub otp_template_language: String,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the
    /// client for per-address limits. Empty: the TCP peer is the client, and any
    /// `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<String>,
    /// Origins allowed by CORS (exact matches). Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    pub rate_limit: RateLimits,
    pub max_body_bytes: usize,
    pub timeout_ms: u64,
    /// Page size when a list request names none, and the most it may ask for.
    pub default_page: u32,
    pub max_page: u32,
    /// How long a presigned media URL works.
    pub media_url_ttl_secs: u64,
    /// The broker address handed to devices (empty: the `[mqtt]` host and port).
    pub mqtt_public_host: String,
    pub mqtt_public_port: u16,
    /// How often devices' broker clients are compared with live sessions, and those
    /// of ended or expired sessions deleted (0: never). Mosquitto only.
    pub mqtt_reconcile_secs: u64,
    /// Frames the live feed (`GET /v1/feed`) buffers per connection before it ends a
    /// connection that falls behind (the client reconnects and reads the gap).
    pub feed_buffer: usize,
    /// How often the live feed sends a `: ping` comment and re-checks the session.
    pub feed_ping_secs: u64,
    /// Least time between two activities (typing, viewing) of one agent in one
    /// conversation over REST; extra ones are answered but not published.
    pub activity_min_interval_ms: u64,
    /// How long a business number's template list (`GET /v1/templates`) is served
    /// from memory before the Graph API is asked again.
    pub templates_cache_secs: u64,
    /// The largest file `POST /v1/media` accepts (413 beyond).
    pub upload_max_bytes: usize,
    /// The MIME types `POST /v1/media` accepts (415 otherwise): what WhatsApp sends.
    pub upload_types: Vec<String>,
    /// How long an `Idempotency-Key` is remembered (a retry later is a new command).
    pub idempotency_ttl_secs: u64,
    /// The broker devices log in to: `mosquitto` (its dynamic-security plugin holds
    /// each device's login) or `emqx` (it asks this API's hooks, `hooks_listen`).
    pub mqtt_broker: MqttBroker,
    /// The internal listener of EMQX's authentication and authorization hooks
    /// (`/emqx/authn`, `/emqx/authz`): reachable by the broker only, never the
    /// public address. Empty: not served.
    pub hooks_listen: String,
}

/// Which broker devices log in to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttBroker {
    #[default]
    Mosquitto,
    Emqx,
}

/// One JWT key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtKey {
    pub kid: String,
    pub secret: Secret,
}

/// `[api.otp]`: one-time code policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OtpPolicy {
    pub ttl_secs: u64,
    /// Wrong codes before the user is locked out, counted across the user's codes
    /// until a login succeeds.
    pub max_attempts: u32,
    pub lockout_secs: u64,
    /// Least time between two codes for one user.
    pub resend_cooldown_secs: u64,
}

impl Default for OtpPolicy {
    fn default() -> Self {
        Self {
            ttl_secs: 300,
            max_attempts: 5,
            lockout_secs: 900,
            resend_cooldown_secs: 30,
        }
    }
}

/// `[api.rate_limit]`: requests per minute (token bucket, burst = the whole minute).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub per_ip_per_minute: u32,
    pub per_user_per_minute: u32,
    /// `POST /v1/auth/otp/verify` per user, whatever the address (besides the lockout
    /// after `max_attempts` wrong codes).
    pub otp_verify_per_user_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 600,
            per_user_per_minute: 600,
            otp_verify_per_user_per_minute: 20,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            dev_mode: false,
            jwt_keys: Vec::new(),
            jwt_issuer: "coexist".into(),
            access_ttl_secs: 900,
            refresh_ttl_secs: 30 * 86_400,
            otp_pepper: Secret::default(),
            otp: OtpPolicy::default(),
            otp_template: "coexist_login".into(),
            otp_template_language: "en_US".into(),
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            rate_limit: RateLimits::default(),
            max_body_bytes: 1 << 20,
            timeout_ms: 10_000,
            default_page: 50,
            max_page: 200,
            media_url_ttl_secs: 300,
            mqtt_public_host: String::new(),
            mqtt_public_port: 0,
            mqtt_reconcile_secs: 60,
            feed_buffer: 1024,
            feed_ping_secs: 15,
            activity_min_interval_ms: 2000,
            mqtt_broker: MqttBroker::Mosquitto,
            hooks_listen: String::new(),
            templates_cache_secs: 300,
            idempotency_ttl_secs: 86_400,
            upload_max_bytes: 16 << 20,
            upload_types: [
                "image/jpeg",
                "image/png",
                "image/webp",
                "video/mp4",
                "video/3gpp",
                "audio/aac",
                "audio/amr",
                "audio/mpeg",
                "audio/mp4",
                "audio/ogg",
                "application/pdf",
                "text/plain",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-excel",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}
