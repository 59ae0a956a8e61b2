#!/usr/bin/env bash
# Makes a development CA and a server certificate signed by it, for
# trying `portcullis run` with TLS on this machine. Never use these in
# production: the CA key sits next to the certificates, unprotected.
#
#   certs/make-dev-certs.sh [name ...]    # default names: localhost 127.0.0.1
#
# Writes certs/dev-ca.{crt,key} and certs/server.{crt,key} (the paths the
# example config uses). Trust certs/dev-ca.crt in your client, e.g.
# `curl --cacert certs/dev-ca.crt https://localhost:8443/...`.
set -euo pipefail
cd "$(dirname "$0")"

names=("${@:-localhost}")
[ $# -eq 0 ] && names=(localhost 127.0.0.1)
san=""
for name in "${names[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
done
san=${san%,}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout dev-ca.key -out dev-ca.crt -days 30 -subj "/CN=Portcullis dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=${names[0]}"
openssl x509 -req -in server.csr -CA dev-ca.crt -CAkey dev-ca.key -CAcreateserial \
  -out server.crt -days 30 \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san")
rm -f server.csr dev-ca.srl
chmod 600 dev-ca.key server.key
echo "made certs/server.crt for ${names[*]}, signed by certs/dev-ca.crt (valid 30 days)"
