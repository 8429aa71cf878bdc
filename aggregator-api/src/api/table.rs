//! Server-side printing: the `meta.k8s.io` `Table` answered when a client asks
//! for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` (what
//! `kubectl get nodes.metrics.k8s.io` sends).
//!
//! Columns and cells follow metrics-server `pkg/api/table.go`: `Name`
//! (format `name`), one column per usage key in sorted order (format
//! `quantity`), `Window` (format `duration`); a pod row sums its containers.
//! Rows carry the object as the apiserver's `asTable` does: a
//! `PartialObjectMetadata` by default, the full object for
//! `includeObject=Object`, `null` for `None`. An empty list has
//! `columnDefinitions: null` and `rows: null`, as Go's nil slices encode.
//!
//! One deliberate difference: metrics-server takes the columns from the first
//! row only. Here they are the union over all rows, so a `swap` column appears
//! when any node reports swap, and a row without that value shows `<unknown>`
//! rather than a misleading `0`.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::Serialize;

use super::types::{
    ListMeta, NodeMetrics, ObjectMeta, PodMetrics, Usage, node_metrics, pod_metrics, usage,
};
use super::{ApiVersion, NodeUsage, PodUsage, go_quote, sorted_nodes, sorted_pods};
use crate::time::{go_duration, rfc3339_seconds};

/// A `Table` request that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `includeObject` is not `None`, `Metadata`, `Object` or empty; the text is
    /// the apiserver's 400 message.
    #[error(
        "Unable to convert to Table as requested: includeObject: Invalid value: {}: must be 'Metadata', 'Object', 'None', or empty",
        go_quote(.value)
    )]
    IncludeObject {
        /// The value given.
        value: String,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `meta.k8s.io` version the client asked the table in; the table and its
/// `PartialObjectMetadata` rows use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaVersion {
    /// `meta.k8s.io/v1`, what kubectl asks first.
    V1,
    /// `meta.k8s.io/v1beta1`, kubectl's fallback.
    V1Beta1,
}

impl MetaVersion {
    /// The `apiVersion` value.
    pub fn api_version(self) -> &'static str {
        match self {
            MetaVersion::V1 => "meta.k8s.io/v1",
            MetaVersion::V1Beta1 => "meta.k8s.io/v1beta1",
        }
    }

    /// Recognises the `v` media type parameter.
    pub fn from_param(v: &str) -> Option<Self> {
        match v {
            "v1" => Some(MetaVersion::V1),
            "v1beta1" => Some(MetaVersion::V1Beta1),
            _ => None,
        }
    }
}

/// What each row's `object` holds (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IncludeObject {
    /// `null`.
    None,
    /// A `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The full `NodeMetrics` / `PodMetrics`.
    Object,
}

impl IncludeObject {
    /// Reads the `includeObject` query parameter; absent or empty is the default.
    pub fn from_query(value: Option<&str>) -> Result<Self> {
        match value.unwrap_or("") {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "None" => Ok(IncludeObject::None),
            "Object" => Ok(IncludeObject::Object),
            other => Err(Error::IncludeObject {
                value: other.to_owned(),
            }),
        }
    }
}

/// `metav1.TableColumnDefinition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableColumnDefinition {
    /// Column title.
    pub name: String,
    /// OpenAPI type, `string`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `name`, `quantity` or `duration`.
    pub format: String,
    /// Always present, empty except for `Name`.
    pub description: String,
    /// Always 0 (every column is shown by default).
    pub priority: i32,
}

/// `metav1.PartialObjectMetadata`, the default row object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialObjectMetadata {
    /// `PartialObjectMetadata`.
    pub kind: String,
    /// The table's `apiVersion`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The object's metadata.
    pub metadata: ObjectMeta,
}

/// A row's `object`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RowObject {
    /// `includeObject=Metadata`.
    Metadata(PartialObjectMetadata),
    /// `includeObject=Object` on nodes.
    Node(NodeMetrics),
    /// `includeObject=Object` on pods.
    Pod(PodMetrics),
}

