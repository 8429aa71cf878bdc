#!/usr/bin/env bash
# Checks that deploy/components.yaml and the Helm chart (default values) describe
# the same objects, and that the privileges stay what deploy/README.md documents.
#
#   deploy/check.sh            # helm lint, render, compare, invariants (no cluster)
#   deploy/check.sh --server   # also `kubectl apply --dry-run=server` both against
#                              # the cluster of $KUBECONFIG (creates nothing)
#
# Needs helm (and kubectl for --server): $HELM/$KUBECTL, else on PATH, else the
# pinned ones from scripts/upstream.sh. YAML is turned into JSON by helm itself
# (strict: duplicate keys fail), then compared with python3's standard library.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CHART="$HERE/helm/nodepulse"
MANIFEST="$HERE/components.yaml"
NAMESPACE=kube-system
SERVER=0
for arg in "$@"; do
  case "$arg" in
    --server) SERVER=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "check: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1mcheck:\033[0m %s\n' "$*" >&2; }

tool() { # tool <name> <override>: path of a tool
  local name=$1 override=$2 bin
  if [ -n "$override" ]; then echo "$override"; return; fi
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  bin=$("$ROOT/scripts/upstream.sh" 2>/dev/null | tail -n1) || true
  [ -x "$bin/$name" ] || { echo "check: $name not found (set ${name^^} or run scripts/upstream.sh)" >&2; exit 1; }
  echo "$bin/$name"
}
HELM=$(tool helm "${HELM:-}")
command -v python3 >/dev/null || { echo "check: python3 not found" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nodepulse-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "helm lint --strict"
"$HELM" lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log" >&2; exit 1; }

log "helm template nodepulse $CHART -n $NAMESPACE"
"$HELM" template nodepulse "$CHART" -n "$NAMESPACE" >"$WORK/chart.yaml"

# A throwaway chart whose only template turns in/<name>.yaml (multi-document)
# into {"items": [...]} JSON.
to_json() { # to_json <yaml file> <json file>
  local conv="$WORK/yaml2json"
  rm -rf "$conv" && mkdir -p "$conv/templates" "$conv/in"
  printf 'apiVersion: v2\nname: yaml2json\nversion: 0.0.0\n' >"$conv/Chart.yaml"
  cp "$1" "$conv/in/input.yaml"
  cat >"$conv/templates/out.yaml" <<'EOF'
{{- $docs := list }}
{{- range regexSplit "(?m)^---[ \t]*$" (.Files.Get "in/input.yaml") -1 }}
{{- $o := fromYaml . }}
{{- if hasKey $o "Error" }}{{ fail (printf "YAML: %s" $o.Error) }}{{ end }}
{{- if $o }}{{ $docs = append $docs $o }}{{ end }}
{{- end }}
{{ dict "items" $docs | toJson }}
EOF
  "$HELM" template yaml2json "$conv" --show-only templates/out.yaml | grep -v '^# Source:' | grep -v '^---' >"$2"
}
to_json "$MANIFEST" "$WORK/components.json"
to_json "$WORK/chart.yaml" "$WORK/chart.json"

log "aggregator.sizing: requests from the cluster's size"
"$HELM" template nodepulse "$CHART" -n "$NAMESPACE" --set aggregator.sizing.nodes=1000 \
  --show-only templates/aggregator.yaml >"$WORK/sized.yaml"
# 1,000 nodes of 30 pods: 10m + 0.08m x 1000; 16 MiB + (32 KiB x 1000 + 1.9 KiB x 30,000) / 1024.
for want in "cpu: 90m" "memory: 102Mi" "memory: 204Mi"; do
  grep -q "^ *$want\$" "$WORK/sized.yaml" || { echo "check: sized aggregator lacks $want" >&2; exit 1; }
done

log "ingest.tls.create=helm: a certificate for the ingest Service, signed by the CA the agents get"
"$HELM" template nodepulse "$CHART" -n "$NAMESPACE" --set ingest.tls.create=helm \
  --show-only templates/ingest-tls.yaml >"$WORK/ingest-tls.yaml"
python3 - "$WORK/ingest-tls.yaml" "$WORK" <<'EOF'
import base64, json, re, sys
text = open(sys.argv[1]).read()
field = lambda key: re.search(rf"^  {re.escape(key)}: (\S+)$", text, re.M).group(1)
open(f"{sys.argv[2]}/tls.crt", "wb").write(base64.b64decode(field("tls.crt")))
ca = base64.b64decode(field("ca.crt"))
open(f"{sys.argv[2]}/ca.crt", "wb").write(ca)
configmap_ca = json.loads(re.search(r'^  ca\.crt: (".*")$', text, re.M).group(1))
assert ca.decode() == configmap_ca, "the CA ConfigMap differs from the Secret's ca.crt"
EOF
openssl verify -CAfile "$WORK/ca.crt" "$WORK/tls.crt" >/dev/null
openssl x509 -in "$WORK/tls.crt" -noout -ext subjectAltName | grep -q "DNS:nodepulse-ingest.$NAMESPACE.svc" \
  || { echo "check: the generated ingest certificate does not name nodepulse-ingest.$NAMESPACE.svc" >&2; exit 1; }
"$HELM" template nodepulse "$CHART" -n "$NAMESPACE" --set ingest.tls.create=certManager >"$WORK/cm.yaml"
[ "$(grep -c '^kind: Certificate$' "$WORK/cm.yaml")" = 2 ] || { echo "check: certManager renders two Certificates" >&2; exit 1; }

log "comparing components.yaml with the chart"
python3 - "$WORK/components.json" "$WORK/chart.json" "$NAMESPACE" <<'EOF'
import json, sys

components = json.load(open(sys.argv[1]))["items"]
chart = json.load(open(sys.argv[2]))["items"]
namespace = sys.argv[3]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "APIService", "Namespace"}
# Labels only Helm adds; everything else must match exactly.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by",
               "app.kubernetes.io/instance", "app.kubernetes.io/version"}
