"""The metrics service as a FastStream app and a plain process (`wafl run metrics`)."""

from __future__ import annotations

from faststream import FastStream
from prometheus_client import REGISTRY

from services.metrics.book import MetricsBook
from services.metrics.handlers import SERVICE, MetricsState, register, restore_totals
from services.metrics.settings import MetricsSettings
from wafl.bus.logs import configure_logging
from wafl.bus.observability import serve_metrics
from wafl.bus.service import ServiceSpec, StartupError, announce_start, make_app, make_runtime, preflight
from wafl.data.datasets import load_org_data

EXAMPLE = MetricsSettings(org="example")


def create_app(settings: MetricsSettings = EXAMPLE, state: MetricsState | None = None) -> FastStream:
    runtime = make_runtime(settings, SERVICE)
    state = state or MetricsState()
    ledger = register(runtime, state)
    app = make_app(runtime)

    @app.after_startup
    async def _restore() -> None:
        if state.book is not None:
            await restore_totals(ledger, state.book)

    return app


async def serve(settings: MetricsSettings) -> None:
    configure_logging(SERVICE, settings.org, settings.log_level)
    deployment, _ = await preflight(settings, chain=False)
    cfg = deployment.model_config
    try:
        data = load_org_data(cfg, settings.dataset, settings.org_index, settings.org_count, settings.seed)
    except ValueError as exc:
        raise StartupError(f"{exc} (WAFL_DATASET, WAFL_ORG_INDEX, WAFL_ORG_COUNT)") from None
    app = create_app(settings, MetricsState(MetricsBook(REGISTRY, cfg, data)))
    port = serve_metrics(settings.metrics_port)
    announce_start(app, metrics_port=port, config=cfg.name, held_out=len(data.x_test))
    await app.run()


SPEC = ServiceSpec(SERVICE, MetricsSettings, create_app, serve)
