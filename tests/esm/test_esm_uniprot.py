"""esm-embed from UniProt/Swiss-Prot FASTA: mapping by symbol or by table, the choice among
several proteins of a gene, the coverage report, and embeddings equal to the Ensembl path's."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

torch = pytest.importorskip("torch")
esm = pytest.importorskip("esm")

from bulkformer.data.genes import GeneReference  # noqa: E402
from bulkformer.esm import (  # noqa: E402
    choose_proteins,
    embed_genes,
    load_esm_matrix,
    read_proteins,
)

AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _seq(rng, n):
    return "".join(rng.choice(AA, n))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet)
    return model.eval(), alphabet


@pytest.fixture(scope="module")
def case():
    """5 reference genes (two share the symbol DUP); a UniProt FASTA whose TP53 has a reviewed
    canonical entry, a longer reviewed isoform and a still longer TrEMBL entry; BRCA1 is named
    in lower case; one protein has no GN=; one gene (NONE) has no protein."""
    rng = np.random.default_rng(3)
    ref = GeneReference(
        np.array([f"ENSG{i:011d}" for i in (1, 2, 3, 4, 5)], dtype=object),
        np.array(["TP53", "BRCA1", "DUP", "DUP", "NONE"], dtype=object),
        np.full(5, 1000.0),
    )
    seqs = {k: _seq(rng, n) for k, n in
            (("p53", 40), ("p53_2", 60), ("tr", 90), ("brca", 33), ("dup", 12), ("nogn", 15))}  # fmt: skip
    fasta = (
        f">sp|P04637|P53_HUMAN Cellular tumor antigen p53 OS=Homo sapiens OX=9606 GN=TP53 PE=1 "
        f"SV=4\n{seqs['p53']}\n"
        f">sp|P04637-2|P53_HUMAN Isoform 2 of Cellular tumor antigen p53 OS=Homo sapiens "
        f"OX=9606 GN=TP53\n{seqs['p53_2']}\n"
        f">tr|A0A024R1R8|A0A024R1R8_HUMAN p53 OS=Homo sapiens OX=9606 GN=TP53 PE=1 SV=1\n"
        f"{seqs['tr']}\n"
        f">sp|P38398|BRCA1_HUMAN Breast cancer type 1 OS=Homo sapiens OX=9606 GN=brca1 PE=1\n"
        f"{seqs['brca']}\n"
        f">sp|Q00000|DUP_HUMAN Made up OS=Homo sapiens OX=9606 GN=DUP PE=1\n{seqs['dup']}\n"
        f">sp|Q00001|NOGN_HUMAN No symbol OS=Homo sapiens OX=9606 PE=1\n{seqs['nogn']}\n"
    )
    return ref, fasta, seqs


def test_symbol_mapping_choice_and_report(tmp_path, case):
    ref, fasta, _ = case
    p = tmp_path / "up.fasta"
    p.write_text(fasta)
    df, rep = read_proteins(p, ref)
    chosen = choose_proteins(df, ref, source=str(p))
    # reviewed canonical P04637 wins over a longer reviewed isoform and a longer TrEMBL entry
    assert chosen.protein_ids.tolist() == ["P04637", "P38398", "", "", ""]
    assert chosen.choice.startswith("uniprot (reviewed")
    assert rep.n_covered == 2 and rep.n_genes == 5 and rep.n_proteins == 6
    assert rep.n_mapped_proteins == 4  # 3 × TP53 + BRCA1 (case-insensitive)
    assert rep.ambiguous_symbols == {"DUP": ["ENSG00000000003", "ENSG00000000004"]}
    assert rep.multi_protein_genes == {"ENSG00000000001": ["A0A024R1R8", "P04637", "P04637-2"]}
    s = rep.summary()
    assert "2 of 5 genes (40.0%)" in s and "DUP" in s and "reviewed > canonical > longest" in s


def test_without_reviewed_canonical_the_longest_wins(tmp_path, case):
    ref, fasta, _ = case
    p = tmp_path / "up.fasta"
    drop = fasta.split(">")
    p.write_text(">" + ">".join(r for r in drop[1:] if not r.startswith("sp|P04637|")))
    df, _ = read_proteins(p, ref)
    assert choose_proteins(df, ref).protein_ids[0] == "P04637-2"  # reviewed isoform > TrEMBL


def test_mapping_table(tmp_path, case):
    ref, fasta, _ = case
    p = tmp_path / "up.fasta"
    p.write_text(fasta)
    m = tmp_path / "map.tsv"  # versioned gene IDs; DUP's accession resolved by the table
    m.write_text(
        "accession\tgene_id\nP04637\tENSG00000000001.7\nQ00000\tENSG00000000004.2\n"
        "Q00001\tENSG00000000005\n"
    )
    df, rep = read_proteins(p, ref, mapping=m)
    chosen = choose_proteins(df, ref)
    # P04637-2 reaches TP53 through its base accession; BRCA1 is not in the table
    assert chosen.protein_ids.tolist() == ["P04637", "", "", "Q00000", "Q00001"]
    assert rep.method == "mapping table" and rep.n_covered == 3
    assert rep.multi_protein_genes == {"ENSG00000000001": ["P04637", "P04637-2"]}


def test_bad_mapping_and_unmappable(tmp_path, case):
    ref, fasta, _ = case
    p = tmp_path / "up.fasta"
    p.write_text(fasta)
    m = tmp_path / "map.tsv"
    m.write_text("just_one_column\nP04637\n")
    with pytest.raises(ValueError, match=r"map\.tsv: 1 column"):
        read_proteins(p, ref, mapping=m)
    other = GeneReference(np.array(["ENSG00000000099"], dtype=object),
                          np.array(["XYZ"], dtype=object), np.full(1, 1000.0))  # fmt: skip
    with pytest.raises(ValueError, match=r"up\.fasta: none of its 6 UniProt proteins maps"):
        read_proteins(p, other)
    mixed = tmp_path / "mixed.fa"
    mixed.write_text(fasta + ">ENSP00000000001.1 pep gene:ENSG00000000001.1 transcript:X\nMA\n")
    with pytest.raises(ValueError, match=r"mixed\.fa: FASTA record .* not a UniProt header"):
        read_proteins(mixed, ref)


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


def test_embeddings_equal_the_ensembl_path_and_cli_reports(tmp_path, tiny, case, capsys):
    """The UniProt path embeds the chosen sequences exactly as an Ensembl FASTA holding the
    same sequences does; the CLI prints the coverage and the ambiguous symbols."""
    from bulkformer.cli import main

    model, _ = tiny
    ref, fasta, seqs = case
    up = tmp_path / "up.fasta"
    up.write_text(fasta)
    ens = tmp_path / "pep.fa"
    ens.write_text(
        f">ENSP00000000001.1 pep gene:ENSG00000000001.1 transcript:ENST00000000001.1 "
        f"gene_symbol:TP53\n{seqs['p53']}\n"
        f">ENSP00000000002.1 pep gene:ENSG00000000002.1 transcript:ENST00000000002.1 "
        f"gene_symbol:BRCA1\n{seqs['brca']}\n"
    )
    e_up, h_up, meta = embed_genes(up, model, reference=ref, progress=False, device="cpu")
    e_en, h_en, _ = embed_genes(ens, model, reference=ref, progress=False, device="cpu")
    np.testing.assert_array_equal(h_up, h_en)
    np.testing.assert_array_equal(e_up, e_en)
    assert h_up.tolist() == [True, True, False, False, False]
    assert "2 of 5 genes" in meta["protein_mapping"]
    ckpt = tmp_path / "tiny.pt"
    _save_checkpoint(model, ckpt)
    ref.to_tsv(tmp_path / "genes.tsv")
    out = tmp_path / "up.safetensors"
    rc = main(["esm-embed", "--pep", str(up), "--model", str(ckpt), "--genes",
               str(tmp_path / "genes.tsv"), "--no-progress", "--device", "cpu",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 with protein, 3 without" in text
    assert "UniProt: mapped by gene symbol" in text and "ambiguous symbol(s)" in text
    assert "DUP" in text
    emb, has, m = load_esm_matrix(out, reference=ref)
    assert m["protein_choice"].startswith("uniprot") and has.sum() == 2