errors = []

def index(objs, source):
    out = {}
    for o in objs:
        key = (o.get("kind"), o.get("metadata", {}).get("namespace", ""), o.get("metadata", {}).get("name"))
        if key in out:
            errors.append(f"{source}: duplicate {key}")
        labels = o.get("metadata", {}).get("labels") or {}
        for k in HELM_LABELS:
            labels.pop(k, None)
        out[key] = o
    return out

def diff(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}.{k}: only in chart: {json.dumps(b[k])[:120]}")
            elif k not in b:
                out.append(f"{path}.{k}: only in components.yaml: {json.dumps(a[k])[:120]}")
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: components.yaml {json.dumps(a)[:120]} != chart {json.dumps(b)[:120]}")

comp, ch = index(components, "components.yaml"), index(chart, "chart")
for key in sorted(set(comp) - set(ch), key=str):
    errors.append(f"only in components.yaml: {key}")
for key in sorted(set(ch) - set(comp), key=str):
    errors.append(f"only in the chart: {key}")
for key in sorted(set(comp) & set(ch), key=str):
    d = []
    diff(comp[key], ch[key], "", d)
    errors += [f"{key[0]}/{key[2]}: {x}" for x in d]

# Invariants of components.yaml (the chart equals it by now).
def need(cond, what):
    if not cond:
        errors.append(f"invariant: {what}")

for (kind, ns, name), o in comp.items():
    need(ns == ("" if kind in CLUSTER_SCOPED else namespace), f"{kind}/{name} namespace {ns!r}")
kinds = {(k, n) for (k, _, n) in comp}
for want in [("ServiceAccount", "nodepulse"), ("ServiceAccount", "nodepulse-agent"),
             ("ClusterRole", "system:aggregated-metrics-reader"), ("ClusterRole", "nodepulse-agent"),
             ("ClusterRoleBinding", "nodepulse-agent"), ("ClusterRoleBinding", "nodepulse:system:auth-delegator"),
             ("ClusterRole", "nodepulse"), ("ClusterRoleBinding", "nodepulse"),
             ("RoleBinding", "nodepulse-auth-reader"), ("Service", "nodepulse"), ("Service", "nodepulse-ingest"),
             ("Deployment", "nodepulse"), ("PodDisruptionBudget", "nodepulse"), ("DaemonSet", "nodepulse-agent"),
             ("APIService", "v1beta1.metrics.k8s.io"), ("APIService", "v1.metrics.k8s.io")]:
    need(want in kinds, f"{want[0]}/{want[1]} present")

