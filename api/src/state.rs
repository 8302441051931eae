//! What every handler shares: config, the store, the producer, keys and limiters.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota};
use mongodb::Database;
use runtime::Publisher;
use runtime::mqtt::MqttConnection;

use crate::auth::jwt::JwtKeys;
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::seal::Sealer;

/// The API's dependencies, built once at start.
pub struct Deps {
    pub config: ApiConfig,
    pub db: Database,
    pub publisher: Publisher,
    pub mqtt: MqttConnection,
    pub s3: runtime::S3Config,
    /// Analytics (`/v1/analytics`, `/dashboards`); `None` serves without them.
    pub clickhouse: Option<clickhouse::Client>,
    /// Seals business-number credentials (`[sealing]`, shared with the roles that open them).
    pub sealer: Sealer,
    /// The Graph API (template lists).
    pub graph: crate::routes::templates::GraphApi,
}

pub type AppState = Arc<Inner>;

pub struct Inner {
    pub config: ApiConfig,
    pub db: Database,
    pub publisher: Publisher,
    pub jwt: JwtKeys,
    pub sealer: Sealer,
    pub pepper: Vec<u8>,
    pub mqtt: MqttConnection,
    pub s3: aws_sdk_s3::Client,
    /// Where presigned media URLs point (the console's CSP allows it for images).
    pub media_origin: String,
    pub s3_bucket: String,
    pub clickhouse: Option<clickhouse::Client>,
    ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    user_limiter: DefaultKeyedRateLimiter<String>,
    verify_limiter: DefaultKeyedRateLimiter<String>,
    /// One activity per agent, conversation and kind per `activity_min_interval_ms`.
    activity_limiter: DefaultKeyedRateLimiter<String>,
    /// `[api] trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub graph: crate::routes::templates::GraphApi,
    /// Outbound HTTP (the Graph API).
    pub http: reqwest::Client,
    pub templates: crate::routes::templates::TemplateCache,
    /// The live feed's fan-out (`GET /v1/feed`).
    pub feed: Arc<crate::feed::Feed>,
}

impl Inner {
    /// A collection of the read model, typed by its document: a read names the
    /// store's collection and gets its struct, never a name and loose fields.
    pub fn read<T: Send + Sync>(&self, collection: store::Collection<T>) -> mongodb::Collection<T> {
        self.db.collection(collection.name)
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl Inner {
    pub fn new(deps: Deps) -> anyhow::Result<Self> {
        let config = deps.config;
        let jwt = JwtKeys::from_config(&config);
        let sealer = deps.sealer;
        let pepper = if config.otp_pepper.is_empty() {
            tracing::warn!("api.otp_pepper is empty: using an ephemeral pepper (dev only)");
            crate::auth::sessions::random_id(32).into_bytes()
        } else {
            config.otp_pepper.expose().as_bytes().to_vec()
        };
        let limits = config.rate_limit;
        let trusted_proxies = crate::client_ip::parse_proxies(&config.trusted_proxies)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            ip_limiter: DefaultKeyedRateLimiter::keyed(per_minute(limits.per_ip_per_minute)),
            user_limiter: DefaultKeyedRateLimiter::keyed(per_minute(limits.per_user_per_minute)),
            verify_limiter: DefaultKeyedRateLimiter::keyed(per_minute(
                limits.otp_verify_per_user_per_minute,
            )),
            activity_limiter: DefaultKeyedRateLimiter::keyed(
                Quota::with_period(std::time::Duration::from_millis(
                    config.activity_min_interval_ms.max(1),
                ))
                .unwrap_or_else(|| per_minute(60)),
            ),
            trusted_proxies,
            graph: deps.graph,
            http: reqwest::Client::new(),
            templates: Default::default(),
            feed: Arc::new(crate::feed::Feed::new(config.feed_buffer)),
            s3: deps.s3.client(),
            media_origin: deps.s3.public_origin(),
            s3_bucket: deps.s3.bucket.clone(),
            config,
            db: deps.db,
            publisher: deps.publisher,
            jwt,
            sealer,
            pepper,
            mqtt: deps.mqtt,
            clickhouse: deps.clickhouse,
        })
    }

    /// 429 with `Retry-After` when `ip` (its /64 for IPv6) is over its budget.
    pub fn limit_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.ip_limiter
            .check_key(&crate::client_ip::rate_key(ip))
            .map_err(retry)
    }

    /// Drops limiter keys whose buckets have refilled (they hold no information).
    pub fn prune_limiters(&self) {
        self.ip_limiter.retain_recent();
        self.ip_limiter.shrink_to_fit();
        self.user_limiter.retain_recent();
        self.user_limiter.shrink_to_fit();
        self.verify_limiter.retain_recent();
        self.verify_limiter.shrink_to_fit();
        self.activity_limiter.retain_recent();
        self.activity_limiter.shrink_to_fit();
    }

    /// Whether an activity keyed `key` may go out now (else it is throttled).
    pub fn activity_allowed(&self, key: String) -> bool {
        self.activity_limiter.check_key(&key).is_ok()
    }

    /// How many addresses the per-address limiter holds (for tests and metrics).
    pub fn limited_addresses(&self) -> usize {
        self.ip_limiter.len()
    }

    /// 429 with `Retry-After` when the user is over their budget.
    pub fn limit_user(&self, org: &str, user: &str) -> Result<(), ApiError> {
        self.user_limiter
            .check_key(&format!("{org}:{user}"))
            .map_err(retry)
    }
}

impl Inner {
    /// 429 with `Retry-After` when the user (`{org}:{agent_id}`) has tried too many
    /// codes this minute, from however many addresses.
    pub fn limit_verify(&self, user_key: &str) -> Result<(), ApiError> {
        self.verify_limiter
            .check_key(&user_key.to_string())
            .map_err(retry)
    }
}

fn retry(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> ApiError {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    ApiError::too_many(
        "rate_limited",
        "too many requests; slow down",
        wait.as_secs() + 1,
    )
}
