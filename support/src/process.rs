//! The standard `process_*` metrics of a Prometheus client, read from
//! `/proc/self` at scrape time, so both binaries' `/metrics` carry them
//! under the names dashboards already use; and the text format's family
//! header, for the metrics written with them.

use std::fmt::Write as _;

/// The figures, as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// This process's figures; `None` where `/proc` is not Linux's.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        // Fields after the command name, which is in parentheses and may
        // hold anything: state is field 3, utime 14, stime 15, starttime 22,
        // vsize 23, rss 24 (in pages).
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let page = rustix::param::page_size() as u64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find(|l| l.starts_with("Max open files"))?
                    .split_whitespace()
                    .nth(3)?
                    .parse()
                    .ok()
            });
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            resident_bytes: field(24)? * page,
            virtual_bytes: field(23)?,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds,
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
        })
    }

    /// Appends the metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        };
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.to_string(),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.to_string(),
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.to_string(),
        );
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.to_string(),
        );
        if let Some(max) = self.max_fds {
            metric(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                max.to_string(),
            );
        }
        metric(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.to_string(),
        );
    }
}

/// The `# HELP` and `# TYPE` lines that start a metric family; its samples
/// follow them, grouped.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// A whole family: its header, then one sample per `(labels, value)`, where
/// `labels` is written as given (`{result="ok"}`, or empty for none).
pub fn family_values<L: std::fmt::Display, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, V)>,
) {
    family(out, name, kind, help);
    for (labels, value) in values {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `<prefix>_build_info{version="…"} 1`.
pub fn render_build_info(out: &mut String, prefix: &str, version: &str) {
    let name = format!("{prefix}_build_info");
    family(out, &name, "gauge", "The version of this binary.");
    let _ = writeln!(out, "{name}{{version=\"{version}\"}} 1");
}

/// Both of the above: what every `/metrics` of this project starts with.
pub fn render_standard(out: &mut String, prefix: &str, version: &str) {
    render_build_info(out, prefix, version);
    if let Some(stats) = ProcessStats::read() {
        stats.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_sensibly() {
        let stats = ProcessStats::read().expect("Linux /proc");
        assert!(stats.resident_bytes > 1 << 20, "{stats:?}");
        assert!(stats.virtual_bytes >= stats.resident_bytes, "{stats:?}");
        assert!(stats.open_fds >= 3, "{stats:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 3600.0,
            "{stats:?}"
        );
        let mut out = String::new();
        render_standard(&mut out, "nodepulse_test", "1.2.3");
        assert!(out.contains("nodepulse_test_build_info{version=\"1.2.3\"} 1\n"));
        assert!(out.contains("\nprocess_resident_memory_bytes "));
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
    }

    #[test]
    fn a_family_is_its_header_then_its_samples() {
        let mut out = String::new();
        family_values(
            &mut out,
            "x_total",
            "counter",
            "Xs.",
            [("{r=\"a\"}", 1), ("{r=\"b\"}", 2)],
        );
        family_values(&mut out, "y", "gauge", "Y.", [("", 0.5)]);
        assert_eq!(
            out,
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{r=\"a\"} 1\nx_total{r=\"b\"} 2\n\
             # HELP y Y.\n# TYPE y gauge\ny 0.5\n"
        );
    }
}
