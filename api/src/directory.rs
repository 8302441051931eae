//! Issuing directory changes: the API validates, then puts a
//! [`DirectoryChange`] on `directory.changes` (keyed by org); the mongo sink writes it.

use events::directory::{Change, DirectoryChange};

use crate::error::ApiResult;
use crate::state::AppState;

/// Publishes `change` for `org`; returns the command id.
pub async fn publish(
    state: &AppState,
    org: &str,
    issued_by: &str,
    change: Change,
) -> ApiResult<String> {
    let id = crate::routes::command_id();
    let value = DirectoryChange {
        id: id.clone(),
        org: org.to_string(),
        issued_by: issued_by.to_string(),
        at_ms: crate::now_ms(),
        change,
    };
    state
        .publisher
        .send_json(events::topics::DIRECTORY_CHANGES, org, &value, vec![])
        .await?;
    Ok(id)
}
