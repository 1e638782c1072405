"""The compiled extension (mpt_lite._C): the one place it is imported. CPU features, the kernel
variant (ISA), the thread pool's size, and whether the CUDA kernels were built."""
from __future__ import annotations

import contextlib
import operator

import torch

try:
    from .. import _C
except ImportError as e:  # pragma: no cover - a broken or missing build
    raise ImportError(
        f"mpt_lite's C++ extension is not built ({e}); run `make setup` (or "
        "`python setup.py build_ext --inplace`) in the source tree"
    ) from e

# ---- CPU features, kernel variants, threads ----

def cpu_features() -> dict:
    return dict(_C.cpu_features())


def supported_isas() -> list[str]:
    return list(_C.supported_isas())


def current_isa() -> str:
    return _C.current_isa()


def set_isa(name: str) -> None:
    """Selects the kernel variant ("generic", "avx2", "avx512"); ValueError if the CPU lacks it."""
    _C.set_isa(name)


class use_isa:
    """Context manager: run kernels with one variant, then restore the previous one."""

    def __init__(self, name: str) -> None:
        self.name, self.prev = name, None

    def __enter__(self) -> "use_isa":
        self.prev = current_isa()
        set_isa(self.name)
        return self

    def __exit__(self, *exc) -> None:
        set_isa(self.prev)


def amx_supported() -> bool:
    """AMX tiles compiled in, present on this CPU, and granted by the OS (Linux 5.16+)."""
    return bool(_C.amx_supported())


def amx_enabled() -> bool:
    """Whether many-row matmuls (layouts.AMX_MIN_ROWS) take bf16 operands on AMX tiles now: supported,
    not switched off (MPT_LITE_AMX=0, set_amx(False)), and the kernel variant is avx512."""
    return bool(_C.amx_enabled())


def amx_int8_enabled() -> bool:
    """Whether q8 matmuls of a few rows (int8 from 4, int4 / nf4 from 12, up to 32) run on AMX-INT8
    tiles now: amx_enabled() and the CPU has AMX-INT8; set_amx switches both."""
    return bool(_C.amx_int8_enabled())


def set_amx(on: bool) -> bool:
    """Switches the AMX tiles on or off for the whole process and returns the previous switch;
    ValueError when turning on where amx_supported() is False."""
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {on!r}")
    return bool(_C.set_amx(on))


class use_amx(contextlib.ContextDecorator):
    """Context manager (or decorator): run kernels with the AMX tiles on or off, then restore the
    previous switch."""

    def __init__(self, on: bool) -> None:
        self.on, self.prev = on, None

    def __enter__(self) -> "use_amx":
        self.prev = set_amx(self.on)
        return self

    def __exit__(self, *exc) -> None:
        set_amx(self.prev)


def num_threads() -> int:
    return _C.num_threads()


def set_num_threads(n: int) -> None:
    """The process default of the kernels' thread pool (n <= 0: MPT_LITE_NUM_THREADS, else every
    core this process may use). A model's or a call's num_threads caps it per call. Safe while
    other threads run kernels: the new size applies from their next kernel call."""
    if isinstance(n, bool):
        raise TypeError("n must be an int, got bool")
    try:
        n = operator.index(n)
    except TypeError as err:
        raise TypeError(f"n must be an int, got {type(n).__name__}") from err
    _C.set_num_threads(n)


NO_CUDA_BUILD = ("mpt_lite was built without CUDA (MPT_LITE_CUDA=on python setup.py build_ext --inplace, "
                 "with nvcc on the PATH, builds the CUDA kernels)")
CUDA_GEMV_MAX_M = int(getattr(_C, "cuda_gemv_max_m", 8))


def cuda_built() -> bool:
    """Whether this build of mpt_lite._C holds the CUDA kernels."""
    return bool(_C.with_cuda)


def cuda_available() -> bool:
    """The CUDA build and a GPU that torch sees."""
    return cuda_built() and torch.cuda.is_available()


def launch(dev: torch.device) -> dict[str, int]:
    """The device index and its current stream handle, as keyword arguments of a CUDA kernel call
    (the kernel switches to that device for the call and back to the caller's current one)."""
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return {"device": index, "stream": torch.cuda.current_stream(index).cuda_stream}
