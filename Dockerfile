# The gpufleet operator image: python slim, non-root, read-only-root friendly, dependencies pinned.
#
#   docker build -t ghcr.io/gpufleet/gpufleet:0.1.0 .
#
# It is not built by `make test`: the development machines have no usable container engine.
# The install steps below were run outside a container against the same pinned list
# (docs/install.md says how); the chart's pod security context matches USER.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Build tools pinned too, and kept out of the runtime venv.
RUN pip install setuptools==84.2.1 wheel==0.48.0
WORKDIR /src
COPY hack/image/requirements.txt /src/requirements.txt
RUN python -m venv /opt/gpufleet \
 && /opt/gpufleet/bin/pip install --no-deps -r /src/requirements.txt
# The wheel is the operator alone: setuptools discovers packages under operator/ only (the fleet
# simulator, hack/fleetsim, is a project of its own and stays out of the image).
COPY pyproject.toml README.md /src/
COPY operator /src/operator
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /src \
 && /opt/gpufleet/bin/pip install --no-deps /tmp/wheels/gpufleet-*.whl \
 && /opt/gpufleet/bin/pip uninstall --yes pip \
 && /opt/gpufleet/bin/python -c "import gpufleet.handlers.operator, gpufleet.handlers.webhook"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/gpufleet /opt/gpufleet
# No .pyc writes (the root filesystem is read-only in the chart); logs unbuffered.
ENV PATH=/opt/gpufleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
# 65532: a UID with no entry and no shell, as distroless "nonroot" uses; the chart runs as the same.
USER 65532:65532
# health (/healthz), metrics (/metrics), admission webhook
EXPOSE 8080 8081 9443
ENTRYPOINT ["gpufleet"]
CMD ["run"]
