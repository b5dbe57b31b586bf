"""The chain watcher as a FastStream app and a plain process (`wafl run chain_watcher`)."""

from __future__ import annotations

from faststream import FastStream

from services.chain_watcher.follower import ChainFollower
from services.chain_watcher.handlers import SERVICE, WatcherState, register
from services.chain_watcher.settings import ChainWatcherSettings
from wafl.bus.logs import configure_logging
from wafl.bus.observability import serve_metrics
from wafl.bus.service import ServiceSpec, announce_start, make_app, make_runtime, preflight

EXAMPLE = ChainWatcherSettings(org="example")


def create_app(settings: ChainWatcherSettings = EXAMPLE, state: WatcherState | None = None) -> FastStream:
    runtime = make_runtime(settings, SERVICE)
    watcher = register(runtime, state or WatcherState(poll_interval=settings.poll_interval))
    app = make_app(runtime)

    @app.after_startup
    async def _start() -> None:
        if watcher.state.follower is not None:
            watcher.start()

    @app.on_shutdown
    async def _stop() -> None:
        await watcher.stop()

    return app


async def serve(settings: ChainWatcherSettings) -> None:
    configure_logging(SERVICE, settings.org, settings.log_level)
    deployment, w3 = await preflight(settings)
    assert w3 is not None
    follower = ChainFollower(w3, deployment, settings.org, settings.confirmations, settings.max_block_range)
    app = create_app(settings, WatcherState(follower, settings.poll_interval))
    port = serve_metrics(settings.metrics_port)
    announce_start(app, metrics_port=port, confirmations=settings.confirmations,
                      start_block=deployment.start_block)
    await app.run()


SPEC = ServiceSpec(SERVICE, ChainWatcherSettings, create_app, serve)
