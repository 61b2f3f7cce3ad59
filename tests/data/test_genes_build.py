"""GeneReference.build: Ensembl pep FASTA + GTF in their real formats, union-of-exons lengths."""

import gzip

import numpy as np
import pytest

from bulkformer.cli import main
from bulkformer.data.genes import (
    GeneReference,
    default_gene_lengths,
    gtf_gene_lengths,
    read_pep_genes,
    union_length,
)

PEP = """\
>ENSP00000354587.3 pep chromosome:GRCh38:21:42199689:42297244:1 gene:ENSG00000160179.19 \
transcript:ENST00000380025.5 gene_biotype:protein_coding transcript_biotype:protein_coding \
gene_symbol:ABCG1 description:ATP binding cassette subfamily G member 1 [Source:HGNC Symbol;Acc:HGNC:73]
MACLMAAFSVGTAMNASSYSAEMTEPKSVCVSVDEVVSSNMEATETDLLNGHLKKVDNNL
TEAQRFSSLPRRAAVNIEFRDLSYSVPEGPWWRKKGYKTLLKGISGKFNSGELVAIMGPS
>ENSP00000401542.1 pep chromosome:GRCh38:21:42199689:42297244:1 gene:ENSG00000160179.19 \
transcript:ENST00000441167.1 gene_biotype:protein_coding transcript_biotype:nonsense_mediated_decay \
gene_symbol:ABCG1 description:ATP binding cassette subfamily G member 1 [Source:HGNC Symbol;Acc:HGNC:73]
MACLMAAF
>ENSP00000269305.4 pep chromosome:GRCh38:17:7661779:7687538:-1 gene:ENSG00000141510.18 \
transcript:ENST00000269305.9 gene_biotype:protein_coding transcript_biotype:protein_coding \
gene_symbol:TP53 description:tumor protein p53 [Source:HGNC Symbol;Acc:HGNC:11998]
MEEPQSDPSVEPPLSQETFSDLWKLLPENNVLSPLPSQAMDDLMLSPDDIEQWFTEDPGP
>ENSP00000500000.1 pep chromosome:GRCh38:1:100:200:1 gene:ENSG00000999999.1 \
transcript:ENST00000999999.1 gene_biotype:IG_V_gene transcript_biotype:IG_V_gene \
gene_symbol:IGHV0 description:made up
MAAA
>ENSP00000400001.1 pep chromosome:GRCh38:X:1000:5000:1 gene:ENSG00000000003.15 \
transcript:ENST00000373020.9 gene_biotype:protein_coding transcript_biotype:protein_coding \
description:no symbol here
MAVEGGMKCVKFLLYVLLLAF
"""

# exon intervals (1-based closed) chosen so the union is checkable by hand:
#   ABCG1 (ENSG00000160179): [100,200] ∪ [150,250] ∪ [251,260] ∪ [400,409] on transcript 1+2
#         → [100,260] (161 bp) + [400,409] (10 bp) = 171 bp
#   TP53  (ENSG00000141510): [1000,1099] twice (two transcripts) + [2000,2000] → 100 + 1 = 101
#   ENSG00000000003: [5,5] → 1
#   ENSG00000888888 (lncRNA, not in the FASTA): [1,1000] → 1000
_EXONS = [
    ("21", "ENSG00000160179", "ENST00000380025", 100, 200),
    ("21", "ENSG00000160179", "ENST00000380025", 251, 260),
    ("21", "ENSG00000160179", "ENST00000441167", 150, 250),
    ("21", "ENSG00000160179", "ENST00000441167", 400, 409),
    ("17", "ENSG00000141510", "ENST00000269305", 1000, 1099),
    ("17", "ENSG00000141510", "ENST00000269306", 1000, 1099),
    ("17", "ENSG00000141510", "ENST00000269306", 2000, 2000),
    ("X", "ENSG00000000003", "ENST00000373020", 5, 5),
    ("5", "ENSG00000888888", "ENST00000888888", 1, 1000),
]
EXPECTED = {
    "ENSG00000000003": 1.0,
    "ENSG00000141510": 101.0,
    "ENSG00000160179": 171.0,
    "ENSG00000888888": 1000.0,
}


