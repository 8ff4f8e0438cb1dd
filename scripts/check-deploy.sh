#!/usr/bin/env bash
# Checks the deployment pack in deploy/ offline, with the tools that run it:
#   - promtool check rules: the Prometheus recording and alerting rules are valid;
#   - promtool test rules: every alert's unit tests (deploy/prometheus/tests/*.yml) pass;
#   - kubernetes-validate --strict: the Kubernetes manifests match the API schemas of fixed
#     Kubernetes versions (bundled schemas, no cluster, no network), unknown fields rejected;
#   - raster-edge check-config on the TOML embedded in the ConfigMaps (when RASTER_EDGE_BIN
#     names a built binary: .ci/run sets it);
#   - systemd-analyze verify and systemd-analyze security --offline on the systemd unit.
# Installs what is missing on a Debian machine (apt-get update first only when needed):
# promtool from the Debian package `prometheus`, kubernetes-validate from PyPI into a virtualenv,
# systemd-analyze from the package `systemd`. Downloaded tools live in $RASTER_EDGE_TOOLS_DIR
# (default ~/.cache/raster-edge-deploy-tools), so later runs take seconds.
# Metric names in the dashboard and rules are checked by `cargo test --test deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes minor still widely run, and the newest the validator bundles.
K8S_VERSIONS=(1.30.0 1.37.0)
# Above this `systemd-analyze security` exposure (x10: 20 = 2.0) the unit has lost its sandbox.
SYSTEMD_EXPOSURE_MAX=20

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

tools="${RASTER_EDGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/raster-edge-deploy-tools}"
mkdir -p "$tools/bin"
export PATH="$tools/bin:$PATH"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] && return 0
  $sudo apt-get update -qq
  apt_updated=1
}
apt_install() {
  echo "installing: $*" >&2
  apt_update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# promtool: only the binary out of the Debian package. Installing the package itself would also
# enable and start a Prometheus server on :9090 (raster-edge's default admin port) wherever
# systemd runs.
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing: promtool (from Debian's prometheus package)" >&2
  [ -n "$(apt-cache policy prometheus 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)')" ] || apt_update
  (cd "$work" && apt-get download -qq prometheus >/dev/null)
  dpkg-deb -x "$work"/prometheus_*.deb "$work/deb"
  install -m 0755 "$work/deb/usr/bin/promtool" "$tools/bin/promtool"
  rm -rf "$work"/prometheus_*.deb "$work/deb"
fi

# kubernetes-validate: pinned, in its own virtualenv (Debian's Python refuses system-wide pip).
venv="$tools/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  echo "installing: kubernetes-validate $KUBERNETES_VALIDATE_VERSION" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd

start=$SECONDS

echo "== promtool check rules"
promtool check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml

echo "== promtool test rules"
(cd deploy/prometheus/tests && promtool test rules ./*.yml)

echo "== kubernetes-validate --strict (${K8S_VERSIONS[*]})"
for v in "${K8S_VERSIONS[@]}"; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" deploy/kubernetes/*.yaml
done
echo "$(ls deploy/kubernetes/*.yaml | wc -l) manifest files valid"

if [ -n "${RASTER_EDGE_BIN:-}" ]; then
  echo "== check-config on the ConfigMaps' raster-edge.toml"
  "$venv/bin/python" - "$work" deploy/kubernetes/*.yaml <<'EOF'
import sys, yaml
out = sys.argv[1]
n = 0
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".toml"):
                    n += 1
                    name = f"{out}/{doc['metadata']['name']}-{key}"
                    open(name, "w").write(text)
                    print(name)
if n == 0:
    sys.exit("no raster-edge TOML in any ConfigMap")
EOF
  for f in "$work"/*.toml; do
    "$RASTER_EDGE_BIN" check-config "$f"
  done
fi

echo "== systemd-analyze verify"
# verify insists that the ExecStart binary exists: check a copy that points at a stub.
for unit in deploy/systemd/*.service; do
  printf '#!/bin/sh\nexit 0\n' > "$work/raster-edge"
  chmod +x "$work/raster-edge"
  copy="$work/$(basename "$unit")"
  sed "s#/usr/local/bin/raster-edge#$work/raster-edge#g" "$unit" > "$copy"
  systemd-analyze verify "$copy"
  systemd-analyze security --offline=yes --threshold="$SYSTEMD_EXPOSURE_MAX" "$copy" \
    | sed -n 's/^→ //p'
  echo "$unit: verified"
done

echo "deploy checks passed in $((SECONDS - start)) s"
