//! Starting `coexist` role processes from a run of our own (`bench e2e`, `chaos`):
//! one config file holding the whole effective configuration, read by children that
//! get none of the parent's `COEXIST_*` variables (they would override the file).

use std::path::Path;

use anyhow::Context;

use crate::Config;

/// Writes `config` whole to `path`, readable by its owner only: it holds secrets.
pub fn write_config(path: &Path, config: &Config) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let text = toml::to_string(config).context("the config as TOML")?;
    options
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// `coexist --config <config_file>`, to which the caller adds the subcommand.
pub fn command(config_file: &Path) -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("the path of this executable")?;
    let mut command = std::process::Command::new(exe);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("COEXIST_")) {
        command.env_remove(key);
    }
    command.arg("--config").arg(config_file);
    Ok(command)
}

/// A port nothing listens on now, for a child's listener, below Linux's ephemeral
/// range (32768 and up): a port the kernel hands out for `:0` is also what outgoing
/// connections (Kafka, MongoDB clients) take, so between picking it and the child's
/// bind one of them could take it; below that range only listeners compete.
pub fn free_port() -> anyhow::Result<u16> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let start = (std::process::id() ^ nanos) % 10_000;
    (0..10_000u32)
        .map(|i| 21_000 + ((start + i) % 10_000) as u16)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .context("no free port in 21000-30999")
}
