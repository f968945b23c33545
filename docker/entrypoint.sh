#!/bin/sh
# The entrypoint of a mosix node container: put the node's certificates where the config
# names them, the key readable by root only, as the systemd set-up does, then run mosixd.
set -e
if [ -r /run/secrets/node_key ]; then
    install -D -m 0644 -o root -g root /run/secrets/tls_ca /etc/mosix/tls/ca.crt
    install -D -m 0644 -o root -g root /run/secrets/node_cert /etc/mosix/tls/node.crt
    install -D -m 0600 -o root -g root /run/secrets/node_key /etc/mosix/tls/node.key
fi
exec mosixd "$@"
