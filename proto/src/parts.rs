//! Metadata in parts (`Ingest.ReportInParts`, `NodeReport.metadata_continues`):
//! the sender's [`split`] and the receiver's [`Parts`].
//!
//! A node's metadata grows with its pods (about 0.5 KB a pod). Sent in one
//! message it would grow the receiver's decode buffer to the largest
//! message, and the buffer keeps that size for the stream's life. In parts,
//! no message carries more than [`PART_BYTES`] of metadata.

use prost::Message as _;

use crate::v1::{NodeMetadata, NodeReport};

/// The largest metadata part a sender makes (a single pod larger than this
/// goes alone). Half of tonic's 8 KiB decode buffer: a part never grows it.
pub const PART_BYTES: usize = 4096;

/// `metadata` cut into parts of at most `budget` encoded bytes, in order:
/// the node's labels in the first, then as many whole pods as fit in each.
/// Never empty; joined with [`Parts`], they give `metadata` back.
pub fn split(metadata: &NodeMetadata, budget: usize) -> Vec<NodeMetadata> {
    let mut parts = Vec::new();
    let mut current = NodeMetadata {
        labels: metadata.labels.clone(),
        pods: Vec::new(),
    };
    let mut size = current.encoded_len();
    for pod in &metadata.pods {
        let pod_size = prost::encoding::message::encoded_len(2, pod);
        if size + pod_size > budget && (!current.pods.is_empty() || !current.labels.is_empty()) {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        current.pods.push(pod.clone());
        size += pod_size;
    }
    parts.push(current);
    parts
}

/// The reports to send for `report` with `metadata` on a stream that takes
/// parts: `report` with its metadata when the two fit in [`PART_BYTES`];
/// otherwise the metadata's parts, each flagged `metadata_continues`, then
/// `report` without metadata (which completes it).
pub fn reports_in_parts(report: NodeReport, metadata: &NodeMetadata) -> Vec<NodeReport> {
    if report.encoded_len() + prost::encoding::message::encoded_len(5, metadata) <= PART_BYTES {
        return vec![NodeReport {
            metadata: Some(metadata.clone()),
            ..report
        }];
    }
    let mut out: Vec<NodeReport> = split(metadata, PART_BYTES)
        .into_iter()
        .map(|part| NodeReport {
            node: report.node.clone(),
            metadata: Some(part),
            metadata_continues: true,
            ..NodeReport::default()
        })
        .collect();
    out.push(NodeReport {
        metadata: None,
        ..report
    });
    out
}

/// Why a stream's metadata parts were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("a metadata part (metadata_continues) carries node usage or pods")]
    NotOnlyMetadata,
    #[error("a metadata part (metadata_continues) carries no metadata")]
    NoMetadata,
    #[error("metadata parts add up to more than {limit} bytes, the limit for one message")]
    TooLarge { limit: usize },
}

/// The receiving end: the parts of one metadata, joined until the report
/// that completes them.
#[derive(Debug)]
pub struct Parts {
    joined: Option<NodeMetadata>,
    bytes: usize,
    limit: usize,
}

impl Parts {
    /// `limit`: the most the parts of one metadata may add up to, encoded
    /// (the receiver's limit for one message, so it holds no more than one
    /// whole report would make it hold).
    pub fn new(limit: usize) -> Self {
        Self {
            joined: None,
            bytes: 0,
            limit,
        }
    }

    /// Takes the stream's next report: `None` for a part (held), else the
    /// report, carrying the joined metadata when parts came before it.
    pub fn take(&mut self, mut report: NodeReport) -> Result<Option<NodeReport>, PartError> {
        if !report.metadata_continues {
            if let Some(mut joined) = self.joined.take() {
                let size = std::mem::take(&mut self.bytes);
                if let Some(last) = report.metadata.take() {
                    self.check(size + last.encoded_len())?;
                    join(&mut joined, last);
                }
                report.metadata = Some(joined);
            }
            return Ok(Some(report));
        }
        if report.node_usage.is_some() || !report.pods.is_empty() {
            return Err(PartError::NotOnlyMetadata);
        }
        let part = report.metadata.ok_or(PartError::NoMetadata)?;
        self.bytes += part.encoded_len();
        self.check(self.bytes)?;
        join(self.joined.get_or_insert_with(NodeMetadata::default), part);
        Ok(None)
    }

    fn check(&self, bytes: usize) -> Result<(), PartError> {
        if bytes > self.limit {
            return Err(PartError::TooLarge { limit: self.limit });
        }
        Ok(())
    }
}

