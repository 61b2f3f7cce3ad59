"""Build script: always builds the CPU extension ``bulkformer._C``; CUDA parts are optional.

Switches (environment variables):

``BULKFORMER_NO_LIBDEFLATE=1``
    never link libdeflate even when its headers are found (zlib is always used otherwise).
``BULKFORMER_SANITIZE=1``
    build ``_C`` with AddressSanitizer + UBSan (for ``make asan``).
``BULKFORMER_NATIVE=1``
    add ``-march=native`` (off by default so wheels stay portable).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup


def _compiles(code: str, libs: list[str]) -> bool:
    """True when ``code`` compiles and links with ``libs`` (used to probe for libdeflate)."""
    cc = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cc:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "probe.cpp")
        with open(src, "w") as f:
            f.write(code)
        cmd = [cc, src, "-o", os.path.join(d, "probe")] + [f"-l{x}" for x in libs]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


define_macros = []
libraries = ["z"]
# -fno-trapping-math lets GCC if-convert the branch-free log1p/z loops into SIMD code (the engine
# never relies on floating-point exceptions)
extra_compile_args = ["-O3", "-fvisibility=hidden", "-fno-trapping-math"]
extra_link_args = []

if os.environ.get("BULKFORMER_NO_LIBDEFLATE") != "1":
    if _compiles(
        "#include <libdeflate.h>\nint main(){return libdeflate_alloc_decompressor()==0;}\n",
        ["deflate"],
    ):
        define_macros.append(("BULKFORMER_HAVE_LIBDEFLATE", "1"))
        libraries.append("deflate")
    else:
        warnings.warn(
            "libdeflate not found: bulkformer._C will inflate with zlib only "
            "(apt-get install libdeflate-dev for ~2-3x faster inflate)",
            stacklevel=1,
        )

if os.environ.get("BULKFORMER_NATIVE") == "1":
    extra_compile_args.append("-march=native")

if os.environ.get("BULKFORMER_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    extra_compile_args = ["-O1", "-fno-trapping-math"] + san
    extra_link_args += san

if sys.platform.startswith("linux"):
    extra_link_args.append("-pthread")

ext_modules = [
    Pybind11Extension(
        "bulkformer._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        define_macros=define_macros,
        libraries=libraries,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
]

setup(
    # every subpackage of bulkformer/, plus kernels/ installed as bulkformer.kernels
    packages=find_packages(include=["bulkformer", "bulkformer.*"]) + ["bulkformer.kernels"],
    package_dir={"bulkformer.kernels": "kernels"},
    package_data={"bulkformer": ["resources/*"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
