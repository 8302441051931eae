//! Processors: stateful stages between the event topics and the sinks (router,
//! status, notifier). Each is a pure state machine over plain data plus a thin Kafka
//! loop ([`runtime::consume`]). The shared status order lives in
//! [`events::status::DeliveryStatus`], so the status processor and the sinks agree.

pub mod notifier;
pub mod router;
pub mod status;
