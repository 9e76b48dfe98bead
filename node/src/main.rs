//! The `switchboard` binary.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use switchboard_core::presence::Meta;
use switchboard_node::config::Command;
use switchboard_node::security::Security;
use switchboard_node::{server, Config};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::load().unwrap_or_else(|err| err.exit());
    if let Some(Command::Token { sub, ttl, info }) = &config.command {
        return print_token(&config, sub, ttl.as_secs(), info.as_ref());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    actix_web::rt::System::new().block_on(server::run(config))
}

/// Standard error for logs, ignoring write failures: a log reader that goes away (`| head`,
/// a restarted log shipper) must not crash the node or stop it from shutting down.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `switchboard token --sub ID --ttl 1h`: prints a connect token on standard output.
fn print_token(
    config: &Config,
    sub: &str,
    ttl_seconds: u64,
    info: Option<&Meta>,
) -> anyhow::Result<()> {
    let security = Security::from_config(config).map_err(anyhow::Error::msg)?;
    let token = security
        .sign(sub, ttl_seconds, info)
        .map_err(anyhow::Error::msg)?;
    writeln!(std::io::stdout().lock(), "{token}").context("cannot write the token")
}
