"""Tests of bulkformer.esm with a tiny randomly initialised ESM2 on CPU."""

from __future__ import annotations

import argparse
import gzip
import logging
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
esm = pytest.importorskip("esm")

from bulkformer.data.genes import GeneReference, ReferenceMismatchError  # noqa: E402
from bulkformer.esm import (  # noqa: E402
    ProteinEmbedder,
    align_embedding_table,
    embed_genes,
    esm2_packed,
    esm2_representation,
    load_esm2,
    load_esm_matrix,
    plan_windows,
    read_pep_fasta,
)

AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _seq(rng, n: int) -> str:
    return "".join(rng.choice(AA, n))


def _header(pid: str, gid: str, tid: str, sym: str) -> str:
    return (
        f">{pid}.1 pep chromosome:GRCh38:21:42199689:42297244:-1 gene:{gid}.19 "
        f"transcript:{tid}.5 gene_biotype:protein_coding transcript_biotype:protein_coding "
        f"gene_symbol:{sym} description:test protein [Source:HGNC Symbol;Acc:HGNC:73]"
    )


def _write_fasta(path, records, *, gz: bool = False) -> str:
    text = "".join(f"{_header(*r[:4])}\n{r[4]}\n" for r in records)
    path = str(path)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)
    return path


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet)
    return model.eval(), alphabet


@pytest.fixture(scope="module")
def fixture_data():
    """6 reference genes; FASTA has 5 of them (gene 3 missing), gene 0 with 3 isoforms,
    plus one gene outside the reference."""
    rng = np.random.default_rng(7)
    gids = [f"ENSG{i:011d}" for i in (10, 20, 30, 40, 50, 60)]
    recs = [
        # pid, gene, transcript, symbol, sequence
        ("ENSP00000000001", gids[0], "ENST00000000001", "AAA", _seq(rng, 50)),
        ("ENSP00000000002", gids[0], "ENST00000000002", "AAA", _seq(rng, 80)),  # longest
        ("ENSP00000000003", gids[0], "ENST00000000003", "AAA", _seq(rng, 30)),
        ("ENSP00000000004", gids[1], "ENST00000000004", "BBB", _seq(rng, 7)),
        ("ENSP00000000005", gids[2], "ENST00000000005", "CCC", _seq(rng, 131)),
        ("ENSP00000000006", gids[4], "ENST00000000006", "EEE", _seq(rng, 97)),
        ("ENSP00000000007", gids[4], "ENST00000000007", "EEE", _seq(rng, 20)),
        ("ENSP00000000008", gids[5], "ENST00000000008", "FFF", _seq(rng, 59) + "*"),
        ("ENSP00000000009", "ENSG00000099999", "ENST00000000009", "ZZZ", _seq(rng, 40)),
    ]
    # reference order deliberately differs from FASTA order
    order = [5, 2, 0, 3, 4, 1]
    ref = GeneReference(
        np.array([gids[i] for i in order], dtype=object),
        np.array([f"S{i}" for i in order], dtype=object),
        np.full(6, 1000.0),
    )
    return recs, ref


def _direct(model, alphabet, seq: str, layer: int | None = None) -> np.ndarray:
    """One protein, full forward, mean over residue positions 1..L (the test oracle)."""
    layer = model.num_layers if layer is None else layer
    _, _, toks = alphabet.get_batch_converter()([("p", seq)])
    with torch.no_grad():
        rep = model(toks, repr_layers=[layer])["representations"][layer]
    return rep[0, 1 : len(seq) + 1].mean(0).numpy()


def _direct_windows(model, alphabet, seq: str, window: int, stride: int) -> np.ndarray:
    """Each window alone through the model; per-residue mean over windows; mean over residues."""
    n = model.num_layers
    conv = alphabet.get_batch_converter()
    acc = np.zeros((len(seq), model.embed_dim), dtype=np.float64)
    cnt = np.zeros(len(seq))
    for a, b in plan_windows(len(seq), window, stride):
        _, _, toks = conv([("w", seq[a:b])])
        with torch.no_grad():
            rep = model(toks, repr_layers=[n])["representations"][n][0, 1 : b - a + 1]
        acc[a:b] += rep.double().numpy()
        cnt[a:b] += 1
    return (acc / cnt[:, None]).mean(0)


