//! What benches read of a process they measure: its CPU time and RSS, and
//! their own open-file limit raised for thousands of connections.
use std::{io, path::Path};

fn other(what: String) -> io::Error {
    io::Error::other(what)
}

/// CPU time of process `pid`, seconds (utime + stime).
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    crate::stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")))
        .ok_or_else(|| other(format!("cannot read /proc/{pid}/stat")))
}

/// `VmRSS` of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| other(format!("no VmRSS in /proc/{pid}/status")))
}

/// Raises this process's open-file soft limit to its hard limit, which it
/// returns.
pub fn raise_nofile() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write and read the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let me = std::process::id();
        assert!(cpu_seconds(me).expect("cpu") >= 0.0);
        assert!(rss_kib(me).expect("rss") > 0);
        assert!(cpu_seconds(u32::MAX).is_err());
        assert!(raise_nofile().expect("raised") > 0);
    }
}
