"""Builds mpt_lite._C by driving CMake (see CMakeLists.txt).

Environment:
  MPT_LITE_CUDA=auto|on|off   build the CUDA sources (auto: when nvcc is found); default auto
  MPT_LITE_CUDA_ARCHS="90"    CUDA architectures (default "80;86;89;90")
  MPT_LITE_X86_SIMD=auto|on|off  build the AVX2/AVX-512 kernel variants (auto: on x86-64); default auto
  MPT_LITE_BUILD_DIR          CMake build folder (default build/cmake), kept for incremental builds
  MPT_LITE_BUILD_TYPE         CMake build type (default Release)
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("MPT_LITE_BUILD_DIR", ROOT / "build" / "cmake"))
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("MPT_LITE_CUDA", "auto").lower()
        if cuda not in ("auto", "on", "off"):
            raise ValueError(f"MPT_LITE_CUDA must be auto, on or off, not {cuda!r}")
        simd = os.environ.get("MPT_LITE_X86_SIMD", "auto").lower()
        if simd not in ("auto", "on", "off"):
            raise ValueError(f"MPT_LITE_X86_SIMD must be auto, on or off, not {simd!r}")
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MPT_LITE_BUILD_TYPE', 'Release')}",
            f"-DMPT_LITE_CUDA={cuda.upper()}",
            f"-DMPT_LITE_X86_SIMD={simd.upper()}",
            f"-DMPT_LITE_EXT_NAME={ext.name.split('.')[-1]}",
        ]
        if os.environ.get("MPT_LITE_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['MPT_LITE_CUDA_ARCHS']}")
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and "Ninja" not in cache.read_text() and "-GNinja" in args:
            args.remove("-GNinja")
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("mpt_lite._C")], cmdclass={"build_ext": CMakeBuild})
