import torch

from genomics.alphabet import encode
from genomics.models.kmer import KmerSpectrum


def ids_of(*haplotypes_per_region):
    """[[hap1, hap2], ...] strings of equal length -> (1, R, 2, L) ids."""
    return torch.stack([torch.stack([torch.from_numpy(encode(h)) for h in r]) for r in haplotypes_per_region])[None]


def revcomp(s):
    return s.translate(str.maketrans("ACGTN", "TGCAN"))[::-1]


def test_counts_by_hand_non_canonical():
    enc = KmerSpectrum(n_regions=1, k=2, canonical=False)
    out = enc(ids_of(["ACGTA", "AAAAA"]))[0]  # 4 + 4 valid 2-mers
    names = KmerSpectrum.kmer_names(2, canonical=False)
    expected = {"AC": 1, "CG": 1, "GT": 1, "TA": 1, "AA": 4}
    for name, value in zip(names, out.tolist()):
        assert abs(value - expected.get(name, 0) / 8) < 1e-7, name


def test_n_and_padding_break_kmers():
    enc = KmerSpectrum(n_regions=1, k=3, canonical=False)
    out = enc(ids_of(["ACNGT", "ACGTX"]))[0]  # hap 1: no valid 3-mer; hap 2: ACG, CGT
    names = KmerSpectrum.kmer_names(3, canonical=False)
    assert out[names.index("ACG")] == 0.5 and out[names.index("CGT")] == 0.5 and out.sum() == 1


def test_canonical_is_strand_invariant_and_names_match_bins():
    seq = "ACGGTTACAGGATTACAGGGTCA"
    enc = KmerSpectrum(n_regions=2, k=4)
    fwd = enc(ids_of([seq, seq[::-1]], [seq[:10] * 2 + "A" * 3, seq]))
    rc = enc(ids_of([revcomp(seq), revcomp(seq[::-1])], [revcomp(seq[:10] * 2 + "A" * 3), revcomp(seq)]))
    assert torch.allclose(fwd, rc)
    names = KmerSpectrum.kmer_names(4)
    assert enc.n_kmers == len(names) == 136 and enc.output_dim == 272
    one = enc(ids_of(["TTTT", "TTTT"], ["ACGA", "ACGA"]))[0]
    assert one[names.index("AAAA")] == 1.0 and one[136 + names.index("ACGA")] == 1.0
