"""The prover as a FastStream app and a plain process (`wafl run prover`)."""

from __future__ import annotations

from aiormq.exceptions import ChannelClosed
from faststream import FastStream

from services.prover.handlers import SERVICE, ProverState, register
from services.prover.proving import JobProver
from services.prover.settings import ProverSettings
from wafl.bus.logs import configure_logging, get_logger
from wafl.bus.observability import serve_metrics
from wafl.bus.secrets import register_secret
from wafl.bus.service import ServiceSpec, StartupError, announce_start, make_app, make_runtime, preflight
from wafl.chain.artifact import Deployment
from wafl.core.config import ModelConfig
from wafl.core.paths import ToolchainError
from wafl.zk.build import BuildError, CircuitBuild, build_circuit, development_keys
from wafl.zk.keys import KeySet, KeySetError, load_keys
from wafl.zk.masking import SECRET_ENV, MaskingKeyError, read_secret
from wafl.zk.prover import Prover, ProverError

EXAMPLE = ProverSettings(org="example")


def create_app(settings: ProverSettings = EXAMPLE, state: ProverState | None = None) -> FastStream:
    # SIGTERM: FastStream stops consuming and waits up to graceful_timeout for the job in hand,
    # which is acknowledged only after its proof is published; an unfinished job is returned.
    runtime = make_runtime(settings, SERVICE, graceful_timeout=settings.graceful_timeout)
    register(runtime, state or ProverState(lease_seconds=settings.lease_seconds))
    return make_app(runtime)


async def serve(settings: ProverSettings) -> None:
    configure_logging(SERVICE, settings.org, settings.log_level)
    deployment, _ = await preflight(settings, chain=False)
    cfg = deployment.model_config
    try:
        build = build_circuit(cfg)
    except (BuildError, ToolchainError) as exc:
        raise StartupError(f"cannot build the circuit of {cfg.name}: {exc}") from None
    keys = keys_for(settings, deployment, build)
    secret = masking_secret(settings, cfg)
    try:
        worker = Prover(build, keys, backend=settings.backend)
        worker.start()
    except ProverError as exc:
        raise StartupError(f"the prover did not start: {exc}") from None
    job_prover = JobProver(cfg, worker, settings.org, settings.proof_timeout, masking_secret=secret)
    state = ProverState(job_prover, settings.lease_seconds)
    app = create_app(settings, state)
    port = serve_metrics(settings.metrics_port)
    announce_start(app, metrics_port=port, config=cfg.name, constraints=build.constraints, keys=keys.label(),
                   backend=str(settings.backend))
    try:
        await app.run()
    except ChannelClosed:
        # SIGTERM with a proof still running past graceful_timeout: the handler is cancelled and
        # its channel closed, so the broker returns the unacknowledged job to the queue.
        get_logger().warning("stopped_mid_job", detail="graceful timeout passed; the job goes back to the queue")
    finally:
        worker.close()


def masking_secret(settings: ProverSettings, cfg: ModelConfig) -> int | None:
    """The organisation's masking secret when the configuration masks updates (else None)."""
    if not cfg.secure_aggregation:
        return None
    if settings.masking_key_file is None:
        raise StartupError(f"{cfg.name} masks its updates: set {SECRET_ENV} to the organisation's masking key file")
    try:
        secret = read_secret(settings.masking_key_file)
    except MaskingKeyError as exc:
        raise StartupError(str(exc)) from None
    register_secret(str(secret))
    return secret


def keys_for(settings: ProverSettings, deployment: Deployment, build: CircuitBuild) -> KeySet:
    """The key set to prove with: it must be the one the deployment's verifier holds."""
    try:
        if settings.keys is not None:
            keys = load_keys(settings.keys)
        elif deployment.keys_kind != "development":
            raise StartupError(
                f"the deployment verifies with {deployment.keys_kind} keys: set WAFL_KEYS to their directory"
            )
        else:
            keys = development_keys(build)
    except KeySetError as exc:
        raise StartupError(str(exc)) from None
    if keys.vk_hash != deployment.vk_hash:
        raise StartupError(
            f"the keys in {keys.directory} (vk hash {keys.vk_hash}) are not the ones the deployment's verifier "
            f"holds ({deployment.vk_hash}): its proofs would all be rejected"
        )
    return keys


SPEC = ServiceSpec(SERVICE, ProverSettings, create_app, serve)
