#!/bin/sh
# Builds a base image for mosix nodes from the distribution, for sites where no container
# registry can be reached (python:3.11-slim cannot be pulled):
#
#   sudo docker/local-base.sh [IMAGE]          # default IMAGE: local/mosix-base:bookworm
#
# then build the nodes on it:  docker-compose build --build-arg BASE=local/mosix-base:bookworm
#
# Debian bookworm, minimal, with Python 3.11 and its venv module, procps, and systemd (so
# that the same image can boot the systemd unit). Needs root, debootstrap and docker; takes
# about a minute. The Debian mirror is the one apt already uses, or $MOSIX_DEBIAN_MIRROR.
set -eu

image=${1:-local/mosix-base:bookworm}
mirror=${MOSIX_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*debian\)\/\{0,1\}$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
fi
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*\)[[:space:]]\{1,\}bookworm[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM
echo "building $image from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,procps,systemd,systemd-sysv \
    bookworm "$root" "$mirror" >&2
# An imported image has no configuration of its own: give it a PATH and a UTF-8 locale.
tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -m "Debian bookworm minbase with python3, python3-venv, procps and systemd" \
    - "$image"