def _gtf_text(exons=_EXONS, with_versions=False) -> str:
    lines = [
        "#!genome-build GRCh38.p14",
        "#!genome-version GRCh38",
        "#!genebuild-last-updated 2023-03",
    ]
    for chrom, gid, tid, s, e in exons:
        gv = f"{gid}.7" if with_versions else gid
        attr_g = f'gene_id "{gv}"; gene_version "7"; gene_name "X"; gene_source "ensembl_havana";'
        lines.append(f"{chrom}\tensembl_havana\tgene\t{s}\t{e}\t.\t+\t.\t{attr_g}")
        lines.append(
            f"{chrom}\tensembl_havana\ttranscript\t{s}\t{e}\t.\t+\t.\t{attr_g} "
            f'transcript_id "{tid}"; transcript_version "1";'
        )
        lines.append(
            f"{chrom}\tensembl_havana\texon\t{s}\t{e}\t.\t+\t.\t{attr_g} "
            f'transcript_id "{tid}"; exon_number "1"; exon_id "ENSE1"; tag "basic";'
        )
        lines.append(
            f"{chrom}\tensembl_havana\tCDS\t{s}\t{e}\t.\t+\t0\t{attr_g} "
            f'transcript_id "{tid}"; protein_id "ENSP1";'
        )
    return "\n".join(lines) + "\n"


@pytest.fixture
def pep_gtf(tmp_path):
    pep = tmp_path / "Homo_sapiens.GRCh38.pep.all.fa.gz"
    pep.write_bytes(gzip.compress(PEP.encode()))
    gtf = tmp_path / "Homo_sapiens.GRCh38.110.gtf"
    gtf.write_text(_gtf_text())
    return pep, gtf


def test_read_pep_genes(pep_gtf):
    df = read_pep_genes(pep_gtf[0])
    assert df["gene_id"].tolist() == ["ENSG00000000003", "ENSG00000141510", "ENSG00000160179"]
    assert df["symbol"].tolist() == ["", "TP53", "ABCG1"]
    assert df["n_proteins"].tolist() == [1, 1, 2]
    assert df.attrs["n_records"] == 5


def test_union_of_exons_hand_checked(pep_gtf):
    s = gtf_gene_lengths(pep_gtf[1])
    assert s.to_dict() == EXPECTED


def test_gtf_versions_and_gzip(tmp_path):
    gtf = tmp_path / "gencode.gtf.gz"
    gtf.write_bytes(gzip.compress(_gtf_text(with_versions=True).encode()))
    assert gtf_gene_lengths(gtf).to_dict() == EXPECTED


def test_union_length_matches_bruteforce(rng):
    n = 400
    genes = rng.choice(["A", "B", "C", "D"], n)
    seq = rng.choice(["1", "2"], n)
    st = rng.integers(1, 500, n)
    en = st + rng.integers(0, 60, n)
    got = union_length(genes, seq, st, en)
    for g in np.unique(genes):
        cov = {"1": set(), "2": set()}
        for gg, ss, a, b in zip(genes, seq, st, en):
            if gg == g:
                cov[ss].update(range(a, b + 1))
        # one gene ID on two sequences (Ensembl's X/Y PAR genes) is one locus: the longer one
        assert got[g] == max(len(c) for c in cov.values())


def test_build_order_lengths_provenance(pep_gtf, tmp_path):
    ref = GeneReference.build(*pep_gtf)
    assert ref.gene_ids.tolist() == sorted(ref.gene_ids.tolist())
    assert ref.gene_ids.tolist() == ["ENSG00000000003", "ENSG00000141510", "ENSG00000160179"]
    np.testing.assert_array_equal(ref.lengths, [1.0, 101.0, 171.0])
    assert "Homo_sapiens.GRCh38.pep.all.fa.gz" in ref.provenance["pep_file"]
    assert ref.provenance["n_without_length"] == 0
    out = tmp_path / "ref.tsv.gz"
    ref.to_tsv(out)
    back = GeneReference.from_tsv(out)
    assert back.id == ref.id and back.provenance["pep_records"] == "5"


def test_build_missing_gene_gets_nan(pep_gtf, tmp_path, caplog):
    gtf = tmp_path / "partial.gtf"
    gtf.write_text(_gtf_text([e for e in _EXONS if e[1] != "ENSG00000141510"]))
    ref = GeneReference.build(pep_gtf[0], gtf)
    assert np.isnan(ref.lengths[1]) and ref.provenance["n_without_length"] == 1
    assert "have no exon" in caplog.text


