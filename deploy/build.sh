#!/usr/bin/env bash
# Builds what the image holds, laid out as the image's root filesystem:
#
#   deploy/build.sh [ROOT]    # default: target/image-root
#
#   ROOT/usr/local/bin/portcullis          the release binary
#   ROOT/etc/portcullis/portcullis.toml    deploy/portcullis.toml
#
# then runs the staged binary: `--version`, and `check` on the staged config
# (through deploy/check.sh, with throwaway dev certificates standing in for
# the TLS secret mounted at /etc/portcullis/tls).
#
# deploy/Dockerfile runs this very script in its build stage and copies ROOT
# into the final image; CI runs it on a plain Debian machine, without Docker.
# Keep every build step here so the two stay the same. Needs cargo, openssl.
set -euo pipefail

root=$(realpath -m "${1:-$(dirname "$0")/../target/image-root}")
cd "$(dirname "$0")/.."

cargo build --release --locked
binary=${CARGO_TARGET_DIR:-target}/release/portcullis

# The final image (distroless/cc) has glibc and the gcc runtime libraries and
# nothing else: refuse a binary that would need more.
extra=$(ldd "$binary" | awk '{print $1}' |
  grep -vE '^(linux-vdso|linux-gate|/lib[^ ]*/ld-linux[^ ]*|libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+)\.so' || true)
if [[ -n $extra ]]; then
  echo "the binary needs libraries the image does not have: $extra" >&2
  exit 1
fi

install -D -m 0755 "$binary" "$root/usr/local/bin/portcullis"
install -D -m 0644 deploy/portcullis.toml "$root/etc/portcullis/portcullis.toml"

"$root/usr/local/bin/portcullis" --version
PORTCULLIS="$root/usr/local/bin/portcullis" \
  bash deploy/check.sh --etc "$root/etc/portcullis" "$root/etc/portcullis/portcullis.toml"
echo "staged the image's files in $root"
