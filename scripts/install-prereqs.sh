#!/usr/bin/env bash
# Installs the system packages raster-edge needs on a Debian machine with a Rust toolchain:
# cmake (pingora-core builds zlib-ng with it), ca-certificates (upstream TLS verification) and,
# with --test, redis-server (the tests start their own), openssl (a TLS origin in tests),
# nghttp2-client (nghttp shows the HTTP/2 SETTINGS the gateway sends; h2load for the benchmark) and
# chromium (the status page is tested in a headless browser). Installs only what is missing.
set -euo pipefail

want=()
command -v cmake >/dev/null 2>&1 || want+=(cmake)
[ -s /etc/ssl/certs/ca-certificates.crt ] || want+=(ca-certificates)
if [ "${1:-}" = "--test" ]; then
  command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
  command -v openssl >/dev/null 2>&1 || want+=(openssl)
  command -v nghttp >/dev/null 2>&1 || want+=(nghttp2-client)
  [ -x /usr/bin/chromium ] || want+=(chromium)
fi
[ ${#want[@]} -eq 0 ] && exit 0

echo "installing: ${want[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
