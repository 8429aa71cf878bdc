//! `/healthz`, `/livez`, `/readyz` in the generic apiserver's format: `ok`
//! when every check passes; otherwise 500 and one line per check
//! (`[+]name ok` / `[-]name failed: reason withheld`) ending in
//! `<probe> check failed`. `?verbose` lists the checks on success too,
//! `?exclude=name` skips one, `/<probe>/<name>` runs one.
//!
//! Reasons are withheld from the body (it is served to anonymous callers)
//! and logged instead, as upstream does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;

/// A named check: `Err(reason)` fails it.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`, same checks as `/livez`.
    Healthz,
    /// `/livez`.
    Livez,
    /// `/readyz`.
    Readyz,
}

impl Probe {
    /// The path segment.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Healthz => "healthz",
            Probe::Livez => "livez",
            Probe::Readyz => "readyz",
        }
    }
}

/// The checks of each probe, and the shutdown flag `/readyz` reports.
#[derive(Default)]
pub struct Health {
    live: Vec<(String, Check)>,
    ready: Vec<(String, Check)>,
    shutting_down: Arc<AtomicBool>,
}

impl Health {
    /// Adds a liveness check (also part of `/healthz` and `/readyz`).
    pub fn add_live(&mut self, name: impl Into<String>, check: Check) {
        self.live.push((name.into(), check));
    }

    /// Adds a readiness-only check.
    pub fn add_ready(&mut self, name: impl Into<String>, check: Check) {
        self.ready.push((name.into(), check));
    }

    /// Makes `/readyz` fail from now on (the `shutdown` check), so load
    /// balancers stop sending new requests while existing ones drain.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    fn checks(&self, probe: Probe) -> Vec<(&str, Result<(), String>)> {
        let mut out: Vec<(&str, Result<(), String>)> = vec![("ping", Ok(()))];
        out.extend(self.live.iter().map(|(n, c)| (n.as_str(), c())));
        if probe == Probe::Readyz {
            out.extend(self.ready.iter().map(|(n, c)| (n.as_str(), c())));
            let shutdown = if self.is_shutting_down() {
                Err("process is shutting down".to_owned())
            } else {
                Ok(())
            };
            out.push(("shutdown", shutdown));
        }
        out
    }

    /// Answers a probe: `single` for `/<probe>/<name>` (`None` if unknown →
    /// the caller's 404), `verbose` and `exclude` from the query.
    pub fn answer(
        &self,
        probe: Probe,
        single: Option<&str>,
        verbose: bool,
        exclude: &[&str],
    ) -> Option<(StatusCode, String)> {
        let checks = self.checks(probe);
        if let Some(name) = single {
            let (_, result) = checks.into_iter().find(|(n, _)| *n == name)?;
            return Some(match result {
                Ok(()) => (StatusCode::OK, "ok".to_owned()),
                Err(reason) => {
                    tracing::info!(probe = probe.name(), check = name, %reason, "health check failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal server error: reason withheld\n".to_owned(),
                    )
                }
            });
        }
        let mut body = String::new();
        let mut failed = false;
        for (name, result) in checks.iter().filter(|(n, _)| !exclude.contains(n)) {
            match result {
                Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
                Err(reason) => {
                    failed = true;
                    tracing::info!(probe = probe.name(), check = name, %reason, "health check failed");
                    body.push_str(&format!("[-]{name} failed: reason withheld\n"));
                }
            }
        }
        for name in exclude {
            if checks.iter().any(|(n, _)| n == name) {
                body.push_str(&format!("[+]{name} excluded: ok\n"));
            }
        }
        Some(if failed {
            body.push_str(&format!("{} check failed\n", probe.name()));
            (StatusCode::INTERNAL_SERVER_ERROR, body)
        } else if verbose {
            body.push_str(&format!("{} check passed\n", probe.name()));
            (StatusCode::OK, body)
        } else {
            (StatusCode::OK, "ok".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ready_ok: bool) -> Health {
        let mut h = Health::default();
        h.add_live("log", Arc::new(|| Ok(())));
        h.add_ready(
            "metric-storage-ready",
            Arc::new(move || {
                if ready_ok {
                    Ok(())
                } else {
                    Err("no data".to_owned())
                }
            }),
        );
        h
    }

    #[test]
    fn ok_when_everything_passes() {
        let h = health(true);
        assert_eq!(
            h.answer(Probe::Readyz, None, false, &[]),
            Some((StatusCode::OK, "ok".to_owned()))
        );
        assert_eq!(
            h.answer(Probe::Readyz, None, true, &[]),
            Some((
                StatusCode::OK,
                "[+]ping ok\n[+]log ok\n[+]metric-storage-ready ok\n[+]shutdown ok\nreadyz check passed\n"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn failures_name_the_check() {
        let h = health(false);
        let (code, body) = h.answer(Probe::Readyz, None, false, &[]).expect("answer");
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            "[+]ping ok\n[+]log ok\n[-]metric-storage-ready failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n"
        );
        assert_eq!(
            h.answer(Probe::Livez, None, false, &[]),
            Some((StatusCode::OK, "ok".to_owned())),
            "readiness checks do not affect liveness"
        );
        let (code, body) = h
            .answer(Probe::Readyz, None, false, &["metric-storage-ready"])
            .expect("answer");
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok");
    }

    #[test]
    fn single_checks_and_shutdown() {
        let h = health(true);
        assert_eq!(
            h.answer(Probe::Readyz, Some("ping"), false, &[]),
            Some((StatusCode::OK, "ok".to_owned()))
        );
        assert_eq!(h.answer(Probe::Livez, Some("nope"), false, &[]), None);
        h.set_shutting_down();
        let (code, body) = h.answer(Probe::Readyz, None, false, &[]).expect("answer");
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("[-]shutdown failed"));
        assert_eq!(
            h.answer(Probe::Healthz, None, false, &[]).map(|a| a.0),
            Some(StatusCode::OK)
        );
    }
}
