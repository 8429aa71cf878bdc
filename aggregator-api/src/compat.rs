//! metrics-server's flags that mean nothing here, accepted so that a
//! Deployment migrated from metrics-server starts, each given one warning
//! saying why it is ignored.
//!
//! The list is metrics-server's own (`cmd/metrics-server/app/options`: the
//! kubelet client, generic server, secure serving, audit, features and
//! logging flag sets) minus what the aggregator implements.

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

/// Why a group of flags is ignored.
const HTTPS_ONLY: &str =
    "kubelets are read over HTTPS only (--kubelet-insecure-tls skips verification)";
const NO_AUDIT: &str =
    "the aggregator writes no audit log: kube-apiserver audits the requests it proxies";
const NO_PROFILING: &str = "no profiling endpoints are served";
const ONE_KUBECONFIG: &str =
    "every kube-apiserver call uses --kubeconfig (or in-cluster credentials)";
const GO_SERVER: &str = "a setting of Go's API server library with no counterpart here";
const LOG_BUFFERS: &str = "logs are written line by line, unbuffered, to stderr";

/// A flag of metrics-server's: its name, whether it takes a value (`false`:
/// a Go bool flag, given bare or as `--flag=true|false`), and why it is
/// ignored.
struct Ignored {
    name: &'static str,
    takes_value: bool,
    why: &'static str,
}

const fn value(name: &'static str, why: &'static str) -> Ignored {
    Ignored {
        name,
        takes_value: true,
        why,
    }
}

const fn switch(name: &'static str, why: &'static str) -> Ignored {
    Ignored {
        name,
        takes_value: false,
        why,
    }
}

const IGNORED: &[Ignored] = &[
    // Kubelet client (the rest are the aggregator's, for nodes without an agent).
    switch("deprecated-kubelet-completely-insecure", HTTPS_ONLY),
    // Delegated authentication and authorization.
    value("authentication-kubeconfig", ONE_KUBECONFIG),
    value("authorization-kubeconfig", ONE_KUBECONFIG),
    // Secure serving.
    value("http2-max-streams-per-connection", GO_SERVER),
    switch("permit-address-sharing", GO_SERVER),
    switch("permit-port-sharing", GO_SERVER),
    value(
        "tls-sni-cert-key",
        "one serving certificate is served (--tls-cert-file)",
    ),
    // Generic server.
    value("advertise-address", GO_SERVER),
    value("cors-allowed-origins", GO_SERVER),
    value("external-hostname", GO_SERVER),
    value("goaway-chance", GO_SERVER),
    value("livez-grace-period", GO_SERVER),
    value("max-mutating-requests-inflight", GO_SERVER),
    value("max-requests-inflight", GO_SERVER),
    value("min-request-timeout", GO_SERVER),
    value("request-timeout", GO_SERVER),
    switch("shutdown-send-retry-after", GO_SERVER),
    value("shutdown-watch-termination-grace-period", GO_SERVER),
    value("strict-transport-security-directives", GO_SERVER),
    value(
        "show-hidden-metrics-for-version",
        "every metric is always shown",
    ),
    // Audit.
    value("audit-log-path", NO_AUDIT),
    value("audit-log-format", NO_AUDIT),
    value("audit-log-maxage", NO_AUDIT),
    value("audit-log-maxbackup", NO_AUDIT),
    value("audit-log-maxsize", NO_AUDIT),
    value("audit-log-mode", NO_AUDIT),
    value("audit-policy-file", NO_AUDIT),
    value("audit-webhook-config-file", NO_AUDIT),
    value("audit-webhook-mode", NO_AUDIT),
    // Features.
    switch("profiling", NO_PROFILING),
    switch("contention-profiling", NO_PROFILING),
    value("debug-socket-path", NO_PROFILING),
    // Logging (--logging-format and -v are honoured).
    value(
        "vmodule",
        "per-file verbosity is RUST_LOG's per-module filter here",
    ),
    value("log-flush-frequency", LOG_BUFFERS),
    value("log-json-info-buffer-size", LOG_BUFFERS),
    switch("log-json-split-stream", LOG_BUFFERS),
    value("log-text-info-buffer-size", LOG_BUFFERS),
    switch("log-text-split-stream", LOG_BUFFERS),
];

/// The heading these flags are listed under in `--help`.
const HEADING: &str = "metrics-server flags accepted and ignored";

/// Which of them were given, with their values as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoredFlags {
    given: Vec<(&'static str, Option<String>)>,
}

impl IgnoredFlags {
    /// One warning per flag given.
    pub fn warn(&self) {
        for (name, value) in &self.given {
            let why = IGNORED
                .iter()
                .find(|f| f.name == *name)
                .map_or("", |f| f.why);
            match value {
                Some(value) => tracing::warn!(flag = %name, %value, "ignored: {why}"),
                None => tracing::warn!(flag = %name, "ignored: {why}"),
            }
        }
    }

    /// The names of the flags given.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.given.iter().map(|(name, _)| *name)
    }
}

impl Args for IgnoredFlags {
    fn augment_args(cmd: Command) -> Command {
        IGNORED.iter().fold(cmd, |cmd, flag| {
            let arg = Arg::new(flag.name)
                .long(flag.name)
                .help(format!("Ignored: {}.", flag.why))
                .help_heading(HEADING)
                .action(ArgAction::Set);
            cmd.arg(if flag.takes_value {
                arg.value_name("VALUE")
            } else {
                // Go's bool flags: bare, or `=true` / `=false`.
                arg.num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
                    .value_parser(["true", "false"])
            })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for IgnoredFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = IGNORED
            .iter()
            .filter(|flag| {
                matches.value_source(flag.name) == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|flag| {
                let value = matches.get_one::<String>(flag.name).cloned();
                (flag.name, value.filter(|_| flag.takes_value))
            })
            .collect();
        Ok(IgnoredFlags { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ignored: IgnoredFlags,
        #[arg(long)]
        secure_port: Option<u16>,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
    }

    #[test]
    fn metrics_server_manifest_flags_are_taken_and_named() {
        let cli = parse(&[
            "--secure-port=10250",
            "--deprecated-kubelet-completely-insecure",
            "--permit-port-sharing=true",
            "--request-timeout=1m",
            "--profiling=false",
            "--audit-log-path",
            "-",
        ])
        .expect("parses");
        assert_eq!(cli.secure_port, Some(10250));
        assert_eq!(
            cli.ignored.given,
            [
                ("deprecated-kubelet-completely-insecure", None),
                ("permit-port-sharing", None),
                ("request-timeout", Some("1m".to_owned())),
                ("audit-log-path", Some("-".to_owned())),
                ("profiling", None),
            ]
        );
    }

    #[test]
    fn a_bool_flag_takes_only_a_bool_and_only_with_equals() {
        assert!(parse(&["--profiling=yes"]).is_err());
        // A bare bool flag does not swallow the next argument.
        let cli = parse(&["--profiling", "--secure-port=1"]).expect("parses");
        assert_eq!(cli.secure_port, Some(1));
    }

    #[test]
    fn nothing_given_nothing_warned() {
        assert_eq!(parse(&[]).expect("parses").ignored, IgnoredFlags::default());
    }

    #[test]
    fn no_ignored_flag_shadows_one_the_aggregator_has() {
        // The binary's whole command line: clap's checks panic on a long
        // flag defined twice.
        use clap::CommandFactory;
        let command = crate::config::Args::command();
        let command = crate::ingest::config::IngestArgs::augment_args(command);
        let command = crate::kubelets::KubeletArgs::augment_args(command);
        support::logging::LogArgs::augment_args(command).debug_assert();
    }
}
