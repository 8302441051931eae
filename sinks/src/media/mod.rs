//! The media sink: `whatsapp.events` → Graph API (media id → URL → bytes, with the
//! number's token) → S3 at `{org}/{sha256}` with its MIME type → `media.stored`.
//!
//! The S3 put comes before `media.stored`, and the key is the content hash, so a
//! redelivered event rewrites the same object and republishes the same record.
//! Meta refusing a media id for good (expired, unknown) dead-letters the event;
//! Meta, the network or S3 being down pauses the partition.

pub mod mapping;
mod run;
pub use run::{TOPICS, run};

use anyhow::Context;
use events::delivery::MediaStored;
use events::topics;
use futures::StreamExt;
use runtime::{Publisher, Record, Reject, Stage};

use crate::graph::{GraphClient, GraphError, Retry};
use mapping::Fetch;

/// Files copied at the same time within a batch.
const CONCURRENCY: usize = 8;

pub struct MediaSink {
    graph: GraphClient,
    s3: aws_sdk_s3::Client,
    bucket: String,
    publisher: Publisher,
}

impl MediaSink {
    pub fn new(
        graph: GraphClient,
        s3: aws_sdk_s3::Client,
        bucket: String,
        publisher: Publisher,
    ) -> Self {
        Self {
            graph,
            s3,
            bucket,
            publisher,
        }
    }

    /// Copies one file; `Ok(Some(reason))` when it can never be copied.
    async fn copy(&self, fetch: &Fetch) -> anyhow::Result<Option<String>> {
        let pnid = &fetch.phone_number_id;
        let fetched = async {
            let info = self.graph.media_info(pnid, &fetch.media_id).await?;
            let bytes = self.graph.download(pnid, &info.url).await?;
            Ok::<_, GraphError>((info, bytes))
        }
        .await;
        let (info, bytes) = match fetched {
            Ok(fetched) => fetched,
            Err(err) if matches!(err.retry(), Retry::Never) => {
                return Ok(Some(format!(
                    "media {} of {}: {err}",
                    fetch.media_id, fetch.wamid
                )));
            }
            Err(err) => {
                return Err(
                    anyhow::Error::new(err).context(format!("fetching media {}", fetch.media_id))
                );
            }
        };
        let mime_type = info
            .mime_type
            .or_else(|| fetch.mime_type.clone())
            .unwrap_or_else(|| "application/octet-stream".into());
        let key = mapping::key(&fetch.org, &bytes);
        let size = bytes.len() as u64;
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type(&mime_type)
            .body(bytes.into())
            .send()
            .await
            .with_context(|| format!("writing s3://{}/{key}", self.bucket))?;
        let stored = MediaStored {
            media_id: fetch.media_id.clone(),
            org: fetch.org.clone(),
            wamid: fetch.wamid.clone(),
            bucket: self.bucket.clone(),
            key,
            mime_type,
            bytes: size,
        };
        self.publisher
            .send_json(topics::MEDIA_STORED, pnid, &stored, vec![])
            .await
            .context("publishing media.stored")?;
        Ok(None)
    }
}

impl Stage for MediaSink {
    async fn handle(&mut self, batch: &[Record]) -> anyhow::Result<Vec<Reject>> {
        let (events, mut rejects) = crate::decode_events(batch);
        let graph = &self.graph;
        let fetches: Vec<Fetch> = mapping::fetches(events.iter().map(|(i, e)| (*i, e)))
            .into_iter()
            .filter(|f| {
                let ours = graph.handles(&f.phone_number_id);
                // No token is a deployment without the Graph API (a demo, a test
                // pipeline): there is nothing to fetch with, and no event is at fault.
                let token = graph.has_token(&f.phone_number_id);
                if ours && !token {
                    tracing::warn!(number = %f.phone_number_id, media = %f.media_id, "no access token for this number; media not copied");
                }
                ours && token
            })
            .collect();
        let this = &*self;
        let copies: Vec<_> = fetches
            .iter()
            .map(|f| async move { (f.source, this.copy(f).await) })
            .collect();
        let outcomes: Vec<(usize, anyhow::Result<Option<String>>)> = futures::stream::iter(copies)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (index, outcome) in outcomes {
            if let Some(reason) = outcome? {
                rejects.push(Reject { index, reason });
            }
        }
        Ok(rejects)
    }
}
