"""GDC STAR-Counts reading speed: bulkformer's GDCSource vs a plain ``pandas.read_csv`` loop.

Run (from the repository root)::

    python -m pytest benches/bench_gdc.py --benchmark-enable -p no:cacheprovider -s

``BULKFORMER_BENCH_GDC_FILES`` (default 200) synthetic 60,660-gene files in the exact GDC
format are written once to a temporary directory (~4 MB each). Both readers read the
``unstranded`` column of every file; ``extra_info`` holds files/s and, on the pandas test, the
speed-up ratio (files/s of GDCSource ÷ files/s of the pandas loop). The files are in the page
cache for both readers (each is read once before timing).
"""

import os

import numpy as np
import pandas as pd
import pytest

from bulkformer.data.gdc import GDCSource
from bulkformer.data.synthetic_gdc import make_gdc_dir

N_FILES = int(os.environ.get("BULKFORMER_BENCH_GDC_FILES", "200"))
_RESULTS: dict = {}


@pytest.fixture(scope="module")
def gdc_dir(tmp_path_factory):
    d, sheet, _, _ = make_gdc_dir(tmp_path_factory.mktemp("bench_gdc"), N_FILES, seed=11)
    for root, _dirs, files in os.walk(d):  # warm the page cache
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                fh.read()
    return d, sheet


def _pandas_loop(paths):
    out = np.empty((len(paths), 60660), dtype=np.int64)
    for i, p in enumerate(paths):
        df = pd.read_csv(p, sep="\t", comment="#")
        out[i] = df["unstranded"].to_numpy()[4:]
    return out


def test_gdc_reader(benchmark, gdc_dir):
    d, sheet = gdc_dir

    def run():
        return GDCSource(d, sample_sheet=sheet).read_counts()

    counts = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert counts.shape == (N_FILES, 60660)
    fps = N_FILES / benchmark.stats.stats.median
    _RESULTS["bulkformer"] = fps
    _RESULTS["counts"] = counts
    benchmark.extra_info.update(files=N_FILES, files_per_s=round(fps, 1), threads=os.cpu_count())


def test_pandas_loop(benchmark, gdc_dir):
    d, sheet = gdc_dir
    paths = list(GDCSource(d, sample_sheet=sheet).samples["path"])
    counts = benchmark.pedantic(lambda: _pandas_loop(paths), rounds=1, iterations=1)
    fps = N_FILES / benchmark.stats.stats.median
    benchmark.extra_info.update(files=N_FILES, files_per_s=round(fps, 1))
    if "bulkformer" in _RESULTS:
        np.testing.assert_array_equal(counts, _RESULTS["counts"])
        ratio = _RESULTS["bulkformer"] / fps
        benchmark.extra_info["speedup_bulkformer_vs_pandas"] = round(ratio, 2)
        print(
            f"\nGDC {N_FILES} files: bulkformer {_RESULTS['bulkformer']:.1f} files/s, "
            f"pandas {fps:.1f} files/s, ratio {ratio:.1f}x"
        )
