//! The indexes the API's queries need, as plain data: the mongo sink creates them
//! at start (it owns the collections), so an API query and its index are declared
//! in one crate.

use bson::Document;

/// One index of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    pub collection: &'static str,
    pub keys: Document,
    pub unique: bool,
}

impl Index {
    pub fn new(collection: &'static str, keys: Document) -> Self {
        Self {
            collection,
            keys,
            unique: false,
        }
    }

    pub fn unique(collection: &'static str, keys: Document) -> Self {
        Self {
            collection,
            keys,
            unique: true,
        }
    }
}

/// Every index of the read model.
pub fn all() -> Vec<Index> {
    let mut out = crate::inbox::indexes();
    out.extend(crate::directory::indexes());
    out
}
