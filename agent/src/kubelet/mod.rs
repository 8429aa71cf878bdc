//! Kubelet stats source (in progress).
