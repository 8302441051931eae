//! The Graph API stand-in: message sends, media, and signed status callbacks.

/// The Graph API's routes (`/{version}/{phone_number_id}/messages`, media, ...).
pub fn router(_config: &crate::Config) -> axum::Router {
    axum::Router::new()
}