/// `metav1.TableRow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableRow {
    /// Name, quantities in column order, window.
    pub cells: Vec<String>,
    /// The object, or `null` for `includeObject=None`.
    pub object: Option<RowObject>,
}

/// `metav1.Table`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// `Table`.
    pub kind: String,
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `{}`.
    pub metadata: ListMeta,
    /// `null` for an empty table.
    #[serde(rename = "columnDefinitions")]
    pub column_definitions: Option<Vec<TableColumnDefinition>>,
    /// `null` for an empty table.
    pub rows: Option<Vec<TableRow>>,
}

/// Shown for a column a row has no value for (only `swap` can be missing).
const UNKNOWN_CELL: &str = "<unknown>";

fn column(name: &str, format: &str, description: &str) -> TableColumnDefinition {
    TableColumnDefinition {
        name: name.to_owned(),
        type_: "string".to_owned(),
        format: format.to_owned(),
        description: description.to_owned(),
        priority: 0,
    }
}

/// One row's data before it is laid out in columns.
struct RowData {
    name: String,
    usage: Usage,
    window: String,
    object: Option<RowObject>,
}

fn build(rows: Vec<RowData>, version: MetaVersion) -> Table {
    let mut table = Table {
        kind: "Table".to_owned(),
        api_version: version.api_version().to_owned(),
        metadata: ListMeta {},
        column_definitions: None,
        rows: None,
    };
    if rows.is_empty() {
        return table;
    }
    let names: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.usage.keys().map(String::as_str))
        .collect();
    let mut columns = vec![column("Name", "name", "Name of the resource")];
    columns.extend(names.iter().map(|n| column(n, "quantity", "")));
    columns.push(column("Window", "duration", ""));
    let laid_out = rows
        .iter()
        .map(|r| {
            let mut cells = Vec::with_capacity(names.len() + 2);
            cells.push(r.name.clone());
            cells.extend(names.iter().map(|n| {
                r.usage
                    .get(*n)
                    .cloned()
                    .unwrap_or_else(|| UNKNOWN_CELL.to_owned())
            }));
            cells.push(r.window.clone());
            TableRow {
                cells,
                object: r.object.clone(),
            }
        })
        .collect();
    table.column_definitions = Some(columns);
    table.rows = Some(laid_out);
    table
}

fn partial(metadata: ObjectMeta, version: MetaVersion) -> RowObject {
    RowObject::Metadata(PartialObjectMetadata {
        kind: "PartialObjectMetadata".to_owned(),
        api_version: version.api_version().to_owned(),
        metadata,
    })
}

/// Node metrics as a table, rows sorted by name. For `GET …/nodes/{name}` pass
/// the one node (`std::slice::from_ref`).
pub fn node_table(
    nodes: &[NodeUsage],
    api_version: ApiVersion,
    table_version: MetaVersion,
    include: IncludeObject,
    now: SystemTime,
) -> Table {
    let rows = sorted_nodes(nodes)
        .into_iter()
        .map(|n| {
            let object = node_metrics(n, api_version, now);
            RowData {
                name: n.name.to_string(),
                usage: object.usage.clone(),
                window: go_duration(n.window),
                object: match include {
                    IncludeObject::None => None,
                    IncludeObject::Metadata => Some(partial(object.metadata, table_version)),
                    IncludeObject::Object => Some(RowObject::Node(object)),
                },
            }
        })
        .collect();
    build(rows, table_version)
}

