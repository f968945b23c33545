# Image of one mosix node. Built and run three times by docker-compose.yml.
FROM python:3.11-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project, without what .dockerignore leaves out (venvs, tests, keys, ...).
WORKDIR /src
COPY . /src
RUN pip install --no-input /src \
    && rm -rf /src

# The daemon's directories, as the systemd unit would create them.
RUN groupadd --system mosix \
    && install -d -m 0750 -g mosix /etc/mosix /run/mosix \
    && install -d -m 0700 /var/lib/mosix

WORKDIR /var/lib/mosix
EXPOSE 7410

# mosixd runs as root: it starts tasks as the users who submit them.
ENTRYPOINT ["mosixd"]
CMD ["--help"]
