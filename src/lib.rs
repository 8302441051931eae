//! The `coexist` binary's library: configuration, the topic contract, and the roles
//! that subcommands run (integration tests run them in-process through it).

pub mod admin;
pub mod bench;
pub mod chaos;
pub mod child;
pub mod config;
pub mod deploy;
pub mod fail_closed;
pub mod roles;
pub mod simulate;
pub mod topics;
pub mod watch;

pub use config::Config;