/// Pod metrics as a table, rows sorted by namespace then name; each row sums
/// its containers (`swap` only when every container reports it).
pub fn pod_table(
    pods: &[PodUsage],
    api_version: ApiVersion,
    table_version: MetaVersion,
    include: IncludeObject,
    now: SystemTime,
) -> Table {
    let rows = sorted_pods(pods)
        .into_iter()
        .map(|p| {
            let cpu = p
                .containers
                .iter()
                .fold(0u64, |sum, c| sum.saturating_add(c.cpu_nanocores));
            let memory = p
                .containers
                .iter()
                .fold(0u64, |sum, c| sum.saturating_add(c.memory_bytes));
            let swap = p
                .containers
                .iter()
                .try_fold(0u64, |sum, c| c.swap_bytes.map(|s| sum.saturating_add(s)));
            let object = match include {
                IncludeObject::None => None,
                IncludeObject::Metadata => Some(partial(
                    ObjectMeta {
                        name: p.name.to_string(),
                        namespace: p.namespace.to_string(),
                        creation_timestamp: Some(rfc3339_seconds(now)),
                        labels: p.labels.to_map(),
                    },
                    table_version,
                )),
                IncludeObject::Object => Some(RowObject::Pod(pod_metrics(p, api_version, now))),
            };
            RowData {
                name: p.name.to_string(),
                usage: usage(cpu, memory, swap),
                window: go_duration(p.window),
                object,
            }
        })
        .collect();
    build(rows, table_version)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::ContainerUsage;
    use super::super::types::to_json;
    use super::*;

    fn json(t: &Table) -> String {
        String::from_utf8(to_json(t).expect("serialises")).expect("utf-8")
    }

    fn node(name: &str, swap: Option<u64>) -> NodeUsage {
        NodeUsage {
            name: name.to_owned().into(),
            labels: BTreeMap::from([("role".to_owned(), "worker".to_owned())]).into(),
            timestamp: UNIX_EPOCH + Duration::from_secs(60),
            window: Duration::from_secs(15),
            cpu_nanocores: 250_000_000,
            memory_bytes: 2 << 30,
            swap_bytes: swap,
        }
    }

    fn pod() -> PodUsage {
        let container = |name: &str, cpu, mem, swap| ContainerUsage {
            name: name.to_owned().into(),
            cpu_nanocores: cpu,
            memory_bytes: mem,
            swap_bytes: swap,
        };
        PodUsage {
            namespace: "default".to_owned().into(),
            name: "web".to_owned().into(),
            labels: BTreeMap::new().into(),
            timestamp: UNIX_EPOCH + Duration::from_secs(60),
            window: Duration::from_millis(15_002),
            containers: vec![
                container("a", 1_000_000, 1 << 20, Some(0)),
                container("b", 2_000_000, 3 << 20, None),
            ],
        }
    }

    #[test]
    fn include_object_parses_like_the_apiserver() {
        assert_eq!(IncludeObject::from_query(None), Ok(IncludeObject::Metadata));
        assert_eq!(
            IncludeObject::from_query(Some("")),
            Ok(IncludeObject::Metadata)
        );
        assert_eq!(
            IncludeObject::from_query(Some("Metadata")),
            Ok(IncludeObject::Metadata)
        );
        assert_eq!(
            IncludeObject::from_query(Some("None")),
            Ok(IncludeObject::None)
        );
        assert_eq!(
            IncludeObject::from_query(Some("Object")),
            Ok(IncludeObject::Object)
        );
        assert_eq!(
            IncludeObject::from_query(Some("object")),
            Err(Error::IncludeObject {
                value: "object".to_owned()
            }),
            "case matters upstream"
        );
    }

    #[test]
    fn node_table_default_shape() {
        let table = node_table(
            &[node("n1", None)],
            ApiVersion::V1Beta1,
            MetaVersion::V1,
            IncludeObject::Metadata,
            UNIX_EPOCH,
        );
        assert_eq!(
            json(&table),
            concat!(
                r#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{},"columnDefinitions":["#,
                r#"{"name":"Name","type":"string","format":"name","description":"Name of the resource","priority":0},"#,
                r#"{"name":"cpu","type":"string","format":"quantity","description":"","priority":0},"#,
                r#"{"name":"memory","type":"string","format":"quantity","description":"","priority":0},"#,
                r#"{"name":"Window","type":"string","format":"duration","description":"","priority":0}],"#,
                r#""rows":[{"cells":["n1","250m","2Gi","15s"],"object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"n1","creationTimestamp":"1970-01-01T00:00:00Z","labels":{"role":"worker"}}}}]}"#
            )
        );
    }

    #[test]
    fn empty_table_has_null_columns_and_rows() {
        let table = node_table(
            &[],
            ApiVersion::V1,
            MetaVersion::V1Beta1,
            IncludeObject::Metadata,
            UNIX_EPOCH,
        );
        assert_eq!(
            json(&table),
            r#"{"kind":"Table","apiVersion":"meta.k8s.io/v1beta1","metadata":{},"columnDefinitions":null,"rows":null}"#
        );
        let pods = pod_table(
            &[],
            ApiVersion::V1,
            MetaVersion::V1,
            IncludeObject::None,
            UNIX_EPOCH,
        );
        assert_eq!(pods.rows, None);
        assert_eq!(pods.column_definitions, None);
    }

    #[test]
    fn include_none_and_object() {
        let none = node_table(
            &[node("n1", None)],
            ApiVersion::V1,
            MetaVersion::V1,
            IncludeObject::None,
            UNIX_EPOCH,
        );
        assert!(json(&none).contains(r#""object":null"#));

        let full = node_table(
            &[node("n1", None)],
            ApiVersion::V1,
            MetaVersion::V1,
            IncludeObject::Object,
            UNIX_EPOCH,
        );
        assert!(
            json(&full).contains(r#""object":{"kind":"NodeMetrics","apiVersion":"metrics.k8s.io/v1","metadata":{"name":"n1""#),
            "{}",
            json(&full)
        );
    }

    #[test]
    fn pod_rows_sum_containers() {
        let table = pod_table(
            &[pod()],
            ApiVersion::V1Beta1,
            MetaVersion::V1Beta1,
            IncludeObject::Metadata,
            UNIX_EPOCH,
        );
        let rows = table.rows.expect("rows");
        assert_eq!(rows[0].cells, ["web", "3m", "4Mi", "15.002s"]);
        let columns: Vec<_> = table
            .column_definitions
            .expect("columns")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            columns,
            ["Name", "cpu", "memory", "Window"],
            "swap unknown for one container"
        );
        match &rows[0].object {
            Some(RowObject::Metadata(m)) => {
                assert_eq!(m.api_version, "meta.k8s.io/v1beta1");
                assert_eq!(m.metadata.namespace, "default");
            }
            other => panic!("unexpected row object {other:?}"),
        }
    }

    #[test]
    fn pod_object_rows_carry_the_full_pod() {
        let table = pod_table(
            &[pod()],
            ApiVersion::V1,
            MetaVersion::V1,
            IncludeObject::Object,
            UNIX_EPOCH,
        );
        let rows = table.rows.expect("rows");
        match &rows[0].object {
            Some(RowObject::Pod(p)) => {
                assert_eq!(p.kind.as_deref(), Some("PodMetrics"));
                assert_eq!(p.containers.len(), 2);
            }
            other => panic!("unexpected row object {other:?}"),
        }
    }

    #[test]
    fn swap_column_is_the_union_and_missing_cells_say_unknown() {
        let table = node_table(
            &[node("b", Some(1024)), node("a", None)],
            ApiVersion::V1,
            MetaVersion::V1,
            IncludeObject::None,
            UNIX_EPOCH,
        );
        let columns: Vec<_> = table
            .column_definitions
            .as_ref()
            .expect("columns")
            .iter()
            .map(|c| (c.name.as_str(), c.format.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("Name", "name"),
                ("cpu", "quantity"),
                ("memory", "quantity"),
                ("swap", "quantity"),
                ("Window", "duration")
            ]
        );
        let rows = table.rows.expect("rows");
        assert_eq!(
            rows[0].cells,
            ["a", "250m", "2Gi", "<unknown>", "15s"],
            "sorted by name"
        );
        assert_eq!(rows[1].cells, ["b", "250m", "2Gi", "1Ki", "15s"]);
    }
}
