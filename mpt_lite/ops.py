"""Old import path: the kernel ops now live in mpt_lite.kernels (and their plain-torch references
in mpt_lite.kernels.reference). Kept so that `from mpt_lite import ops` goes on working."""
from __future__ import annotations

from .kernels import *  # noqa: F401,F403
from .kernels import __all__ as _kernel_names
from .kernels.reference import *  # noqa: F401,F403

__all__ = list(_kernel_names) + [n for n in dir() if n.startswith("ref_")]