def test_cli_build_and_info(pep_gtf, tmp_path, capsys):
    out = tmp_path / "ref.tsv"
    rc = main(
        ["genes", "build", "--pep", str(pep_gtf[0]), "--gtf", str(pep_gtf[1]), "--out", str(out)]
    )
    assert rc == 0 and "3 genes" in capsys.readouterr().out
    assert (
        main(
            [
                "genes",
                "build",
                "--pep",
                str(pep_gtf[0]),
                "--gtf",
                str(pep_gtf[1]),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "exists" in capsys.readouterr().err
    assert main(["genes", "info", str(out)]) == 0
    assert "genes       3" in capsys.readouterr().out


# ------------------------------------------------------------------ bad inputs
def test_fasta_without_ensembl_headers(tmp_path, pep_gtf):
    pep = tmp_path / "uniprot.fa"
    pep.write_text(">sp|P04637|P53_HUMAN Cellular tumor antigen p53\nMEEPQSDPSV\n")
    with pytest.raises(ValueError, match=r"uniprot\.fa.*none has an Ensembl header"):
        GeneReference.build(pep, pep_gtf[1])


def test_not_a_fasta(tmp_path, pep_gtf):
    pep = tmp_path / "empty.fa"
    pep.write_text("")
    with pytest.raises(ValueError, match="no FASTA records"):
        read_pep_genes(pep)


def test_no_protein_coding(tmp_path):
    pep = tmp_path / "ig.fa"
    pep.write_text(PEP.split(">")[4].join([">", ""]))
    with pytest.raises(ValueError, match="none with gene_biotype:protein_coding"):
        read_pep_genes(pep)


def test_gtf_without_exons(tmp_path, pep_gtf):
    gtf = tmp_path / "genes_only.gtf"
    gtf.write_text("\n".join(x for x in _gtf_text().splitlines() if "\texon\t" not in x) + "\n")
    with pytest.raises(ValueError, match=r"genes_only\.gtf.*no 'exon' feature"):
        gtf_gene_lengths(gtf)
    with pytest.raises(ValueError, match="none of the 3 protein_coding genes"):
        GeneReference.build(pep_gtf[0], gtf)


def test_gtf_empty_and_missing(tmp_path):
    gtf = tmp_path / "empty.gtf"
    gtf.write_text("#!genome-build GRCh38\n")
    with pytest.raises(ValueError, match="no GTF lines"):
        gtf_gene_lengths(gtf)
    with pytest.raises(FileNotFoundError, match="nope.gtf"):
        gtf_gene_lengths(tmp_path / "nope.gtf")


def test_gtf_exon_without_gene_id(tmp_path):
    gtf = tmp_path / "bad.gtf"
    gtf.write_text('1\tx\texon\t1\t10\t.\t+\t.\ttranscript_id "T1";\n')
    with pytest.raises(ValueError, match="no gene_id attribute"):
        gtf_gene_lengths(gtf)


def test_gtf_bad_coordinates(tmp_path):
    gtf = tmp_path / "bad.gtf"
    gtf.write_text('1\tx\texon\t10\tfoo\t.\t+\t.\tgene_id "G1";\n')
    with pytest.raises(ValueError, match="integer start"):
        gtf_gene_lengths(gtf)


# ------------------------------------------------------------------ bundled default
def test_default_reference_documented_counts():
    ref = GeneReference.default()
    assert len(ref) == 19944  # GENCODE v36 protein_coding, _PAR_Y dropped (PROVENANCE.md)
    assert int(np.isnan(ref.lengths).sum()) == 1061
    assert ref.gene_ids.tolist() == sorted(ref.gene_ids.tolist())
    assert all(g.startswith("ENSG") and "." not in g for g in ref.gene_ids[:100])
    assert ref.provenance["n_without_length"] == "1061"
    assert "GENCODE v36" in ref.provenance["selection"]
    tp53 = ref.index_of(["ENSG00000141510.17"])[0]
    assert ref.symbols[tp53] == "TP53" and 2000 < ref.lengths[tp53] < 10000


def test_default_gene_lengths():
    s = default_gene_lengths()
    assert s.dtype == np.float64 and s.index.is_unique and len(s) > 40000
    assert (s > 0).all()
    ref = GeneReference.default()
    known = ref.gene_ids[np.isfinite(ref.lengths)]
    np.testing.assert_array_equal(
        s.reindex(known).to_numpy(), ref.lengths[np.isfinite(ref.lengths)]
    )
    assert s["ENSG00000002586_PAR_Y"] == s["ENSG00000002586"]  # CD99, a PAR gene
    s.iloc[0] = -1.0  # a copy: the cached table is untouched
    assert default_gene_lengths().iloc[0] > 0
