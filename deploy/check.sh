#!/usr/bin/env bash
# Checks the deployment files, as CI does:
#
#   deploy/check.sh                            # everything below
#   deploy/check.sh [--etc DIR] FILE.toml...   # only these configs
#
# 1. Every *.yaml / *.yml under deploy/ parses (every document of it), with
#    no key given twice in a mapping (PyYAML would keep the last silently).
# 2. `portcullis check` accepts every *.toml under config/ and deploy/.
#    Deploy configs name absolute paths under /etc/portcullis (the TLS
#    secret's mount), so each file is checked as a copy with /etc/portcullis
#    pointing at a temporary directory that holds freshly made dev
#    certificates at tls/tls.crt and tls/tls.key (and, with --etc, DIR's
#    files: build.sh passes the staged image's /etc/portcullis). Relative
#    paths resolve from that directory too, where certs/server.crt and
#    certs/server.key exist for config/portcullis.example.toml.
# 3. Where kubectl (or kustomize) and docker compose are installed, the
#    kustomizations build and compose.yaml resolves; skipped otherwise.
#
# The binary is $PORTCULLIS, else the newer of target/release/portcullis and
# target/debug/portcullis (under $CARGO_TARGET_DIR if set). Needs python3
# (PyYAML is installed into a temporary directory if missing) and openssl.
# One line per file; exits non-zero if anything failed.
set -euo pipefail

etc_dir=""
if [[ ${1:-} == --etc ]]; then
  etc_dir=$(realpath "$2")
  shift 2
fi
# Files named on the command line are shown as given, read from where they are.
declare -A given=()
for file in "$@"; do given[$file]=$(realpath "$file"); done
if [[ ${PORTCULLIS:-} == */* ]]; then PORTCULLIS=$(realpath "$PORTCULLIS"); fi

cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
checked=0

ok() { printf 'ok    %s\n' "$1"; checked=$((checked + 1)); }
skip() { printf 'skip  %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  if [[ -n ${2:-} ]]; then printf '      %s\n' "${2//$'\n'/$'\n      '}"; fi
  checked=$((checked + 1))
  failed=$((failed + 1))
}

find_portcullis() {
  if [[ -n ${PORTCULLIS:-} ]]; then
    echo "$PORTCULLIS"
    return
  fi
  local target=${CARGO_TARGET_DIR:-target} newest=""
  for candidate in "$target/release/portcullis" "$target/debug/portcullis"; do
    if [[ -x $candidate && (-z $newest || $candidate -nt $newest) ]]; then newest=$candidate; fi
  done
  if [[ -z $newest ]]; then
    echo "no portcullis binary: run cargo build --locked, or set PORTCULLIS" >&2
    exit 1
  fi
  echo "$newest"
}

check_yaml() {
  if ! python3 -c 'import yaml' 2>/dev/null; then
    # --target: Debian's python refuses system-wide pip installs (PEP 668).
    python3 -m pip install --quiet --disable-pip-version-check --target "$tmp/python" pyyaml
    export PYTHONPATH="$tmp/python${PYTHONPATH:+:$PYTHONPATH}"
  fi
  python3 - "$@" <<'PY' || failed=$((failed + $?))
import sys
import yaml

class Loader(yaml.SafeLoader):
    """safe_load_all's loader, refusing a key given twice in one mapping."""

def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor`; its keys may be overridden
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)

failures = 0
for path in sys.argv[1:]:
    try:
        with open(path, encoding="utf-8") as f:
            documents = [d for d in yaml.load_all(f, Loader=Loader) if d is not None]
        print(f"ok    {path}: {len(documents)} document{'s' * (len(documents) != 1)}")
    except (OSError, yaml.YAMLError) as error:
        failures += 1
        print(f"FAIL  {path}")
        print("      " + str(error).replace("\n", "\n      "))
sys.exit(min(failures, 100))
PY
  checked=$((checked + $#))
}

make_check_root() {
  mkdir -p "$tmp/certs" "$tmp/etc/portcullis/tls"
  cp certs/make-dev-certs.sh "$tmp/certs/"
  local log
  if ! log=$(bash "$tmp/certs/make-dev-certs.sh" 2>&1); then
    echo "certs/make-dev-certs.sh failed:" >&2
    echo "$log" >&2
    exit 1
  fi
  if [[ -n $etc_dir ]]; then cp -R "$etc_dir/." "$tmp/etc/portcullis/"; fi
  cp "$tmp/certs/server.crt" "$tmp/etc/portcullis/tls/tls.crt"
  cp "$tmp/certs/server.key" "$tmp/etc/portcullis/tls/tls.key"
}

# check_toml NAME PATH: `portcullis check` on PATH, reported as NAME.
check_toml() {
  local name=$1 copy="$tmp/checked.toml" output routes warnings
  sed "s|/etc/portcullis|$tmp/etc/portcullis|g" "$2" >"$copy"
  if output=$(cd "$tmp" && "$portcullis" check --config "$copy" 2>&1); then
    routes=$(grep -c '^route ' <<<"$output" || true)
    warnings=$(sed -n 's/^.* WARN [^ ]*: //p' <<<"$output" | paste -sd ';' -)
    ok "$name: $routes route$([[ $routes == 1 ]] || echo s)${warnings:+ (warning: $warnings)}"
  else
    fail "$name" "$(sed -e "s|$copy|$name|g" -e "s|$tmp/etc/portcullis|/etc/portcullis|g" <<<"$output")"
  fi
}

check_kustomizations() {
  local build
  if command -v kubectl >/dev/null; then
    build=(kubectl kustomize)
  elif command -v kustomize >/dev/null; then
    build=(kustomize build)
  else
    skip "kustomize builds (neither kubectl nor kustomize is installed)"
    return
  fi
  local dir output
  for dir in deploy/kubernetes/*/; do
    [[ -f $dir/kustomization.yaml ]] || continue
    dir=${dir%/}
    if output=$("${build[@]}" "$dir" 2>&1); then
      ok "$dir: kustomize build, $(grep -c '^kind:' <<<"$output") objects"
    else
      fail "$dir: kustomize build" "$output"
    fi
  done
}

check_compose() {
  if ! docker compose version >/dev/null 2>&1; then
    skip "deploy/compose.yaml: docker compose config (docker compose is not installed)"
    return
  fi
  local output
  if output=$(docker compose -f deploy/compose.yaml config --quiet 2>&1); then
    ok "deploy/compose.yaml: docker compose config"
  else
    fail "deploy/compose.yaml: docker compose config" "$output"
  fi
}

portcullis=$(find_portcullis)
# absolute: the checks run from the temporary directory
if [[ $portcullis == */* ]]; then portcullis=$(realpath "$portcullis"); fi
make_check_root
if [[ $# -gt 0 ]]; then
  for file in "$@"; do check_toml "$file" "${given[$file]}"; done
else
  mapfile -t yaml_files < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)
  check_yaml "${yaml_files[@]}"
  while read -r file; do check_toml "$file" "$file"; done < <(find config deploy -name '*.toml' | sort)
  check_kustomizations
  check_compose
fi

if [[ $failed -gt 0 ]]; then
  echo "deploy/check.sh: $failed of $checked checks failed"
  exit 1
fi
echo "deploy/check.sh: $checked checked, all ok ($("$portcullis" --version))"
