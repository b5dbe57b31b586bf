# syntax=docker/dockerfile:1.7
# The image of one WaFL Python service: chain_watcher, trainer, submitter or metrics (the prover,
# with Node, zokrates-js, snarkjs and compiled circuits, has its own: deploy/docker/prover.Dockerfile).
# Two build arguments make the image of a service; docker-compose.yml passes each service's:
#   SERVICE  the service it runs (`wafl run $SERVICE`), one of services.SERVICE_NAMES
#   WITHOUT  the dependencies of pyproject.toml it leaves out because the service does not import
#            them (deploy/docker/requirements.py --without); torch, when kept, comes from the
#            CPU-only index. tests/unit/test_deploy_images.py imports each service with its list blocked.
# Build from the repository root (the context needs pyproject.toml, wafl/, services/ and tools/):
#   docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=trainer --build-arg WITHOUT=rich,onnx,onnxruntime,safetensors -t wafl-trainer:dev .
#   docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=submitter \
#       --build-arg WITHOUT=torch,numpy,scikit-learn,rich,onnx,onnxruntime,safetensors -t wafl-submitter:dev .
# Configured by WAFL_* variables at run time (README, "Services"); serves /metrics on $WAFL_METRICS_PORT.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS python-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
# Each argument is declared where it is first used: images with the same WITHOUT (trainer and
# metrics) share every layer up to the installed package.
ARG WITHOUT
RUN test -n "$WITHOUT" \
 || { echo "build with --build-arg WITHOUT=<dependencies> (docker-compose.yml has each service's)" >&2; exit 1; }
# torch from the CPU-only index (no CUDA libraries), unless WITHOUT leaves it out; the version is
# pyproject.toml's pin.
RUN torch="$(python deploy/docker/requirements.py --only torch --without "$WITHOUT")" \
 && if [ -n "$torch" ]; then pip install "$torch" --index-url https://download.pytorch.org/whl/cpu; fi
RUN python deploy/docker/requirements.py --without "$WITHOUT" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY wafl ./wafl
COPY services ./services
COPY tools ./tools
RUN pip install --no-deps . && rm -rf build
ARG SERVICE
# The installed package (not the sources in /src) knows the service and imports it with what this
# image installed: a misspelt SERVICE or a missing dependency fails the build, not the container.
RUN test -n "$SERVICE" && test "$SERVICE" != prover \
 || { echo "build with --build-arg SERVICE=<service>; the prover has deploy/docker/prover.Dockerfile" >&2; exit 1; }
RUN cd / && python -c "import sys, services; services.spec(sys.argv[1])" "$SERVICE"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 wafl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin wafl
COPY --from=python-deps /opt/venv /opt/venv
ARG SERVICE
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    WAFL_HOME=/app \
    WAFL_METRICS_PORT=9100 \
    WAFL_SERVICE=${SERVICE}
WORKDIR /app
USER 10001:10001
EXPOSE 9100
# Healthy once the service passed its start-up checks and serves /metrics. One start period for
# every service (HEALTHCHECK takes no build arguments): the longest start, trainer and metrics
# loading torch and their datasets.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['WAFL_METRICS_PORT'], timeout=4)"]
# `wafl run $WAFL_SERVICE`, with any arguments given (e.g. --settings); exec: wafl is PID 1 and
# receives SIGTERM itself.
ENTRYPOINT ["/bin/sh", "-c", "exec wafl run \"$WAFL_SERVICE\" \"$@\"", "wafl"]
