//! The S3 edge shared by the media sink (writes) and the API (presigned reads):
//! one bucket, path-style addressing so moto and MinIO work as AWS does.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use serde::{Deserialize, Serialize};

use crate::Secret;

/// Where media lives. Locally moto (scripts/stack), MinIO in docker-compose, AWS in
/// production (leave `endpoint_url` empty there).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Empty means AWS's own endpoint for the region.
    pub endpoint_url: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// `bucket` in the path rather than the host name (moto, MinIO).
    pub force_path_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint_url: "http://127.0.0.1:9100".into(),
            region: "us-east-1".into(),
            bucket: "coexist-media".into(),
            access_key_id: Secret::new("test"),
            secret_access_key: Secret::new("test"),
            force_path_style: true,
        }
    }
}

impl S3Config {
    /// The origin presigned URLs point at (`scheme://host[:port]`), which a page
    /// showing media must allow in its CSP: the endpoint's, with the bucket in the
    /// host name unless path-style; AWS's regional bucket host without an endpoint.
    pub fn public_origin(&self) -> String {
        if self.endpoint_url.is_empty() {
            return format!("https://{}.s3.{}.amazonaws.com", self.bucket, self.region);
        }
        let (scheme, rest) = self
            .endpoint_url
            .split_once("://")
            .unwrap_or(("https", self.endpoint_url.as_str()));
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if self.force_path_style {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{}.{host}", self.bucket)
        }
    }

    /// A client for this endpoint with static credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let credentials = Credentials::new(
            self.access_key_id.expose(),
            self.secret_access_key.expose(),
            None,
            None,
            "coexist-config",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(self.force_path_style);
        if !self.endpoint_url.is_empty() {
            builder = builder.endpoint_url(&self.endpoint_url);
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    /// Creates the bucket unless it exists (idempotent; for local stacks and tests).
    pub async fn ensure_bucket(&self, client: &aws_sdk_s3::Client) -> anyhow::Result<()> {
        if client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(err) => {
                let owned = err.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
                });
                if owned {
                    Ok(())
                } else {
                    Err(anyhow::Error::new(err).context(format!("creating bucket {}", self.bucket)))
                }
            }
        }
    }
}

#[cfg(test)]
mod origin_tests {
    use super::S3Config;

    #[test]
    fn presigned_urls_come_from_one_origin() {
        let mut c = S3Config::default();
        assert_eq!(c.public_origin(), "http://127.0.0.1:9100");
        c.endpoint_url = "https://minio.example.com:9000/".into();
        assert_eq!(c.public_origin(), "https://minio.example.com:9000");
        c.force_path_style = false;
        assert_eq!(
            c.public_origin(),
            "https://coexist-media.minio.example.com:9000"
        );
        c.endpoint_url = String::new();
        assert_eq!(
            c.public_origin(),
            "https://coexist-media.s3.us-east-1.amazonaws.com"
        );
    }
}
