"""The bundled GEUVADIS demo file follows the ARCHS4 v2 layout exactly."""

import os

import h5py
import numpy as np
import pytest

from bulkformer.data import demo_path
from bulkformer.data.demo import DEMO_N_GENES, DEMO_N_SAMPLES
from bulkformer.data.genes import GeneReference, default_gene_lengths
from bulkformer.data.oracle import log1p_tpm_ref
from bulkformer.data.source import align_genes


@pytest.fixture(scope="module")
def h5():
    with h5py.File(demo_path(), "r") as f:
        yield f


def test_file_small_and_present():
    assert os.path.getsize(demo_path()) < 8 * 2**20


def test_expression_layout(h5):
    x = h5["data/expression"]
    assert x.dtype == np.uint32
    assert x.shape == (DEMO_N_GENES, DEMO_N_SAMPLES)  # genes × samples, as ARCHS4
    assert x.chunks is not None and x.compression == "gzip" and x.shuffle
    tot = x[:].sum(axis=0, dtype=np.float64)
    np.testing.assert_array_equal(tot, h5["meta/samples/readsaligned"][:])
    assert tot.min() > 1e6


@pytest.mark.parametrize("name", ["ensembl_gene_id", "symbol", "biotype"])
def test_gene_meta(h5, name):
    d = h5[f"meta/genes/{name}"]
    assert d.shape == (DEMO_N_GENES,)
    assert h5py.check_string_dtype(d.dtype) is not None  # variable-length strings
    assert isinstance(d[0], bytes)


def test_gene_ids_and_biotypes(h5):
    ids = h5["meta/genes/ensembl_gene_id"].asstr()[:]
    assert all(i.startswith("ENSG") for i in ids) and len(set(ids)) == len(ids)
    bt = h5["meta/genes/biotype"].asstr()[:]
    assert (bt == "protein_coding").sum() > 9000


@pytest.mark.parametrize(
    "name",
    ["geo_accession", "series_id", "title", "source_name_ch1", "characteristics_ch1", "sex"],
)
def test_sample_string_meta(h5, name):
    d = h5[f"meta/samples/{name}"]
    assert d.shape == (DEMO_N_SAMPLES,) and h5py.check_string_dtype(d.dtype) is not None


def test_sample_labels(h5):
    sex = h5["meta/samples/sex"].asstr()[:]
    assert sorted(set(sex)) == ["female", "male"]
    assert (sex == "female").sum() == 41 and (sex == "male").sum() == 44
    ch = h5["meta/samples/characteristics_ch1"].asstr()[:]
    assert all(c.startswith(f"Sex: {s},") for c, s in zip(ch, sex))
    acc = h5["meta/samples/geo_accession"].asstr()[:]
    assert len(set(acc)) == DEMO_N_SAMPLES and acc[0] == "NA20502"
    assert (h5["meta/samples/singlecellprobability"][:] == 0).all()
    assert set(h5["meta/samples/source_name_ch1"].asstr()[:]) == {"lymphoblastoid cell line"}


def test_info(h5):
    assert h5["meta/info/version"].asstr()[()] == "demo-geuvadis-1"
    prov = h5["meta/info/provenance"].asstr()[()]
    assert "humanGender" in prov and "r-bioc-degreport" in prov


def test_aligns_to_default_reference(h5):
    ref = GeneReference.default()
    al = align_genes(
        h5["meta/genes/ensembl_gene_id"].asstr()[:], ref, default_lengths=default_gene_lengths()
    )
    assert al.n_matched > 9000
    v = log1p_tpm_ref(h5["data/expression"][:, :3].T, al.lengths, al.gene_map, len(ref))
    assert v.shape == (3, len(ref)) and np.isfinite(v).all()
    # RPS4Y1 (chrY) is expressed in male lines only: the labels are real
    sex = h5["meta/samples/sex"].asstr()[:]
    ids = list(h5["meta/genes/ensembl_gene_id"].asstr()[:])
    c = h5["data/expression"][ids.index("ENSG00000129824"), :].astype(float)
    assert c[sex == "male"].min() > 10 * max(c[sex == "female"].max(), 1)
