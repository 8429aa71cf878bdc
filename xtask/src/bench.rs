//! Benchmarks whose results go into BENCHMARKS.md. Each reports a ratio
//! against a baseline measured side by side in the same run.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    time::Instant,
};

use agent::ebpf::{CpuAccounting, Options};
use anyhow::{Context, Result, bail};

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = std::io::pipe().context("pipe")?;
    Ok((r.into(), w.into()))
}

fn write_byte(fd: &OwnedFd) -> bool {
    // SAFETY: writing one byte from a valid buffer to an open fd.
    unsafe { libc::write(fd.as_raw_fd(), [1u8].as_ptr().cast(), 1) == 1 }
}

fn read_byte(fd: &OwnedFd) -> bool {
    let mut b = [0u8];
    // SAFETY: reading one byte into a valid buffer from an open fd.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) == 1 }
}

/// Two threads pinned to one CPU bounce a byte through two pipes `ops` times:
/// every op is two context switches. Returns ns per op.
fn ping_pong(cpu: usize, ops: u64) -> Result<f64> {
    let (a_read, b_write) = pipe()?;
    let (b_read, a_write) = pipe()?;
    let peer = std::thread::spawn(move || -> Result<()> {
        pin(cpu)?;
        for _ in 0..ops {
            if !read_byte(&a_read) || !write_byte(&a_write) {
                bail!("peer pipe closed");
            }
        }
        Ok(())
    });
    pin(cpu)?;
    let start = Instant::now();
    for _ in 0..ops {
        if !write_byte(&b_write) || !read_byte(&b_read) {
            bail!("pipe closed");
        }
    }
    let took = start.elapsed();
    peer.join()
        .map_err(|_| anyhow::anyhow!("peer panicked"))??;
    Ok(took.as_nanos() as f64 / ops as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Cost per context switch of the sched_switch program: pinned ping-pong
/// without and with it attached, interleaved rounds, medians.
#[allow(clippy::print_stdout)]
pub fn switch_cost(rounds: usize, ops: u64) -> Result<()> {
    let cpu = 0;
    // Warm up caches and frequency.
    ping_pong(cpu, ops / 4)?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        without.push(ping_pong(cpu, ops)?);
        let programs = CpuAccounting::load(&Options::default()).context("loading eBPF")?;
        with.push(ping_pong(cpu, ops)?);
        drop(programs);
        eprintln!(
            "round {round}: {:.1} ns/op without, {:.1} ns/op with",
            without[round - 1],
            with[round - 1]
        );
    }
    let (w0, w1) = (median(without), median(with));
    let per_switch = (w1 - w0) / 2.0;
    println!(
        "| ping-pong, CPU {cpu}, {ops} ops x {rounds} rounds | without | with sched_switch program |"
    );
    println!("|---|---|---|");
    println!("| median ns per op (2 switches) | {w0:.1} | {w1:.1} |");
    println!("| ratio with/without | 1.000 | {:.3} |", w1 / w0);
    println!("| added cost per context switch | | {per_switch:.1} ns |");
    Ok(())
}
