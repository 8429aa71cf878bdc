//! The flag references in `docs/flags/`: each binary's `--help` (and its
//! subcommands'), as clap renders it, checked against the file so the
//! reference cannot drift from the flags. `NODEPULSE_BLESS=1` rewrites the
//! file instead.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// `--help` of `binary` with `subcommand` (empty: the binary itself), in a
/// clean environment: clap prints the current value of each flag's
/// environment variable, which must not leak into the reference.
fn help(binary: &Path, subcommand: &[&str]) -> String {
    let out = Command::new(binary)
        .args(subcommand)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("running {} --help: {e}", binary.display()));
    assert!(
        out.status.success(),
        "{} {subcommand:?} --help: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// Renders the reference of `name` (`binary`, with `subcommands`) and
/// compares it with `doc`, or writes it there under `NODEPULSE_BLESS=1`.
pub fn check(name: &str, binary: &Path, subcommands: &[&[&str]], doc: &Path) {
    let mut text = format!(
        "# `{name}` flags\n\n\
         Generated from the binary's own `--help`; a test fails when this file and\n\
         the flags differ (`NODEPULSE_BLESS=1 cargo test --test flag_reference`\n\
         rewrites it). A flag with an `[env: …]` line can also be set by that variable.\n"
    );
    for sub in subcommands {
        let title = std::iter::once(name)
            .chain(sub.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            text,
            "\n## `{title}`\n\n```text\n{}```\n",
            help(binary, sub)
        );
    }
    if std::env::var_os("NODEPULSE_BLESS").is_some() {
        std::fs::write(doc, &text).expect("writing the reference");
        return;
    }
    let current = std::fs::read_to_string(doc).unwrap_or_default();
    assert!(
        current == text,
        "{} is not what the flags say: regenerate it with \
         `NODEPULSE_BLESS=1 cargo test --test flag_reference` and commit it",
        doc.display()
    );
}
