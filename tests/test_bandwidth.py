"""The read-bandwidth yardstick (kernels.read_bandwidth): every ISA variant reads every byte of the
buffer exactly once per pass, split over the pool's threads; bad arguments raise clear errors."""
import os

import pytest

from mpt_lite import kernels
from mpt_lite.kernels.extension import _C  # the raw checksum

ISAS = kernels.supported_isas()
ONES = 0x0101010101010101


def expected_checksum(nbytes: int, passes: int) -> int:
    """The buffer: page i (4 KiB) filled with byte i % 128; the loops sum it as 64-bit words."""
    pages = -(-nbytes // 4096)
    return passes * sum(512 * (i % 128) * ONES for i in range(pages)) % 2**64


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [4096, 3 * 4096 + 1, 1 << 20])
def test_each_variant_reads_every_byte_once_per_pass(isa, threads, nbytes):
    with kernels.use_isa(isa):
        r = kernels.read_bandwidth(threads, nbytes, repeats=2)
    pages = -(-nbytes // 4096)
    assert r["bytes"] == pages * 4096 and r["isa"] == isa and len(r["gb_s_each"]) == 2
    assert 1 <= r["threads"] <= threads and r["gb_s"] > 0
    with kernels.use_isa(isa):
        raw = _C.read_bandwidth(bytes=nbytes, repeats=2, num_threads=threads)
    assert raw["checksum"] == expected_checksum(nbytes, 3)


def sys_data_caches() -> list[int]:
    """cpu0's data and unified cache sizes as the Linux kernel lists them (/sys), in bytes; [] elsewhere."""
    root, sizes = "/sys/devices/system/cpu/cpu0/cache", []
    for d in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(f"{root}/{d}/type") as t, open(f"{root}/{d}/size") as s:
                kind, size = t.read().strip(), s.read().strip()
        except OSError:
            continue
        if kind != "Instruction" and size[:-1].isdigit():
            sizes.append(int(size[:-1]) << {"K": 10, "M": 20, "G": 30}[size[-1]])
    return sizes


def test_last_level_cache_is_the_one_linux_lists():
    """/sys before glibc's sysconf: in a VM glibc can report the host socket's L3 (384 MiB on a 2-vCPU Zen 5
    guest whose /sys said 32 MiB)."""
    sizes = sys_data_caches()
    if not sizes:
        pytest.skip("no /sys/devices/system/cpu/cpu0/cache on this machine")
    assert kernels.last_level_cache_bytes() == max(sizes)


def test_default_size_is_several_times_the_last_level_cache():
    llc = kernels.last_level_cache_bytes()
    assert llc >= 0
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGESIZE")  # changes between the two reads
    want = min(max(256 << 20, 4 * llc), free // 2)
    assert abs(kernels.default_read_bytes() - want) <= max(64 << 20, want // 10)


@pytest.mark.parametrize("kw, err, match", [
    (dict(nbytes=0), ValueError, "nbytes"), (dict(nbytes=-5), ValueError, "nbytes"),
    (dict(nbytes=1.5), TypeError, "nbytes"), (dict(nbytes=True), TypeError, "nbytes"),
    (dict(repeats=0), ValueError, "repeats"), (dict(repeats="3"), TypeError, "repeats"),
    (dict(num_threads=0), ValueError, "num_threads"), (dict(num_threads=2.0), TypeError, "num_threads"),
    (dict(nbytes=1 << 62), MemoryError, "cannot allocate"),
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        kernels.read_bandwidth(**kw)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [64, 4096 + 192, 1 << 20])
def test_a_callers_buffer_is_read_once_per_pass(isa, threads, nbytes):
    """read_buffer_bandwidth reads exactly the caller's bytes: the loop's checksum against numpy's own sum."""
    import numpy as np
    import torch

    buf = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(nbytes))
    want = int(buf.numpy().view(np.uint64).sum(dtype=np.uint64)) * 3 % 2**64
    with kernels.use_isa(isa):
        r = kernels.read_buffer_bandwidth(buf, threads, repeats=3)
        raw = _C.read_buffer_bandwidth(ptr=buf.data_ptr(), bytes=nbytes, repeats=3, num_threads=threads)
    assert r["bytes"] == nbytes and r["isa"] == isa and len(r["gb_s_each"]) == 3 and r["gb_s"] > 0
    assert 1 <= r["threads"] <= threads
    assert raw["checksum"] == want


@pytest.mark.parametrize("buffer, kw, err, match", [
    ("bytes", {}, TypeError, "contiguous CPU tensor"),
    ("strided", {}, TypeError, "contiguous CPU tensor"),
    ("meta", {}, TypeError, "contiguous CPU tensor"),
    (100, {}, ValueError, "multiple of 64"), (0, {}, ValueError, "multiple of 64"),
    (64, dict(repeats=0), ValueError, "repeats"), (64, dict(repeats=1.0), TypeError, "repeats"),
    (64, dict(num_threads=0), ValueError, "num_threads"),
])
def test_bad_buffers(buffer, kw, err, match):
    import torch

    if buffer == "bytes":
        buffer = b"\0" * 64
    elif buffer == "strided":
        buffer = torch.zeros(64, 2, dtype=torch.uint8)[:, 0]
    elif buffer == "meta":
        buffer = torch.zeros(64, dtype=torch.uint8, device="meta")
    else:
        buffer = torch.zeros(buffer, dtype=torch.uint8)
    with pytest.raises(err, match=match):
        kernels.read_buffer_bandwidth(buffer, **kw)
