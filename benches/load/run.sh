#!/usr/bin/env bash
# Side-by-side load benchmark: raster-edge vs nginx proxy_cache vs Varnish (docs/BENCHMARKS.md).
#
#   benches/load/run.sh [--quick] [--no-build] [bench.py options…]
#
# Installs what is missing (nginx-light, varnish, wrk; cmake to build) from Debian packages,
# builds the release binaries, then runs benches/load/bench.py, which starts an origin
# (raster-mock), the three servers and wrk, pinned with taskset, and writes
# bench-results/<timestamp>/{results.md,results.json,chart.svg}. Everything it starts is
# stopped by PID on exit or Ctrl-C. Pass --help to see bench.py's options.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

build=1
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    *) args+=("$a") ;;
  esac
done

want=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || want+=(nginx-light)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || want+=(varnish)
command -v wrk >/dev/null 2>&1 || want+=(wrk)
command -v taskset >/dev/null 2>&1 || want+=(util-linux)
command -v python3 >/dev/null 2>&1 || want+=(python3)
[ "$build" -eq 0 ] || command -v cmake >/dev/null 2>&1 || want+=(cmake)
if [ ${#want[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${want[*]}" >&2
  $sudo apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null; then
    # newer Debian releases dropped nginx-light: the plain nginx package has proxy_cache too
    want=("${want[@]/nginx-light/nginx}")
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$build" -eq 1 ]; then
  echo "building release binaries (cargo build --release --bins)…" >&2
  (cd "$repo" && cargo build --release --bins)
fi

exec python3 -B "$here/bench.py" "${args[@]}"
