# syntax=docker/dockerfile:1
# login-audit-bridge: the service (`login-audit-bridge serve`) and the SFTPGo hook shim
# (`login-audit-hook`) in one image. Build: docker build -t login-audit-bridge:0.1.0 .
# Runs as UID/GID 10001 with a read-only root filesystem: only BRIDGE_DATA_DIR and /tmp
# need to be writable (the Helm chart mounts volumes there).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the wheel and a virtualenv holding it and its dependencies
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install "build==1.2.2.post1"
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY bridge/ bridge/
RUN python -m build --wheel --outdir /dist . \
    && python -m venv /opt/login-audit-bridge \
    && /opt/login-audit-bridge/bin/pip install /dist/*.whl

# -- runtime: the same Python, the virtualenv, nothing to compile with
FROM ${PYTHON_IMAGE}
ARG UID=10001
# No bytecode writes on a read-only root (pip compiled it at install); logs unbuffered so
# they reach `kubectl logs` at once; listen on all interfaces inside the container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/login-audit-bridge/bin:$PATH \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_DATA_DIR=/var/lib/login-audit-bridge
RUN groupadd --system --gid "${UID}" login-audit \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin login-audit \
    && install -d -o "${UID}" -g "${UID}" -m 0750 /var/lib/login-audit-bridge \
    && install -d -m 0755 /etc/login-audit-bridge
COPY --from=build /opt/login-audit-bridge /opt/login-audit-bridge
WORKDIR /var/lib/login-audit-bridge
USER ${UID}:${UID}
EXPOSE 8080
ENTRYPOINT ["login-audit-bridge"]
CMD ["serve"]
