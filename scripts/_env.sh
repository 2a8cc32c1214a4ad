# Shared by scripts/example and scripts/test: a project-local virtualenv with vpcgen installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

apt_install() {  # install the Debian packages given that are not installed yet
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

venv() {  # .venv with vpcgen (and the given extras) installed in editable mode
  local extras="${1:-}"
  if ! [ -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; python3 -m venv .venv; }
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" >&2
  # an editable install compiles nothing (a wheel's install does): where PYTHONDONTWRITEBYTECODE is
  # set, every command would compile vpcgen's modules again (a third of a small build's start-up)
  .venv/bin/python -m compileall -q vpcgen >&2
}
