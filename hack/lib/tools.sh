# shellcheck shell=bash
# Locating the tools the hack/ scripts need. Source it; each function prints a path on stdout.
#
#   HELM=/path/to/helm        use this helm
#   PROMTOOL=/path/to/promtool use this promtool
#   CHART_CHECK_INSTALL=1     allow installing promtool with apt-get when it is missing
#                             (implied when CI=true, as CI starts from a fresh machine)

HACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# helm: $HELM, else the one tests/node/build-tools.sh caches (instant when already built; it
# builds it from the Go module proxy otherwise), else one on PATH.
find_helm() {
  if [ -n "${HELM:-}" ]; then
    [ -x "$HELM" ] || die "HELM=$HELM is not executable"
    echo "$HELM"; return
  fi
  local bin
  if [ -f "$HACK_ROOT/tests/node/build-tools.sh" ] &&
     bin=$(bash "$HACK_ROOT/tests/node/build-tools.sh") && [ -x "$bin/helm" ]; then
    echo "$bin/helm"; return
  fi
  if command -v helm >/dev/null 2>&1; then
    command -v helm; return
  fi
  die "helm not found: set HELM, or run tests/node/build-tools.sh"
}

# promtool: $PROMTOOL, else PATH, else Debian's prometheus package (only when allowed).
find_promtool() {
  if [ -n "${PROMTOOL:-}" ]; then
    [ -x "$PROMTOOL" ] || die "PROMTOOL=$PROMTOOL is not executable"
    echo "$PROMTOOL"; return
  fi
  if command -v promtool >/dev/null 2>&1; then
    command -v promtool; return
  fi
  if [ "${CHART_CHECK_INSTALL:-}" = 1 ] || [ "${CI:-}" = true ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing promtool (Debian package prometheus)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >&2 ||
        die "apt-get install prometheus failed"
      command -v promtool && return
    fi
  fi
  die "promtool not found: set PROMTOOL, or install it (apt-get install prometheus; CHART_CHECK_INSTALL=1 lets this script do it)"
}
