"""The demo upstream: deterministic MaidCentral-shaped data served over real HTTP, with faults."""

from opsdash.demo.data import DemoWorld
from opsdash.demo.server import FAULT_KINDS, DemoUpstream, FaultSettings

__all__ = ["FAULT_KINDS", "DemoUpstream", "DemoWorld", "FaultSettings"]
