//! Sinks: the only writers of external stores. Each consumes its topics, writes
//! idempotently (by event id), and lets the loop commit only after the write.
//!
//! One folder per sink, each with the same rooms: `config.rs` (its settings),
//! `mapping.rs` (events → writes, pure), `mod.rs` (the I/O edge, as a [`Stage`])
//! and `run.rs` (its wiring: `TOPICS` and `run(ctx, config)`, which the binary's
//! dispatcher calls). `graph` is not a sink but the Graph API client two sinks use.
//!
//! [`Stage`]: runtime::Stage

pub mod clickhouse;
pub mod expo;
pub mod graph;
pub mod media;
pub mod mongo;
pub mod mqtt;
pub mod whatsapp;

use events::WhatsAppEvent;
use runtime::{Record, Reject};

/// Decodes a batch of `whatsapp.events` records; undecodable ones become rejects.
pub fn decode_events(batch: &[Record]) -> (Vec<(usize, WhatsAppEvent)>, Vec<Reject>) {
    runtime::read_batch(batch, |_, record| record.decode("a whatsapp event"))
}