fn join(into: &mut NodeMetadata, part: NodeMetadata) {
    into.labels.extend(part.labels);
    into.pods.extend(part.pods);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ContainerName, PodMetadata, PodSample, Usage};

    fn metadata(pods: usize) -> NodeMetadata {
        NodeMetadata {
            labels: [("kubernetes.io/hostname".to_string(), "n".to_string())].into(),
            pods: (0..pods)
                .map(|i| PodMetadata {
                    uid: format!("00000000-0000-0000-0000-{i:012}"),
                    namespace: "team".into(),
                    name: format!("web-7d4b9c-{i:05}"),
                    labels: [("app".to_string(), "web".to_string())].into(),
                    running: true,
                    containers: vec![ContainerName {
                        id: format!("{i:064x}"),
                        name: "main".into(),
                    }],
                })
                .collect(),
        }
    }

    fn report(pods: usize) -> NodeReport {
        NodeReport {
            node: "n".into(),
            sample_unix_nanos: 1,
            node_usage: Some(Usage::default()),
            pods: (0..pods)
                .map(|i| PodSample {
                    uid: format!("00000000-0000-0000-0000-{i:012}"),
                    containers: Vec::new(),
                })
                .collect(),
            seq: 3,
            agent_epoch: 7,
            ..NodeReport::default()
        }
    }

    fn receive(reports: Vec<NodeReport>) -> Result<Vec<NodeReport>, PartError> {
        let mut parts = Parts::new(4 << 20);
        let mut out = Vec::new();
        for r in reports {
            out.extend(parts.take(r)?);
        }
        Ok(out)
    }

    #[test]
    fn large_metadata_goes_in_bounded_parts_and_joins_back_whole() {
        let meta = metadata(110);
        let sent = reports_in_parts(report(110), &meta);
        let whole = meta.encoded_len();
        assert!(
            sent.len() > whole / PART_BYTES + 1,
            "{whole} B in {} reports",
            sent.len()
        );
        for part in &sent[..sent.len() - 1] {
            assert!(part.metadata_continues);
            assert!(
                part.encoded_len() <= PART_BYTES + 16,
                "{}",
                part.encoded_len()
            );
        }
        let last = sent.last().expect("the sample");
        assert!(!last.metadata_continues && last.metadata.is_none());
        let got = receive(sent).expect("joined");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0],
            NodeReport {
                metadata: Some(meta),
                ..report(110)
            }
        );
    }

    #[test]
    fn small_metadata_rides_with_its_report() {
        let meta = metadata(2);
        let sent = reports_in_parts(report(2), &meta);
        assert_eq!(
            sent,
            vec![NodeReport {
                metadata: Some(meta),
                ..report(2)
            }]
        );
    }

    #[test]
    fn a_pod_larger_than_a_part_goes_alone() {
        let mut meta = metadata(3);
        meta.pods[1].labels = (0..200)
            .map(|i| (format!("k{i}"), "v".repeat(60)))
            .collect();
        let parts = split(&meta, 1024);
        let pods: Vec<usize> = parts.iter().map(|p| p.pods.len()).collect();
        assert!(
            parts
                .iter()
                .any(|p| p.pods.len() == 1 && p.pods[0] == meta.pods[1])
        );
        assert_eq!(pods.iter().sum::<usize>(), 3);
        // Labels only in the first part; no empty part.
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.labels.is_empty() && !p.pods.is_empty())
        );
    }

    #[test]
    fn a_node_without_pods_is_one_part() {
        assert_eq!(split(&metadata(0), PART_BYTES), vec![metadata(0)]);
    }

    #[test]
    fn the_last_part_may_ride_with_the_report() {
        let meta = metadata(20);
        let parts = split(&meta, 1024);
        let n = parts.len();
        let mut sent: Vec<NodeReport> = parts[..n - 1]
            .iter()
            .map(|p| NodeReport {
                node: "n".into(),
                metadata: Some(p.clone()),
                metadata_continues: true,
                ..NodeReport::default()
            })
            .collect();
        sent.push(NodeReport {
            metadata: Some(parts[n - 1].clone()),
            ..report(20)
        });
        assert_eq!(
            receive(sent).expect("joined")[0].metadata.as_ref(),
            Some(&meta)
        );
    }

    #[test]
    fn a_part_with_samples_or_without_metadata_is_refused() {
        let with_usage = NodeReport {
            metadata_continues: true,
            metadata: Some(metadata(1)),
            ..report(0)
        };
        assert_eq!(receive(vec![with_usage]), Err(PartError::NotOnlyMetadata));
        let empty = NodeReport {
            metadata_continues: true,
            ..NodeReport::default()
        };
        assert_eq!(receive(vec![empty]), Err(PartError::NoMetadata));
    }

    #[test]
    fn parts_beyond_the_limit_are_refused() {
        let part = NodeReport {
            metadata_continues: true,
            metadata: Some(metadata(10)),
            ..NodeReport::default()
        };
        let one = metadata(10).encoded_len();
        let mut parts = Parts::new(3 * one);
        for _ in 0..3 {
            assert_eq!(parts.take(part.clone()), Ok(None));
        }
        assert_eq!(
            parts.take(part),
            Err(PartError::TooLarge { limit: 3 * one })
        );
        // A completing report's own part counts too.
        let mut parts = Parts::new(one + 1);
        assert_eq!(
            parts.take(NodeReport {
                metadata_continues: true,
                metadata: Some(metadata(10)),
                ..NodeReport::default()
            }),
            Ok(None)
        );
        assert_eq!(
            parts.take(NodeReport {
                metadata: Some(metadata(1)),
                ..report(1)
            }),
            Err(PartError::TooLarge { limit: one + 1 })
        );
    }
}
