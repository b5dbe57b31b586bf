# syntax=docker/dockerfile:1.7
# Local chain tooling for docker-compose: anvil from the pinned @foundry-rs/anvil npm package and
# the one-shot job that deploys the contracts (solc from npm, `wafl deploy`) and registers the
# participants. The job also compiles the configuration's circuit (zokrates-js) and makes the
# stack's development keys (groth16py) at run time, in its own container, then shares them through
# the `keys` volume (deploy/compose/bootstrap.py). Not a production image: a real federation
# deploys once, from the admin's machine, with the keys of its ceremony.
#   docker build -f deploy/docker/chain.Dockerfile -t wafl-chain:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS node-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM ${PYTHON_IMAGE} AS python-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
RUN python deploy/docker/requirements.py --without torch,numpy,scikit-learn,rich,onnx,onnxruntime,safetensors > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY wafl ./wafl
COPY services ./services
COPY tools ./tools
RUN pip install --no-deps . && rm -rf build

FROM ${PYTHON_IMAGE}
# Node needs libstdc++6, which every Debian base image has (apt depends on it).
RUN groupadd --gid 10001 wafl \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin wafl \
 && mkdir -p /deployments /keys && chown 10001:10001 /deployments /keys
COPY --from=node-deps /usr/local/bin/node /usr/local/bin/node
COPY --from=node-deps /app/node_modules /app/node_modules
COPY --from=python-deps /opt/venv /opt/venv
COPY circuits /app/circuits
COPY contracts /app/contracts
COPY deploy/compose/bootstrap.py /app/bootstrap.py
ENV PATH=/opt/venv/bin:/app/node_modules/.bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    WAFL_HOME=/app
WORKDIR /app
# Contracts compiled at build time (one build serves every configuration: the verifier takes its
# key at deployment; cached under build/contracts). The deploy job (uid 10001) writes the circuit
# build and its development keys under build/ at run time.
RUN python -c "from wafl.chain.compile import compile_contracts; compile_contracts()" \
 && chown -R 10001:10001 /app/build
USER 10001:10001
EXPOSE 8545
CMD ["anvil", "--host", "0.0.0.0", "--port", "8545", "--chain-id", "31337", "--hardfork", "osaka", "--block-time", "2"]
