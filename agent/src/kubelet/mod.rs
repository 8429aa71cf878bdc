//! The kubelet as the agent uses it: a CPU and memory source for when
//! cgroupfs cannot be read ([`source`]), and a periodic cross-check of our
//! figures against the ones metrics-server would have served ([`check`]).
//! Reaching and reading the kubelet is the shared [`kubelet`] crate's.
pub mod check;
pub mod source;

pub use ::kubelet::{
    ClientError, ContainerStats, CpuUsage, DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, KubeletClient,
    KubeletConfig, KubeletStats, MemoryUsage, NodeStats, ParseError, Parsed, PodStats, client,
    parse, resource_url,
};
