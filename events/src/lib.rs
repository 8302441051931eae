//! The event model shared by every role: Meta's webhook types, the normalized events,
//! the other topics' values, topic names, deterministic ids and the wire codec.
//!
//! Everything here is pure: no I/O, so parsing and normalization are tested with
//! fixtures and properties alone.

pub mod access;
pub mod clock;
pub mod codec;
pub mod compat;
pub mod delivery;
pub mod directory;
pub mod event;
pub mod ids;
pub mod inbox;
pub mod normalize;
pub mod outbound;
pub mod schema;
pub mod semantics;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topics;
pub mod webhook;

pub use event::{EventBody, WhatsAppEvent};
pub use normalize::{Normalized, OrgDirectory, OrgLookup, Rejected, normalize};
pub use status::DeliveryStatus;
pub use webhook::Webhook;
