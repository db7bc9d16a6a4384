#!/bin/sh
# pip for image builds (deploy/Dockerfile). When PIP_CERT_URL is set (deploy/build-images.sh
# serves the build host's CA bundle on 127.0.0.1 when pip there is configured with one, e.g.
# behind a TLS-inspecting proxy), the bundle is fetched for this one command and deleted after
# it, so it never stays in a layer of the image. Otherwise this is plain pip.
set -eu
if [ -n "${PIP_CERT_URL:-}" ]; then
    cert="$(mktemp)"
    trap 'rm -f "$cert"' EXIT
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
        "$PIP_CERT_URL" "$cert"
    PIP_CERT="$cert" pip "$@"
else
    pip "$@"
fi
