# Image of one mosix node. Built and run three times by docker-compose.yml.
#
# The build needs no network. mosix and its dependencies come from a wheelhouse made on the
# host first:
#
#   pip wheel . -w wheels
#
# BASE is any image with Python 3.11 and its venv module: python:3.11-slim by default, or,
# where no registry can be reached, one built from the distribution with
# docker/local-base.sh (then: docker-compose build --build-arg BASE=local/mosix-base:bookworm).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PATH=/opt/mosix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# mosix in a virtualenv of its own; its bin directory comes first on PATH, so the python
# that tasks run with is the one mosix is installed in, the same on every node.
COPY wheels /wheels
RUN python3 -m venv /opt/mosix \
    && /opt/mosix/bin/pip install --no-index --find-links /wheels mosix \
    && rm -rf /wheels

# The daemon's directories, as in the systemd set-up: every user reaches the sockets in
# /run/mosix (the kernel tells the daemon who they are); the node's key is root's alone.
RUN install -d -m 0755 /etc/mosix /run/mosix \
    && install -d -m 0700 /var/lib/mosix
COPY docker/entrypoint.sh /usr/local/bin/mosix-entrypoint

WORKDIR /var/lib/mosix
EXPOSE 7410

# mosixd runs as root: it starts tasks as the users who submit them.
ENTRYPOINT ["mosix-entrypoint"]
CMD ["--help"]
