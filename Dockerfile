# syntax=docker/dockerfile:1
# login-audit-bridge: the service (`login-audit-bridge serve`) and the SFTPGo hook shim
# (`login-audit-hook`) in one image. Build: docker build -t login-audit-bridge:0.1.0 . (or, with
# podman on a debootstrapped Debian base where no Docker runs: scripts/image build).
# Runs as UID/GID 10001 with a read-only root filesystem: only BRIDGE_DATA_DIR and /tmp
# need to be writable (the Helm chart mounts volumes there).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtualenv holding the locked dependencies, then the package beside it
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Exact versions with the sha256 of every file (requirements/, refreshed by scripts/lock): the same
# inputs give the same image, and a changed download fails the build. The runtime virtualenv gets
# no pip or setuptools of its own: the build virtualenv's pip installs into it (--python). A .pth
# file puts the package directory (below) on its path.
COPY requirements/ requirements/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r requirements/build.txt \
    && python3 -m venv --without-pip /opt/login-audit-bridge/venv \
    && /opt/build/bin/pip --python /opt/login-audit-bridge/venv/bin/python install \
       --require-hashes -r requirements/runtime.txt \
    && /opt/build/bin/pip --python /opt/login-audit-bridge/venv/bin/python check \
    && /opt/login-audit-bridge/venv/bin/python -c 'import pathlib, site; \
       pathlib.Path(site.getsitepackages()[0], "login-audit-bridge-app.pth") \
       .write_text("/opt/login-audit-bridge/app\n")'
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY bridge/ bridge/
# The package goes into a directory of its own, so that the virtualenv above stays byte for byte
# the same layer when only the code changes: a rebuild copies under a megabyte.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
    && /opt/build/bin/pip --python /opt/login-audit-bridge/venv/bin/python install --no-deps \
       --target /opt/login-audit-bridge/app /dist/*.whl

# -- runtime: the same Python, the virtualenv, nothing to compile with
FROM ${PYTHON_IMAGE}
ARG UID=10001
# No bytecode writes on a read-only root (pip compiled it at install); logs unbuffered so
# they reach `kubectl logs` at once; listen on all interfaces inside the container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/login-audit-bridge/app/bin:/opt/login-audit-bridge/venv/bin:$PATH \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_DATA_DIR=/var/lib/login-audit-bridge
RUN groupadd --system --gid "${UID}" login-audit \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin login-audit \
    && install -d -o "${UID}" -g "${UID}" -m 0750 /var/lib/login-audit-bridge \
    && install -d -m 0755 /etc/login-audit-bridge
COPY --from=build /opt/login-audit-bridge/venv /opt/login-audit-bridge/venv
COPY --from=build /opt/login-audit-bridge/app /opt/login-audit-bridge/app
WORKDIR /var/lib/login-audit-bridge
USER ${UID}:${UID}
EXPOSE 8080
ENTRYPOINT ["login-audit-bridge"]
CMD ["serve"]
