//! Logs as both binaries write them: to standard error only (as klog, and so
//! metrics-server, does: `kubectl logs` shows one stream), as text or as one
//! JSON object per line (`--logging-format`, metrics-server's flag), in
//! colour only on a terminal, at the level `-v`/`--v` gives (klog's
//! verbosity) unless `RUST_LOG` says otherwise.

use std::io::IsTerminal as _;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Logging was set up already (only tests can get here).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber")]
pub struct InitError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `2026-12-05T10:00:00.000000Z  INFO target: message key=value`.
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","message":…,"key":…,"target":…}`.
    Json,
}

/// The logging flags of both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format: `text`, or `json` (one object per line, for log
    /// collectors).
    #[arg(
        long = "logging-format",
        value_enum,
        default_value = "text",
        env = "NODEPULSE_LOGGING_FORMAT",
        global = true
    )]
    pub format: Format,
    /// Verbosity, counted as klog counts it: 0-3 info, 4 debug, 5 and more
    /// trace. `RUST_LOG` (tracing's filter syntax, e.g.
    /// `info,aggregator_api::ingest=debug`), when set, takes precedence.
    #[arg(
        short = 'v',
        long = "v",
        value_name = "LEVEL",
        default_value_t = 0,
        global = true
    )]
    pub verbosity: u8,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            format: Format::Text,
            verbosity: 0,
        }
    }
}

impl LogArgs {
    /// The level `-v` names.
    pub fn level(&self) -> LevelFilter {
        match self.verbosity {
            0..=3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        }
    }

    /// Installs the process's log subscriber. A `RUST_LOG` that does not
    /// parse is reported (once logging works) and the `-v` level used.
    pub fn init(&self) -> Result<(), InitError> {
        let (filter, bad_filter) = match std::env::var("RUST_LOG") {
            Ok(directives) if !directives.trim().is_empty() => {
                match EnvFilter::builder().parse(&directives) {
                    Ok(filter) => (filter, None),
                    Err(error) => (self.default_filter(), Some((directives, error))),
                }
            }
            _ => (self.default_filter(), None),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.format {
            Format::Text => builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init()
                .map_err(InitError)?,
            Format::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_ansi(false)
                .try_init()
                .map_err(InitError)?,
        }
        if let Some((directives, error)) = bad_filter {
            tracing::warn!(
                rust_log = %directives,
                %error,
                level = %self.level(),
                "RUST_LOG does not parse; logging at the -v level"
            );
        }
        Ok(())
    }

    fn default_filter(&self) -> EnvFilter {
        EnvFilter::builder()
            .with_default_directive(self.level().into())
            .parse_lossy("")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
    }

    fn parse(args: &[&str]) -> LogArgs {
        Cli::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
            .expect("parses")
            .log
    }

    #[test]
    fn klog_verbosity_spellings_map_to_levels() {
        assert_eq!(parse(&[]).level(), LevelFilter::INFO);
        for spelling in [&["--v=2"][..], &["-v", "2"], &["-v=2"], &["--v", "2"]] {
            assert_eq!(parse(spelling).verbosity, 2, "{spelling:?}");
        }
        assert_eq!(parse(&["--v=4"]).level(), LevelFilter::DEBUG);
        assert_eq!(parse(&["--v=6"]).level(), LevelFilter::TRACE);
    }

    #[test]
    fn logging_format_is_text_or_json() {
        assert_eq!(parse(&[]).format, Format::Text);
        assert_eq!(parse(&["--logging-format=json"]).format, Format::Json);
        assert!(Cli::try_parse_from(["bin", "--logging-format=xml"]).is_err());
    }
}
