//! The Expo push service stand-in: send (tickets) and receipts.

/// Expo's routes (`/--/api/v2/push/send`, `/--/api/v2/push/getReceipts`).
pub fn router(_config: &crate::Config) -> axum::Router {
    axum::Router::new()
}
