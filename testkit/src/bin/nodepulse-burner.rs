//! `nodepulse-burner`: a container workload with a known load, for the
//! real-node tests and the demo (image `nodepulse.local/burner`).
//!
//! `--cpu 250m` keeps threads busy that share of a core each period (over
//! 1000m, one thread per whole core and one for the rest); `--memory 64Mi`
//! holds that much anonymous memory, resident; `--cpu-step 500m@45s` burns
//! that much more from 45 s after the start (a load step to time how soon
//! a metrics pipeline shows it); `--exit-after 30s` exits with status 1
//! then, so that the kubelet restarts the container.
use std::{process::ExitCode, time::Duration};

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "A workload with a known CPU and memory load")]
struct Args {
    /// CPU to burn: millicores (`250m`) or cores (`0.25`, `2`).
    #[arg(long, default_value = "0", value_parser = parse_cpu)]
    cpu: f64,
    /// Anonymous memory to hold: `64Mi`, `1Gi`, `100M` or bytes.
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    memory: u64,
    /// Burn this much more CPU from this long after the start: `500m@45s`.
    #[arg(long, value_parser = parse_step)]
    cpu_step: Option<(f64, Duration)>,
    /// Exit with status 1 after this long (`30s`, `500ms`): a crash to restart.
    #[arg(long, value_parser = parse_duration)]
    exit_after: Option<Duration>,
    /// The busy/idle period of the CPU burn.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    period: Duration,
}

// A CLI whose output (the container log) is the point.
#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let args = Args::parse();
    let Ok(bytes) = usize::try_from(args.memory) else {
        eprintln!("--memory {} does not fit this machine", args.memory);
        return ExitCode::FAILURE;
    };
    let held = testkit::hold_anonymous(bytes);
    burn(args.cpu, args.period);
    println!(
        "burner ready: cpu {:.3} cores, memory {} bytes held",
        args.cpu,
        held.len()
    );
    if let Some((more, after)) = args.cpu_step {
        let period = args.period;
        std::thread::spawn(move || {
            std::thread::sleep(after);
            burn(more, period);
            println!("stepped up by {more:.3} cores after {after:?}, as asked");
        });
    }
    match args.exit_after {
        Some(after) => {
            std::thread::sleep(after);
            println!("exiting after {after:?}, as asked");
            ExitCode::FAILURE
        }
        None => loop {
            std::thread::park();
        },
    }
}

/// Keeps threads busy `cpu` cores in all: one per whole core, one for the rest.
fn burn(cpu: f64, period: Duration) {
    let mut left = cpu;
    while left > 0.0 {
        let share = left.min(1.0);
        left -= share;
        std::thread::spawn(move || testkit::burn_duty(share, period));
    }
}

fn parse_step(s: &str) -> Result<(f64, Duration), String> {
    let (cpu, after) = s
        .split_once('@')
        .ok_or_else(|| format!("not a CPU step: {s:?} (e.g. 500m@45s)"))?;
    Ok((parse_cpu(cpu)?, parse_duration(after)?))
}

fn parse_cpu(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('m') {
        Some(m) => m.parse::<f64>().map(|m| m / 1000.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("not a CPU quantity: {s:?} (e.g. 250m or 0.25)"))?;
    if !(0.0..=1024.0).contains(&v) {
        return Err(format!("{s:?}: between 0 and 1024 cores"));
    }
    Ok(v)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    let (number, factor) = UNITS
        .iter()
        .find_map(|(u, f)| s.strip_suffix(u).map(|n| (n, *f)))
        .unwrap_or((s, 1));
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("not a memory quantity: {s:?} (e.g. 64Mi)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("not a duration: {s:?} (e.g. 30s or 500ms)");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("250m"), Ok(0.25));
        assert_eq!(parse_cpu("2"), Ok(2.0));
        assert!(parse_cpu("-1").is_err() && parse_cpu("x").is_err());
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("100M"), Ok(100_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1Xi").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_step("500m@45s"), Ok((0.5, Duration::from_secs(45))));
        assert!(parse_step("500m").is_err() && parse_step("x@1s").is_err());
    }
}
