"""The trainer as a FastStream app and a plain process (`wafl run trainer`)."""

from __future__ import annotations

from faststream import FastStream

from services.trainer.handlers import SERVICE, TrainerState, register
from services.trainer.rounds import RoundTrainer
from services.trainer.settings import TrainerSettings
from wafl.bus.logs import configure_logging
from wafl.bus.observability import serve_metrics
from wafl.bus.service import ServiceSpec, StartupError, announce_start, make_app, make_runtime, preflight
from wafl.data.datasets import load_org_data

EXAMPLE = TrainerSettings(org="example", participant="0x" + "00" * 20)


def create_app(settings: TrainerSettings = EXAMPLE, state: TrainerState | None = None) -> FastStream:
    runtime = make_runtime(settings, SERVICE)
    register(runtime, state or TrainerState())
    return make_app(runtime)


async def serve(settings: TrainerSettings) -> None:
    configure_logging(SERVICE, settings.org, settings.log_level)
    # No chain access: rounds are checked against the chain_watcher's record in Redis.
    deployment, _ = await preflight(settings, chain=False)
    cfg = deployment.model_config
    try:
        data = load_org_data(cfg, settings.dataset, settings.org_index, settings.org_count, settings.seed)
    except ValueError as exc:
        raise StartupError(f"{exc} (WAFL_DATASET, WAFL_ORG_INDEX, WAFL_ORG_COUNT)") from None
    state = TrainerState(RoundTrainer(cfg, data, settings.org, settings.participant))
    app = create_app(settings, state)
    port = serve_metrics(settings.metrics_port)
    announce_start(app, metrics_port=port, config=cfg.name, samples=len(data.x_train))
    await app.run()


SPEC = ServiceSpec(SERVICE, TrainerSettings, create_app, serve)
