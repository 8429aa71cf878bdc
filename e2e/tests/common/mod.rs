//! Helpers the end-to-end test files share: burns with known loads, parsing
//! of what kubectl and metrics.k8s.io print (quantities, timestamps, Go
//! durations, tables), and the kernel's own numbers for a cgroup.
//!
//! Each test file includes it with `mod common;` and uses part of it.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use e2e::Cluster;
use serde_json::Value;
use testkit::Burn;

/// Busy `fraction` of every 20 ms: `fraction` of one core.
pub fn duty(fraction: f64) -> Burn {
    Burn::Duty {
        fraction,
        period_ms: 20,
    }
}

/// A burner that wakes once a second and does nothing.
pub fn idle() -> Burn {
    Burn::Duty {
        fraction: 0.0,
        period_ms: 1000,
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A Kubernetes quantity as a number: cores for CPU (`"250m"` → 0.25), bytes
/// for memory (`"14520Ki"` → 14868480).
pub fn quantity(s: &str) -> Result<f64> {
    let s = s.trim();
    let suffixes: [(&str, f64); 16] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("", 1.0),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = s.strip_suffix(suffix)
            && let Ok(v) = number.parse::<f64>()
        {
            return Ok(v * factor);
        }
    }
    bail!("not a quantity: {s:?}")
}

/// `2006-01-02T15:04:05Z` (RFC 3339, UTC, whole seconds, as metav1.Time
/// serializes) → seconds since the epoch; `None` for any other form.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A Go `time.Duration.String()` (`"1.002s"`, `"1m0s"`, `"500ms"`) →
/// seconds; `None` for anything Go would not print.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    if s == "0s" {
        return Some(0.0);
    }
    let units: [(&str, f64); 6] = [
        ("h", 3600.0),
        ("ms", 1e-3),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ns", 1e-9),
        ("m", 60.0),
    ];
    let mut rest = s;
    let mut total = 0.0;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, factor) = units
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .map(|(u, f)| (*u, *f))
            .or_else(|| rest.starts_with('s').then_some(("s", 1.0)))?;
        rest = &rest[unit.len()..];
        total += value * factor;
        any = true;
    }
    any.then_some(total)
}

/// `kubectl get --raw <path>` as `user`, parsed.
pub fn raw_as(c: &Cluster, user: &str, path: &str) -> Result<Value> {
    let out = c.kubectl_as(user, &["get", "--raw", path])?;
    if !out.status.success() {
        bail!(
            "kubectl get --raw {path} as {user} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("GET {path}: not JSON"))
}

/// `kubectl get --raw <path>` as the admin, parsed.
pub fn raw(c: &Cluster, path: &str) -> Result<Value> {
    raw_as(c, e2e::USER_ADMIN, path)
}

/// `text` without ANSI escape sequences (tracing colours its log lines).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The `items` of a list as `(namespace/)name` strings, in order.
pub fn item_names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let name = i["metadata"]["name"].as_str().unwrap_or_default();
            match i["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_string(),
            }
        })
        .collect()
}

/// A resource's usage in a NodeMetrics (`usage`) or a PodMetrics (the sum
/// over `containers`), as a number.
pub fn usage(item: &Value, resource: &str) -> Result<f64> {
    if let Some(containers) = item["containers"].as_array() {
        containers.iter().try_fold(0.0, |sum, c| {
            let q = c["usage"][resource]
                .as_str()
                .ok_or_else(|| anyhow!("container without {resource}: {c}"))?;
            Ok(sum + quantity(q)?)
        })
    } else {
        let q = item["usage"][resource]
            .as_str()
            .ok_or_else(|| anyhow!("no {resource} usage: {item}"))?;
        quantity(q)
    }
}

/// One container's usage of `resource` in a PodMetrics.
pub fn container_usage(pod: &Value, container: &str, resource: &str) -> Result<f64> {
    let c = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .ok_or_else(|| anyhow!("no container {container} in {pod}"))?;
    quantity(
        c["usage"][resource]
            .as_str()
            .ok_or_else(|| anyhow!("container {container} without {resource}"))?,
    )
}

/// Cumulative CPU of a cgroup (relative to the v2 root) as the kernel's
/// `cpu.stat` says, in seconds.
pub fn cgroup_cpu_seconds(c: &Cluster, rel: &str) -> Result<f64> {
    let dir = c.cgroup_dir(rel).ok_or_else(|| anyhow!("no cgroup v2"))?;
    let text = fs::read_to_string(dir.join("cpu.stat"))
        .with_context(|| format!("reading {}/cpu.stat", dir.display()))?;
    let usec: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no usage_usec in {}/cpu.stat", dir.display()))?;
    Ok(usec as f64 / 1e6)
}