get = lambda kind, name: comp.get((kind, "" if kind in CLUSTER_SCOPED else namespace, name), {})
ds = get("DaemonSet", "nodepulse-agent").get("spec", {}).get("template", {}).get("spec", {})
for c in ds.get("containers", []):
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    need(not sc.get("privileged"), "agent not privileged")
    need(caps.get("drop") == ["ALL"], "agent drops ALL capabilities")
    need(sorted(caps.get("add", [])) == ["BPF", "PERFMON"], "agent adds only BPF and PERFMON")
    need(sc.get("allowPrivilegeEscalation") is False, "agent allowPrivilegeEscalation false")
    need(sc.get("readOnlyRootFilesystem") is True, "agent readOnlyRootFilesystem")
    host = {v["name"] for v in ds.get("volumes", []) if "hostPath" in v}
    for m in c.get("volumeMounts", []):
        if m["name"] in host:
            need(m.get("readOnly") is True, f"agent host mount {m['name']} read-only")
    args = c.get("args", [])
    need(args[:1] == ["run"], "agent runs `run`")
    need(any(a.startswith("--token-file=") for a in args), "agent presents a token")
    health = [a.split(":")[-1] for a in args if a.startswith("--health-address=")]
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    need(health and ports.get("health") == int(health[0]), "agent serves its probes on the port named health")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get_ = c.get(probe, {}).get("httpGet", {})
        need(get_.get("path") == path and get_.get("port") == "health", f"agent {probe} GET {path} on health")
need(ds.get("hostPID") in (None, False), "agent hostPID false")
need(not ds.get("hostNetwork"), "agent hostNetwork false")
tokens = [s["serviceAccountToken"] for v in ds.get("volumes", []) for s in v.get("projected", {}).get("sources", []) if "serviceAccountToken" in s]
need(tokens and tokens[0].get("audience") == "nodepulse", "agent token audience nodepulse")

# The aggregator reads nothing but what its binding check and the nodes read
# from their kubelet need: pods and Nodes (read only), and nodes/metrics.
need(get("ClusterRole", "nodepulse").get("rules") == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                                                      {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                                                      {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}],
     "aggregator ClusterRole: read pods and nodes, get nodes/metrics only")

dep = get("Deployment", "nodepulse").get("spec", {})
need(dep.get("replicas") == 2, "aggregator replicas 2")
for c in dep.get("template", {}).get("spec", {}).get("containers", []):
    sc = c.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65534, "aggregator non-root 65534")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"] and "add" not in sc.get("capabilities", {}), "aggregator no capabilities")
    need(sc.get("readOnlyRootFilesystem") is True, "aggregator readOnlyRootFilesystem")
    need(sc.get("allowPrivilegeEscalation") is False, "aggregator allowPrivilegeEscalation false")
    need(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "aggregator seccomp RuntimeDefault")
need(get("Service", "nodepulse-ingest").get("spec", {}).get("publishNotReadyAddresses") is True,
     "ingest Service publishes not-ready replicas")
for v in ("v1beta1", "v1"):
    spec = get("APIService", f"{v}.metrics.k8s.io").get("spec", {})
    need(spec.get("service") == {"name": "nodepulse", "namespace": namespace, "port": 443}, f"APIService {v} -> nodepulse:443")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"{len(comp)} objects, identical apart from Helm's labels; invariants hold", file=sys.stderr)
EOF

if [ "$SERVER" = 1 ]; then
  KUBECTL=$(tool kubectl "${KUBECTL:-}")
  for f in "$MANIFEST" "$WORK/chart.yaml"; do
    log "kubectl apply --dry-run=server -f $(basename "$f")"
    "$KUBECTL" apply --dry-run=server -f "$f" >&2
  done
fi
log "ok"
