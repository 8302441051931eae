//! A reader of the live feed (`GET /v1/feed`) as the console reads it: a streamed
//! `fetch` with a bearer header, parsed into Server-Sent Events frames.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// One frame: its `event` name (empty for a comment) and its `data` (or the comment).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub event: String,
    pub data: String,
}

/// A feed being read in the background; dropping it closes the connection.
pub struct Feed {
    reader: tokio::task::JoinHandle<()>,
    frames: Arc<Mutex<Vec<Frame>>>,
    ended: Arc<Mutex<bool>>,
    pub status: u16,
    pub content_type: String,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Feed {
    /// Opens the feed with `token`; returns at once with the answer's status.
    pub async fn open(http: &reqwest::Client, url: &str, token: &str) -> Self {
        let mut response = http.get(url).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(false));
        let (f, e) = (frames.clone(), ended.clone());
        let reader = tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    f.lock().unwrap().push(parse(&block));
                }
            }
            *e.lock().unwrap() = true;
        });
        Self {
            reader,
            frames,
            ended,
            status,
            content_type,
        }
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames.lock().unwrap().clone()
    }

    /// The `mqtt` frames' data: `(topic, payload)`.
    pub fn mqtt(&self) -> Vec<(String, Value)> {
        self.frames()
            .into_iter()
            .filter(|f| f.event == "mqtt")
            .map(|f| {
                let v: Value = serde_json::from_str(&f.data).unwrap();
                (
                    v["topic"].as_str().unwrap().to_string(),
                    v["payload"].clone(),
                )
            })
            .collect()
    }

    pub fn ended(&self) -> bool {
        *self.ended.lock().unwrap()
    }

    /// Waits for the `ready` frame (the subscription is live).
    pub async fn ready(&self) {
        crate::support::wait_for("the feed to be ready", Duration::from_secs(30), || async {
            self.frames().first().is_some_and(|f| f.event == "ready")
        })
        .await;
    }
}

fn parse(block: &str) -> Frame {
    let mut frame = Frame {
        event: String::new(),
        data: String::new(),
    };
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            frame.data = comment.trim_start().to_string();
        } else if let Some(event) = line.strip_prefix("event:") {
            frame.event = event.trim_start().to_string();
        } else if let Some(data) = line.strip_prefix("data:") {
            frame.data.push_str(data.strip_prefix(' ').unwrap_or(data));
        }
    }
    frame
}
