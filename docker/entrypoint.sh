#!/bin/sh
# The entrypoint of a mosix node container: put the cluster key where the daemon reads it,
# readable by root only, as the systemd set-up does, then run mosixd.
set -e
if [ -r /run/secrets/cluster_key ]; then
    install -m 0600 -o root -g root /run/secrets/cluster_key /etc/mosix/cluster.key
fi
exec mosixd "$@"
