//! The node agent: exact per-cgroup CPU time from eBPF (cgroupfs as fallback),
//! memory working set from cgroupfs, and the pod/container each cgroup belongs to.
pub mod cgroup;
pub mod collector;
pub mod ebpf;
pub mod health;
pub mod kubelet;
pub mod report;
pub mod run;
pub mod top;
