"""Old import path: the engine now lives in mpt_lite.runtime.engine."""
from __future__ import annotations

from .runtime.engine import DEFAULT_MAX_BYTES, Engine, Request  # noqa: F401
from .runtime.sampler import SamplingParams  # noqa: F401
