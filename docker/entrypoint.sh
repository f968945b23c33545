#!/bin/sh
# The entrypoint of a mosix node container: put the cluster key where the daemon and the
# tools of the mosix group read it, as the systemd set-up does, then run mosixd.
set -e
if [ -r /run/secrets/cluster_key ]; then
    install -m 0640 -o root -g mosix /run/secrets/cluster_key /etc/mosix/cluster.key
fi
exec mosixd "$@"