def _count_forward_rows(model):
    """Sequences (rows) that go through the model: hooked on the token embedding, which every
    forward path calls once per batch."""
    rows = []
    handle = model.embed_tokens.register_forward_hook(
        lambda m, inp, out: rows.append(inp[0].shape[0])
    )
    return rows, handle


# ------------------------------------------------------------------------------ embedding
def test_tokens_match_esm_batch_converter(tiny):
    model, alphabet = tiny
    emb = ProteinEmbedder(model, alphabet, device="cpu", progress=False)
    seqs = ["MKTAYIAKQR", "UOXBZ", "ACD"]
    _, _, ref = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
    assert torch.equal(emb.tokens(seqs), ref)


def test_pooling_matches_direct_per_protein(tmp_path, tiny, fixture_data):
    model, alphabet = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa.gz", recs, gz=True)
    # small token budget: several batches, with padding inside each
    emb, has, meta = embed_genes(pep, model, reference=ref, toks_per_batch=300, progress=False)
    assert emb.shape == (6, 32) and emb.dtype == np.float32
    by_gene = {}
    for _, gid, _, _, seq in recs:  # longest protein per gene
        s = seq.rstrip("*")
        if gid not in by_gene or len(s) > len(by_gene[gid]):
            by_gene[gid] = s
    for g, gid in enumerate(ref.gene_ids):
        if gid in by_gene:
            assert has[g]
            np.testing.assert_allclose(
                emb[g], _direct(model, alphabet, by_gene[gid]), rtol=1e-4, atol=1e-5
            )
        else:
            assert not has[g] and not emb[g].any()
    assert has.tolist() == [True, True, True, False, True, True]
    assert meta["reference_id"] == ref.id and meta["n_genes"] == "6"
    assert meta["protein_choice"] == "longest" and meta["layer"] == "2"


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_sdpa_forward_matches_esm_forward(tiny, layer):
    model, alphabet = tiny
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MEEPQSDPSV", "ACDEFGHIKLMNPQRSTVWYXBZUO"]
    _, _, toks = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
    keep = toks.ne(alphabet.padding_idx)
    with torch.no_grad():
        ref = esm2_representation(model, toks, layer, attention="esm")
        got = esm2_representation(model, toks, layer, attention="sdpa")
    assert got.shape == ref.shape == (3, toks.shape[1], 32)
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("math_below", [0, 12, 10_000])  # SDPA only, both, explicit only
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_packed_forward_matches_esm_forward(tiny, layer, math_below, monkeypatch):
    from bulkformer.esm import _embed

    monkeypatch.setattr(_embed, "PACKED_MATH_BELOW", math_below)
    model, alphabet = tiny
    # odd lengths, a 1-residue protein, much padding, rows shorter and longer than 12 tokens
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "M", "MEEPQSDPS", "ACDEFGHIKLMNPQRSTVWYXBZUO"]
    _, _, toks = alphabet.get_batch_converter()([(str(i), s) for i, s in enumerate(seqs)])
    keep = toks.ne(alphabet.padding_idx)
    with torch.no_grad():
        ref = esm2_representation(model, toks, layer, attention="esm")
        got, got_keep = esm2_packed(model, toks, layer)
        full = esm2_representation(model, toks, layer, attention="packed")
    assert torch.equal(got_keep, keep) and got.shape == (int(keep.sum()), 32)
    torch.testing.assert_close(got, ref[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full[keep], got, rtol=0, atol=0)
    assert not full[~keep].any()  # padding rows are zero


def test_packed_is_cpu_default_and_its_own_cache_key(tiny):
    model, alphabet = tiny
    packed = ProteinEmbedder(model, alphabet, device="cpu", progress=False)
    sdpa = ProteinEmbedder(model, alphabet, attention="sdpa", device="cpu", progress=False)
    assert packed.attention == "packed" and packed.config()["attention"] == "packed"
    assert packed.config() != sdpa.config()
    rng = np.random.default_rng(1)
    seqs = [_seq(rng, n) for n in (3, 41, 17, 200, 1, 64)]
    got, want = packed.embed(seqs), sdpa.embed(seqs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(got[i], _direct(model, alphabet, s), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="expected auto, packed, sdpa or esm"):
        ProteinEmbedder(model, alphabet, attention="flash", device="cpu")


def test_packed_under_bf16_autocast(tiny):
    model, alphabet = tiny
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MEEPQSDPSV", "M"]
    emb = ProteinEmbedder(model, alphabet, attention="packed", precision="bf16", device="cpu",
                          progress=False)  # fmt: skip
    got = emb.embed(seqs)
    ref = np.stack([_direct(model, alphabet, s) for s in seqs])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99, cos


def test_esm_attention_path_pools_like_direct(tiny):
    model, alphabet = tiny
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MEEPQSDPSV", "M"]
    out = ProteinEmbedder(model, alphabet, attention="esm", device="cpu", progress=False)
    for i, v in enumerate(out.embed(seqs)):
        np.testing.assert_allclose(v, _direct(model, alphabet, seqs[i]), rtol=1e-4, atol=1e-5)


def test_intermediate_layer(tiny):
    model, alphabet = tiny
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MEEPQSDPSV"]
    out = ProteinEmbedder(model, alphabet, layer=1, device="cpu", progress=False).embed(seqs)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(out[i], _direct(model, alphabet, s, 1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        ProteinEmbedder(model, alphabet, layer=5, device="cpu")


def test_plan_windows_covers_protein():
    assert plan_windows(10, 1022, 511) == [(0, 10)]
    w = plan_windows(2500, 1022, 511)
    assert w == [(0, 1022), (511, 1533), (1022, 2044), (1478, 2500)]
    cov = np.zeros(2500)
    for a, b in w:
        cov[a:b] += 1
    assert cov.min() >= 1


@pytest.mark.parametrize("length,window,stride", [(2500, 1022, 511), (97, 40, 13)])
def test_windowing_long_protein(tiny, length, window, stride):
    model, alphabet = tiny
    rng = np.random.default_rng(length)
    long, short = _seq(rng, length), _seq(rng, 25)
    embr = ProteinEmbedder(
        model, alphabet, window=window, stride=stride, toks_per_batch=2 * window + 10,
        device="cpu", progress=False,
    )  # fmt: skip
    out = embr.embed([short, long])
    want = _direct_windows(model, alphabet, long, window, stride)
    np.testing.assert_allclose(out[1], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[0], _direct(model, alphabet, short), rtol=1e-4, atol=1e-5)
    # windowing matters: one full-length pass gives something else
    assert not np.allclose(out[1], _direct(model, alphabet, long), atol=1e-4)


def test_duplicate_sequences_computed_once(tiny):
    model, alphabet = tiny
    rows, h = _count_forward_rows(model)
    try:
        out = ProteinEmbedder(model, alphabet, device="cpu", progress=False).embed(
            ["MKTAYIAK", "MEEPQ", "MKTAYIAK"]
        )
    finally:
        h.remove()
    assert sum(rows) == 2
    np.testing.assert_array_equal(out[0], out[2])


# ------------------------------------------------------------------------------ protein choice
def test_canonical_vs_longest(tmp_path, tiny, fixture_data):
    model, alphabet = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa", recs)
    gtf = tmp_path / "genes.gtf.gz"
    lines = ["#!genome-build GRCh38.p14"]
    for _, gid, tid, _, _ in recs:
        tag = ' tag "Ensembl_canonical";' if tid in ("ENST00000000003",) else ""
        attrs = (
            f'gene_id "{gid}"; gene_version "19"; transcript_id "{tid}"; transcript_version "5";'
        )
        lines.append(f"21\tensembl\tgene\t1\t100\t.\t-\t.\t{attrs}")
        lines.append(f"21\tensembl\ttranscript\t1\t100\t.\t-\t.\t{attrs}{tag}")
        lines.append(f'21\tensembl\texon\t1\t100\t.\t-\t.\t{attrs}{tag} exon_number "1";')
    with gzip.open(gtf, "wt") as f:
        f.write("\n".join(lines) + "\n")
    e_long, _, m_long = embed_genes(pep, model, reference=ref, progress=False)
    e_can, has, m_can = embed_genes(pep, model, reference=ref, gtf=gtf, progress=False)
    g0 = int(ref.index_of(["ENSG00000000010"])[0])
    seqs = {r[0]: r[4] for r in recs}
    np.testing.assert_allclose(
        e_can[g0], _direct(model, alphabet, seqs["ENSP00000000003"]), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        e_long[g0], _direct(model, alphabet, seqs["ENSP00000000002"]), rtol=1e-4, atol=1e-5
    )
    others = np.arange(6) != g0  # no canonical tag: fall back to longest
    np.testing.assert_array_equal(e_can[others], e_long[others])
    assert m_can["protein_choice"] == "canonical" and m_can["n_canonical"] == "1"
    assert m_long["protein_choice"] == "longest"


# ------------------------------------------------------------------------------ file + resume
def test_output_file_round_trip_and_reference_check(tmp_path, tiny, fixture_data):
    model, _ = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa", recs)
    out = tmp_path / "esm2.safetensors"
    emb, has, meta = embed_genes(pep, model, reference=ref, out=out, progress=False)
    assert not os.path.exists(f"{out}.cache")  # removed after success
    e2, h2, m2 = load_esm_matrix(out, reference=ref)
    np.testing.assert_array_equal(e2, emb)
    np.testing.assert_array_equal(h2, has)
    for k in ("model", "layer", "reference_id", "n_genes", "protein_choice", "bulkformer_version"):
        assert m2[k] == meta[k]
    other = GeneReference(ref.gene_ids[::-1], ref.symbols[::-1], ref.lengths[::-1])
    with pytest.raises(ReferenceMismatchError, match="ESM2 matrix"):
        load_esm_matrix(out, reference=other)
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_resume_after_crash_is_bit_identical(tmp_path, tiny, fixture_data):
    model, _ = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa", recs)
    kw = dict(reference=ref, toks_per_batch=140, progress=False)
    full, full_has, _ = embed_genes(pep, model, out=tmp_path / "a" / "full.st", **kw)

    class Crash(RuntimeError):
        pass

    def crash(i, n):
        assert n >= 3
        raise Crash

    out = tmp_path / "b" / "resumed.st"
    with pytest.raises(Crash):
        embed_genes(pep, model, out=out, on_batch=crash, **kw)
    assert not out.exists()
    parts = [f for _, _, fs in os.walk(f"{out}.cache") for f in fs if f.startswith("part-")]
    assert len(parts) == 1
    rows, h = _count_forward_rows(model)
    try:
        emb, has, _ = embed_genes(pep, model, out=out, **kw)
    finally:
        h.remove()
    # sizes 9, 61, 82, 99, 133 tokens with a 140-token budget: batches {9, 61}, {82}, {99},
    # {133}; the crash came after the first, so exactly its 2 proteins are not recomputed
    assert sum(rows) == 3
    assert np.array_equal(emb, full) and emb.tobytes() == full.tobytes()
    np.testing.assert_array_equal(has, full_has)
    e_file, _, _ = load_esm_matrix(out, reference=ref)
    assert e_file.tobytes() == full.tobytes()


def test_cache_not_reused_for_other_layer(tmp_path, tiny, fixture_data):
    model, _ = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa", recs)
    out = tmp_path / "e.st"
    embed_genes(pep, model, reference=ref, out=out, keep_cache=True, progress=False)
    rows, h = _count_forward_rows(model)
    try:
        embed_genes(pep, model, reference=ref, out=out, keep_cache=True, progress=False)
        assert sum(rows) == 0  # same config: everything from the cache
        embed_genes(pep, model, reference=ref, out=out, layer=1, progress=False)
        assert sum(rows) == 5  # other layer: recomputed
    finally:
        h.remove()


# ------------------------------------------------------------------------------ checkpoints
def _save_checkpoint(model, path):
    cfg = argparse.Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    state = {f"encoder.sentence_encoder.{k}": v for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if "contact_head.regression" not in k}
    torch.save({"cfg": {"model": cfg}, "model": state}, path)


def test_local_checkpoint_loads_and_matches(tmp_path, tiny):
    model, alphabet = tiny
    path = tmp_path / "tiny_esm2.pt"
    _save_checkpoint(model, path)
    m2, a2, name = load_esm2(path)
    assert name == "tiny_esm2.pt" and m2.num_layers == 2
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MEEPQSDPSV"]
    want = ProteinEmbedder(model, alphabet, device="cpu", progress=False).embed(seqs)
    got = ProteinEmbedder(m2, a2, device="cpu", progress=False).embed(seqs)
    np.testing.assert_array_equal(got, want)


def test_hub_name_read_from_torch_hub_cache(tmp_path, tiny):
    model, _ = tiny
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        os.makedirs(tmp_path / "checkpoints")
        _save_checkpoint(model, tmp_path / "checkpoints" / "esm2_t6_8M_UR50D.pt")
        m2, _, name = load_esm2("esm2_t6_8M_UR50D")  # no network: the cached file is used
    finally:
        torch.hub.set_dir(old)
    assert name == "esm2_t6_8M_UR50D"
    want = {k: v for k, v in model.state_dict().items() if "regression" not in k}
    got = {k: v for k, v in m2.state_dict().items() if "regression" not in k}
    torch.testing.assert_close(got, want)  # contact regression is not used, nor loaded


class _Payload:
    """Pickles to ``os.system("touch MARKER")``: runs when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickled_payload_is_refused_unrun(tmp_path, tiny, monkeypatch):
    """Local files and the torch hub cache are read with weights_only=True, also where torch's
    own default would unpickle (torch < 2.6, torch.hub.load_state_dict_from_url)."""
    model, _ = tiny
    marker = tmp_path / "payload-ran"
    good = tmp_path / "good.pt"
    _save_checkpoint(model, good)
    data = torch.load(good, weights_only=False)
    data["cfg"]["extra"] = _Payload(marker)
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(ValueError, match=r"bad\.pt: cannot be read as a fair-esm checkpoint"):
        load_esm2(bad)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        os.makedirs(tmp_path / "checkpoints")
        torch.save(data, tmp_path / "checkpoints" / "esm2_t6_8M_UR50D.pt")
        with pytest.raises(ValueError, match="could not load ESM2 model"):
            load_esm2("esm2_t6_8M_UR50D")
        # not cached: the "download" (patched, no network) brings the payload
        os.remove(tmp_path / "checkpoints" / "esm2_t6_8M_UR50D.pt")
        fetch = lambda url, dst, *a, **k: torch.save(data, dst)  # noqa: E731
        monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
        with pytest.raises(ValueError, match="could not load ESM2 model"):
            load_esm2("esm2_t6_8M_UR50D")
        assert (tmp_path / "checkpoints" / "esm2_t6_8M_UR50D.pt").exists()  # it was fetched
    finally:
        torch.hub.set_dir(old)
    assert not marker.exists()
    # every torch.load of the loader passes weights_only=True explicitly
    seen = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or load(*a, **k))
    load_esm2(good)
    assert seen and all(k.get("weights_only") is True for k in seen)


def test_not_esm2_checkpoints(tmp_path):
    p1 = tmp_path / "weights.pt"
    torch.save({"linear.weight": torch.zeros(3, 3)}, p1)
    with pytest.raises(ValueError, match=r"weights\.pt: not an ESM2 checkpoint"):
        load_esm2(p1)
    p2 = tmp_path / "esm1b.pt"
    torch.save({"args": argparse.Namespace(arch="roberta_large"), "model": {}}, p2)
    with pytest.raises(ValueError, match="ESM-1 style checkpoint"):
        load_esm2(p2)
    p3 = tmp_path / "garbage.pt"
    p3.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a fair-esm checkpoint"):
        load_esm2(p3)
    p4 = tmp_path / "wrong_shapes.pt"
    bad = argparse.Namespace(
        encoder_layers=3, encoder_embed_dim=32, encoder_attention_heads=4, token_dropout=True
    )
    torch.save(
        {"cfg": {"model": bad}, "model": {"encoder.embed_tokens.weight": torch.zeros(1)}}, p4
    )
    with pytest.raises(ValueError, match="weights do not fit an ESM2"):
        load_esm2(p4)
    with pytest.raises(ValueError, match="neither an existing file nor a known ESM2"):
        load_esm2(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------ bad input
def test_fasta_without_ensembl_headers(tmp_path, tiny, fixture_data):
    model, _ = tiny
    _, ref = fixture_data
    p = tmp_path / "plain.fa"
    p.write_text(">P04637 Cellular tumor antigen p53\nMEEPQSDPSV\n")
    with pytest.raises(ValueError, match=r"plain\.fa: FASTA record .* without Ensembl 'gene:'"):
        embed_genes(p, model, reference=ref, progress=False)
    q = tmp_path / "uniprot.fa"  # UniProt, but no GN= symbol to map it by
    q.write_text(">sp|P04637|P53_HUMAN Cellular tumor antigen p53\nMEEPQSDPSV\n")
    with pytest.raises(ValueError, match=r"uniprot\.fa: none of its 1 UniProt proteins maps"):
        embed_genes(q, model, reference=ref, progress=False)


def test_empty_and_non_fasta(tmp_path):
    p = tmp_path / "empty.fa.gz"
    with gzip.open(p, "wt"):
        pass
    with pytest.raises(ValueError, match=r"empty\.fa\.gz: no FASTA records"):
        read_pep_fasta(p)
    q = tmp_path / "table.fa"
    q.write_text("gene_id\tx\nENSG1\t1\n")
    with pytest.raises(ValueError, match=r"table\.fa: not a FASTA file"):
        read_pep_fasta(q)


def test_genes_absent_from_fasta(tmp_path, tiny, fixture_data, caplog):
    model, _ = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa", recs)
    with caplog.at_level(logging.WARNING, logger="bulkformer.esm"):
        _, has, meta = embed_genes(pep, model, reference=ref, progress=False)
    assert "1 of 6 reference genes have no protein" in caplog.text
    assert "ENSG00000000040" in caplog.text
    assert meta["n_with_protein"] == "5" and has.sum() == 5
    other = GeneReference(np.array(["ENSG00000123456"], dtype=object), np.array(["X"]), [1.0])
    with pytest.raises(ValueError, match=r"pep\.fa: none of the 1 genes of reference"):
        embed_genes(pep, model, reference=other, progress=False)


def test_non_standard_residues(tmp_path, tiny, fixture_data, caplog):
    model, alphabet = tiny
    _, ref = fixture_data
    g = ref.gene_ids
    recs = [
        ("ENSP00000000101", g[0], "ENST00000000101", "A", "MKTJAYIAK"),
        ("ENSP00000000102", g[1], "ENST00000000102", "B", "MKUOXBZ"),
    ]
    pep = _write_fasta(tmp_path / "bad.fa", recs)
    with pytest.raises(
        ValueError, match=r"bad\.fa: ENSP00000000101\.1 .*residue 'J' at position 4"
    ):
        embed_genes(pep, model, reference=ref, progress=False)
    # U, O, X, B, Z are ESM tokens; trailing '*' stripped; internal '*' → X with a warning
    recs = [
        ("ENSP00000000102", g[1], "ENST00000000102", "B", "MKUOXBZ"),
        ("ENSP00000000103", g[2], "ENST00000000103", "C", "MKT*AYIAK*"),
        ("ENSP00000000104", g[3], "ENST00000000104", "D", "mkqrs*"),
    ]
    pep = _write_fasta(tmp_path / "ok.fa", recs)
    with caplog.at_level(logging.WARNING, logger="bulkformer.esm"):
        emb, has, _ = embed_genes(pep, model, reference=ref, progress=False)
    assert "internal stop codon" in caplog.text
    for row, seq in ((1, "MKUOXBZ"), (2, "MKTXAYIAK"), (3, "MKQRS")):
        np.testing.assert_allclose(emb[row], _direct(model, alphabet, seq), rtol=1e-4, atol=1e-5)


def test_missing_default_reference(tmp_path, tiny, fixture_data, monkeypatch):
    model, _ = tiny
    recs, _ = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa", recs)
    monkeypatch.delattr(GeneReference, "default", raising=False)
    with pytest.raises(ValueError, match="pass --genes"):
        embed_genes(pep, model, progress=False)


# ------------------------------------------------------------------------------ alignment
def test_align_tables(tmp_path, fixture_data):
    _, ref = fixture_data
    rng = np.random.default_rng(3)
    ids = ["ENSG00000000010.4", "ENSG00000000060", "ENSG00000099999", "ENSG00000000030"]
    vals = rng.standard_normal((4, 5)).astype(np.float32)
    want = np.zeros((6, 5), np.float32)
    pos = ref.index_of(ids)
    want[pos[pos >= 0]] = vals[pos >= 0]

    torch.save({i: torch.from_numpy(v) for i, v in zip(ids, vals)}, tmp_path / "d.pt")
    torch.save({"embeddings": torch.from_numpy(vals), "gene_ids": ids}, tmp_path / "e.pt")
    np.save(tmp_path / "t.npy", vals)
    (tmp_path / "t.ids").write_text("\n".join(ids) + "\n")
    import pandas as pd

    df = pd.DataFrame(vals, columns=[f"d{j}" for j in range(5)])
    df.insert(0, "gene_id", ids)
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    df.to_csv(tmp_path / "t.csv", index=False)
    for name, extra in [("d.pt", {}), ("e.pt", {}), ("t.npy", {"ids": tmp_path / "t.ids"}),
                        ("t.tsv", {}), ("t.csv", {})]:  # fmt: skip
        emb, has, meta = align_embedding_table(tmp_path / name, ref, **extra)
        np.testing.assert_allclose(emb, want, rtol=1e-6, err_msg=name)
        assert has.tolist() == (pos[pos >= 0][:, None] == np.arange(6)).any(0).tolist()
        assert meta["reference_id"] == ref.id
    out = tmp_path / "aligned.st"
    align_embedding_table(tmp_path / "t.tsv", ref, out=out)
    np.testing.assert_allclose(load_esm_matrix(out, reference=ref)[0], want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"t\.npy: a \.npy table needs --ids"):
        align_embedding_table(tmp_path / "t.npy", ref)
    df.assign(gene_id=["ENSG00000000010.1", "ENSG00000000010.2", "a", "b"]).to_csv(
        tmp_path / "dup.tsv", sep="\t", index=False
    )
    with pytest.raises(ValueError, match="duplicate gene IDs"):
        align_embedding_table(tmp_path / "dup.tsv", ref)


# ------------------------------------------------------------------------------ CLI
def test_cli_embed_and_align(tmp_path, tiny, fixture_data, capsys):
    from bulkformer.cli import main

    model, _ = tiny
    recs, ref = fixture_data
    pep = _write_fasta(tmp_path / "pep.fa.gz", recs, gz=True)
    ref.to_tsv(tmp_path / "genes.tsv")
    ckpt = tmp_path / "tiny_esm2.pt"
    _save_checkpoint(model, ckpt)
    out = tmp_path / "esm2.safetensors"
    rc = main(["esm-embed", "--pep", pep, "--model", str(ckpt), "--genes",
               str(tmp_path / "genes.tsv"), "--toks-per-batch", "200", "--no-progress",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    assert "5 with protein, 1 without" in capsys.readouterr().out
    emb, has, meta = load_esm_matrix(out, reference=ref)
    assert meta["model"] == "tiny_esm2.pt" and emb.shape == (6, 32)
    np.save(tmp_path / "m.npy", emb)
    (tmp_path / "m.ids").write_text("\n".join(ref.gene_ids) + "\n")
    rc = main(["esm-align", str(tmp_path / "m.npy"), "--ids", str(tmp_path / "m.ids"),
               "--genes", str(tmp_path / "genes.tsv"), "--out", str(tmp_path / "al.st")])  # fmt: skip
    assert rc == 0
    np.testing.assert_array_equal(load_esm_matrix(tmp_path / "al.st", reference=ref)[0], emb)
    rc = main(["esm-embed", "--pep", pep, "--model", str(tmp_path / "nope.pt"), "--genes",
               str(tmp_path / "genes.tsv"), "--out", str(out)])  # fmt: skip
    assert rc == 1
    assert "neither an existing file nor a known ESM2 model" in capsys.readouterr().err
