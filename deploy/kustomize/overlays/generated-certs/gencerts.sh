#!/bin/sh
# Certificates for the generated-certs overlays, with openssl (1.1.1 or 3.x).
#
#   ./gencerts.sh [DIR]            # default: certs/ next to this script
#   VOUCH_SERVER_NAMES="notary.example.com" ./gencerts.sh
#   VOUCH_NEW_CA=1 ./gencerts.sh   # replace the CA too (all clients must re-trust)
#
# Writes a private CA (ca.crt, ca.key; reused if present, so renewing the leaf
# certificates does not disturb anyone who trusts the CA) and ECDSA P-256
# leaf certificates: admission (the webhook), server (the trust server,
# plus VOUCH_SERVER_NAMES), signer (gRPC server) and signer-client (the trust
# server's client certificate for the signer). Keep ca.key off the cluster.
set -eu

dir=${1:-"$(cd "$(dirname "$0")" && pwd)/certs"}
ns=vouch-system
days=${VOUCH_CERT_DAYS:-365}
mkdir -p "$dir"
umask 077
cd "$dir"

if [ -n "${VOUCH_NEW_CA:-}" ] || [ ! -s ca.crt ] || [ ! -s ca.key ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=vouch-ca" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.crt
fi

# leaf NAME USAGE DNS-NAMES...
leaf() {
    name=$1 usage=$2
    shift 2
    sans=""
    for dns in "$@"; do
        sans="${sans:+$sans,}DNS:$dns"
    done
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
    } > "$name.ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=vouch-$name" -out "$name.csr"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
        -extfile "$name.ext" -out "$name.crt"
    rm -f "$name.csr" "$name.ext"
}

svc() { echo "$1.$ns.svc" "$1.$ns.svc.cluster.local"; }

# shellcheck disable=SC2046  # word splitting of the name lists is intended
leaf admission serverAuth $(svc vouch-admission)
# shellcheck disable=SC2046
leaf server serverAuth $(svc vouch-server) ${VOUCH_SERVER_NAMES:-}
# shellcheck disable=SC2046
leaf signer serverAuth $(svc vouch-signer)
leaf signer-client clientAuth
chmod 0644 ./*.crt
echo "certificates in $dir (CA: $dir/ca.crt)"
