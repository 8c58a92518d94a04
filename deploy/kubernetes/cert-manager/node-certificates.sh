#!/bin/sh
# Prints one cert-manager Certificate per node name given (or per Kubernetes node, from
# `kubectl get nodes`), each naming the node and stored in the Secret grapevine-tls-NODE:
#   sh node-certificates.sh | kubectl -n grapevine apply -f -
# A node's certificate must name it: peers accept its health reports only when signed by the
# key of a certificate that names it (docs/decisions.md, D67). The names are the node names
# the pods use (`--name $(NODE_NAME)`, or the derived-name component's output).
set -eu
if [ "$#" -eq 0 ]; then
  set -- $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}')
fi
for node in "$@"; do
  cat <<CERT
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: grapevine-node-$node
  labels:
    app.kubernetes.io/name: grapevine
spec:
  secretName: grapevine-tls-$node
  commonName: $node
  dnsNames:
    - $node
  # Renewed 30 days before the end; the node reloads its files when the host copy changes.
  duration: 8760h
  renewBefore: 720h
  # PKCS#8 ECDSA P-256: rustls (ring) reads it, and the node signs its reports with it.
  privateKey:
    algorithm: ECDSA
    size: 256
    encoding: PKCS8
    rotationPolicy: Always
  # Each peer is a TLS server and a TLS client.
  usages:
    - digital signature
    - server auth
    - client auth
  issuerRef:
    group: cert-manager.io
    kind: Issuer
    name: grapevine-ca
CERT
done