/// A cgroup's memory working set as the kernel reports it (what the agent
/// must report): v2 `memory.current − inactive_file` where the v2 tree has
/// the memory controller, else v1 `memory.usage_in_bytes −
/// total_inactive_file`; floored at 0.
pub fn cgroup_working_set(c: &Cluster, rel: &str) -> Result<f64> {
    let rel = rel.trim_start_matches('/');
    let h = c.hierarchy();
    let stat = |path: std::path::PathBuf, key: &str| -> Result<f64> {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no {key} in {}", path.display()))
    };
    let read = |path: std::path::PathBuf| -> Result<f64> {
        fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .parse::<f64>()
            .with_context(|| format!("{}: not a number", path.display()))
    };
    if let Some(v2) = &h.v2
        && v2.join(rel).join("memory.current").exists()
    {
        let dir = v2.join(rel);
        let ws =
            read(dir.join("memory.current"))? - stat(dir.join("memory.stat"), "inactive_file")?;
        return Ok(ws.max(0.0));
    }
    let v1 = h
        .v1_memory
        .as_ref()
        .ok_or_else(|| anyhow!("no memory controller"))?
        .join(rel);
    let ws = read(v1.join("memory.usage_in_bytes"))?
        - stat(v1.join("memory.stat"), "total_inactive_file")?;
    Ok(ws.max(0.0))
}

/// A table as kubectl prints it: the header's columns, then each row's
/// (split on whitespace; none of the values printed here contain spaces).
pub fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let rows = lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    (header, rows)
}

/// The rows of a table keyed by the values of columns `key` (joined by `/`).
pub fn rows_by(
    header: &[String],
    rows: &[Vec<String>],
    key: &[&str],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for row in rows {
        if row.len() != header.len() {
            bail!("row {row:?} does not match header {header:?}");
        }
        let fields: BTreeMap<String, String> =
            header.iter().cloned().zip(row.iter().cloned()).collect();
        let k: Vec<&str> = key
            .iter()
            .map(|k| fields.get(*k).map_or("", String::as_str))
            .collect();
        out.insert(k.join("/"), fields);
    }
    Ok(out)
}

/// `|got − want| / want`.
pub fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want
}

pub const MIB: f64 = 1024.0 * 1024.0;

/// Waits until `GET /apis/metrics.k8s.io/v1/pods` lists every pod in
/// `want` (`namespace/name`) and `…/nodes` every node in `nodes`.
pub fn wait_all_served(
    c: &mut Cluster,
    want: &[String],
    nodes: &[&str],
    timeout: Duration,
) -> Result<()> {
    c.wait_for("every pod and node served", timeout, |c| {
        c.ensure_ours_running()?;
        let pods = raw(c, "/apis/metrics.k8s.io/v1/pods")?;
        let listed = item_names(&pods);
        if !want.iter().all(|p| listed.contains(p)) {
            return Ok(None);
        }
        let n = raw(c, "/apis/metrics.k8s.io/v1/nodes")?;
        let listed = item_names(&n);
        Ok(nodes
            .iter()
            .all(|node| listed.iter().any(|l| l == node))
            .then_some(()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_metrics_apis_print() {
        let close = |a: f64, b: f64| (a - b).abs() <= b.abs() * 1e-12;
        assert!(close(quantity("7338891n").expect("quantity"), 7338891e-9));
        assert!(close(quantity("13m").expect("quantity"), 0.013));
        assert!(close(quantity("2").expect("quantity"), 2.0));
        assert_eq!(quantity("14520Ki").expect("quantity"), 14_868_480.0);
        assert_eq!(quantity("4Mi").expect("quantity"), 4_194_304.0);
        assert!(quantity("x").is_err());
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2006-01-02T15:04:05Z"), Some(1_136_214_245));
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_timestamp("2006-01-02T15:04:05.5Z"), None);
        assert_eq!(parse_go_duration("1.002s"), Some(1.002));
        assert_eq!(parse_go_duration("1m0s"), Some(60.0));
        assert_eq!(parse_go_duration("500ms"), Some(0.5));
        assert_eq!(parse_go_duration("PT1S"), None);
        assert_eq!(parse_go_duration("1"), None);
    }
}
