"""The demo upstream: deterministic MaidCentral-shaped data served over real HTTP, with faults."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsdash.demo.data import DemoWorld
from opsdash.demo.server import DEMO_API_KEY, FAULT_KINDS, DemoUpstream, FaultSettings

if TYPE_CHECKING:
    from opsdash.config import Settings
    from opsdash.engine.runtime import Engine

__all__ = [
    "DEMO_API_KEY",
    "FAULT_KINDS",
    "DemoUpstream",
    "DemoWorld",
    "FaultSettings",
    "engine_for",
]


def engine_for(settings: Settings) -> Engine:
    """The engine for ``settings``, serving the built-in demo upstream in this process when
    they ask for one (demo mode without ``MAIDCENTRAL_API_URL``).

    The entry points build engines through this, so the engine itself never imports the
    demo; the engine starts the demo upstream with itself and stops it with itself.
    """
    from opsdash.engine.runtime import Engine  # the engine is heavy; the demo alone is not

    if not settings.starts_demo_upstream:
        return Engine(settings)
    demo = DemoUpstream(companies=settings.demo_companies, api_key=DEMO_API_KEY)
    return Engine(settings, local_upstream=demo)
