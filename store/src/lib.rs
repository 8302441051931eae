//! The typed read model: the MongoDB documents the mongo sink writes and the API
//! reads, with their collection names, field names and indexes.
//!
//! What belongs here: one struct per stored document (its serde names are the stored
//! field names), the field-name constants that update statements and queries use
//! (declared with the struct by [`fields!`], so a constant cannot name a field the
//! struct does not have; `tests` checks both against serde), the indexes the API's
//! queries need, and small pure helpers over the documents ([`inbox::current_content`]).
//! Nothing else: no driver, no I/O, no event mapping (that is the sink's).
//!
//! Who may depend on it: the mongo sink (the only writer), the API (a reader), and
//! tools that read the stores (chaos, tests). It depends on `events`, `serde` and
//! `bson` only (the `bson` the `mongodb` driver re-exports, one copy), so the API does
//! not pull in the sinks. The API's own auth state (`auth_sessions`, `auth_otps`) is
//! not here: the API alone writes and reads it.

pub mod directory;
pub mod inbox;
pub mod index;

pub use index::Index;

/// A collection and the document type stored in it: the name and the type go
/// together, so a reader cannot open `messages` as contacts.
#[derive(Debug)]
pub struct Collection<T> {
    pub name: &'static str,
    doc: std::marker::PhantomData<fn() -> T>,
}

impl<T> Collection<T> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            doc: std::marker::PhantomData,
        }
    }
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Collection<T> {}

/// A collection of the read model as plain data: its name and the top-level fields
/// its documents hold.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    pub name: &'static str,
    pub fields: &'static [&'static str],
}

/// Every collection of the read model. The API can only name these (through their
/// typed [`Collection`] constants), so the writer's test that each one is written,
/// with its own fields only, covers every read.
pub fn collections() -> Vec<Declared> {
    use directory::*;
    use inbox::*;
    let declared = |name, fields| Declared { name, fields };
    vec![
        declared(MESSAGES.name, Message::FIELDS),
        declared(MESSAGE_STATUSES.name, MessageStatus::FIELDS),
        declared(CONTACTS.name, Contact::FIELDS),
        declared(CONVERSATIONS.name, Conversation::FIELDS),
        declared(HISTORY_SYNCS.name, HistorySync::FIELDS),
        declared(COMMAND_RESULTS.name, CommandResult::FIELDS),
        declared(ORGS.name, Org::FIELDS),
        declared(AGENTS.name, Agent::FIELDS),
        declared(BUSINESS_NUMBERS.name, BusinessNumber::FIELDS),
        declared(PUSH_TOKENS.name, PushToken::FIELDS),
    ]
}

/// Every document's own id field.
pub const KEY_FIELD: &str = "_id";

/// `{org}:{id}`: every document's `_id` but an org's. Ids are unique per org, never across orgs.
pub fn key(org: &str, id: &str) -> String {
    format!("{org}:{id}")
}

/// A value as stored: its serde form (enums as their snake_case names), `Null` for
/// one that has none. Writers and queries use it, so a filter compares what was
/// written.
pub fn to_bson<T: serde::Serialize>(value: &T) -> bson::Bson {
    bson::to_bson(value).unwrap_or(bson::Bson::Null)
}

/// Declares a document's field-name constants beside its struct, and `FIELDS`
/// (every one of them) for the test that checks them against the struct's serde
/// names. `paths { .. }` are dotted paths into its sub-documents, checked likewise.
#[macro_export]
macro_rules! fields {
    ($doc:ty { $($name:ident = $field:literal),+ $(,)? } $(paths { $($pname:ident = $path:literal),+ $(,)? })?) => {
        impl $doc {
            $(pub const $name: &'static str = $field;)+
            $($(pub const $pname: &'static str = $path;)+)?
            /// Every top-level field name.
            pub const FIELDS: &'static [&'static str] = &[$($field),+];
            /// Every dotted path declared.
            pub const PATHS: &'static [&'static str] = &[$($($path),+)?];
        }
    };
}

#[cfg(test)]
mod tests;
