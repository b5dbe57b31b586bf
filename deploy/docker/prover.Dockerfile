# syntax=docker/dockerfile:1.7
# WaFL prover: a ZoKrates witness and a Groth16 proof per prover job. zokrates-js computes the
# witness on a long-lived Node worker, groth16py (native arkworks) proves by default, snarkjs
# verifies every proof and is the second backend (WAFL_BACKEND=snarkjs).
# Its own Dockerfile: the other services share deploy/docker/service.Dockerfile, whose image is a
# Python venv only; this one adds Node stages, circuit compilation and the key mount point.
# Build from the repository root:
#   docker build -f deploy/docker/prover.Dockerfile --build-arg WAFL_CONFIGS="wine-13x3-b16" -t wafl-prover:dev .
# The image carries Node 20, zokrates-js and snarkjs exactly as pinned by package-lock.json (with
# their own dependencies only), groth16py, circuits/ and the compiled circuit builds of
# WAFL_CONFIGS (program, abi, r1cs) -- but NO keys. The prover proves with the key set mounted at
# WAFL_KEYS (default /keys): the federation's ceremony keys (`wafl ceremony finalize --out`), or
# the development key set the deployment was made with. Development keys are a one-party setup
# that differs on every machine, so an image cannot carry "the" keys: the prover refuses any key
# set whose vk hash is not the deployment's. docker-compose shares the deploy job's development
# keys through a volume; Kubernetes mounts the PersistentVolumeClaim wafl-keys (deploy/README.md).
# The same image runs `wafl ceremony contribute` and `wafl attest` (the Kubernetes Jobs).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# ---- Node: the pinned zokrates-js and snarkjs from the lock file ------------------------------
FROM ${NODE_IMAGE} AS node-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
# The prover's share of node_modules: zokrates-js and snarkjs with exactly their locked runtime
# dependencies (nested node_modules, e.g. r1csfile's own ffjavascript, come with their parent);
# solc, anvil and OpenZeppelin stay out. tests/unit/test_deploy_images.py checks this list against
# package-lock.json and the imports of circuits/*.mjs.
RUN mkdir -p /prover/node_modules \
 && cd /app/node_modules \
 && cp -a --parents \
      zokrates-js pako \
      snarkjs @iden3/bigarray @iden3/binfileutils @noble/hashes async balanced-match bfj bluebird \
      brace-expansion check-types circom_runtime ejs escodegen esprima estraverse esutils fastfile \
      ffjavascript filelist hoopy jake jsonpath logplease minimatch picocolors r1csfile source-map \
      static-eval tryer underscore wasmbuilder wasmcurves web-worker \
      /prover/node_modules/

# ---- Python: the service's dependencies (no torch, numpy or scikit-learn; groth16py included) --
FROM ${PYTHON_IMAGE} AS python-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
# Only what this service imports; tests/unit/test_deploy_images.py checks the choice.
RUN python deploy/docker/requirements.py --without torch,numpy,scikit-learn,rich,onnx,onnxruntime,safetensors > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY wafl ./wafl
COPY services ./services
COPY tools ./tools
RUN pip install --no-deps . && rm -rf build

# ---- Circuits: compile each configuration (program, abi, r1cs); no setup, no keys -------------
FROM python-deps AS circuits
ARG WAFL_CONFIGS=wine-13x3-b16
COPY --from=node-deps /usr/local/bin/node /usr/local/bin/node
COPY --from=node-deps /prover/node_modules /app/node_modules
COPY circuits /app/circuits
# The same layout as the runtime stage: the build cache key names the zokrates-js version of
# /app/node_modules, and the prover finds these builds under WAFL_BUILD_DIR at start.
ENV WAFL_HOME=/app \
    WAFL_BUILD_DIR=/app/build
RUN for config in ${WAFL_CONFIGS}; do \
      python -c "import sys; from wafl.zk.build import build_circuit; from wafl.core.config import load_config; print(build_circuit(load_config(sys.argv[1])).directory)" "$config" || exit 1; \
    done \
 && find /app/build -name '*.partial*' -prune -exec rm -rf {} + \
 && test ! -e /app/build/keys

# ---- Runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# Node needs libstdc++6, which every Debian base image has (apt depends on it). /keys is the
# mount point of the key set (owned by the service user, so an empty volume mounted there is too).
RUN groupadd --gid 10001 wafl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin wafl \
 && mkdir /keys && chown 10001:10001 /keys
COPY --from=node-deps /usr/local/bin/node /usr/local/bin/node
COPY --from=python-deps /opt/venv /opt/venv
# zokrates-js, snarkjs and their dependencies per package-lock.json (see the node-deps stage).
COPY --from=node-deps /prover/node_modules /app/node_modules
COPY circuits /app/circuits
# Compiled circuits only: the keys come from the key set mounted at WAFL_KEYS.
COPY --from=circuits /app/build /app/build
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    WAFL_HOME=/app \
    WAFL_BUILD_DIR=/app/build \
    WAFL_KEYS=/keys \
    WAFL_METRICS_PORT=9100
WORKDIR /app
USER 10001:10001
EXPOSE 9100
# Healthy once the worker has loaded the proving key and /metrics is served.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['WAFL_METRICS_PORT'], timeout=4)"]
# SIGTERM: the service stops taking jobs and finishes the one in hand (give it the proof time:
# compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["wafl", "run", "prover"]
