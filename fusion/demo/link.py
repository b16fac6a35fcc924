"""The planted genotype -> brain link of the demo cohort (written to truth.json beside the cohort).

K latent factors; factor k is a standardized weighted sum of ALT dosages at m causal common SNVs:
    f_k = sum_j w_kj (d_kj - 2 p_j) / sqrt(sum_j w_kj^2 2 p_j (1 - p_j))      (population mean 0, sd 1)
and sets the coupling (target correlation) of one pair of networks:
    rho_k = clip(base_k + effect_size * f_k, -max_coupling, max_coupling).
Pairs are the first K edges of a random cycle over the networks, so every network is in at most two pairs and the
brain model (fusion.demo.brain) can realise any |rho| < 0.5 exactly. The factors are a fixed function of genotype
(population standardization, not cohort), so every cohort drawn from the same sites has the same truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Link:
    variants: np.ndarray  # (K, m) indices into the causal-site list
    weights: np.ndarray  # (K, m) signed weights
    freqs: np.ndarray  # (K, m) ALT frequencies of those sites
    pairs: np.ndarray  # (K, 2) network indices coupled by each factor
    base: np.ndarray  # (K,) coupling at f = 0
    effect_size: float
    max_coupling: float

    def factors(self, dosages: np.ndarray) -> np.ndarray:
        """(S, K) factor values from causal ALT dosages (n_causal, S) (0/1/2; missing calls counted as 0)."""
        d = dosages[self.variants]  # (K, m, S)
        centred = d - 2 * self.freqs[..., None]
        scale = np.sqrt((self.weights**2 * 2 * self.freqs * (1 - self.freqs)).sum(1))  # (K,)
        return ((self.weights[..., None] * centred).sum(1) / scale[:, None]).T

    def couplings(self, factors: np.ndarray) -> np.ndarray:
        """(S, K) target correlations of each factor's network pair."""
        rho = self.base + self.effect_size * factors
        return np.clip(rho, -self.max_coupling, self.max_coupling)


def causal_per_region(rng: np.random.Generator, n_regions: int, n_causal: int) -> list[int]:
    """How many causal SNVs each region holds: spread as evenly as possible, random which regions get more."""
    counts = np.full(n_regions, n_causal // n_regions)
    counts[rng.permutation(n_regions)[: n_causal % n_regions]] += 1
    return counts.tolist()


def make_link(
    rng: np.random.Generator,
    causal_freqs: np.ndarray,  # (n_causal,) ALT frequencies of the causal SNVs, in causal-list order
    *,
    n_factors: int,
    causal_per_factor: int,
    n_networks: int,
    effect_size: float,
    base_coupling: float,
    max_coupling: float,
) -> Link:
    if n_factors > n_networks:
        raise ValueError(f"n_factors={n_factors} needs at least as many networks (n_networks={n_networks})")
    if not 0 < max_coupling < 0.5:
        raise ValueError(f"max_coupling must be in (0, 0.5) (a network sits in two pairs), got {max_coupling}")
    n_causal = n_factors * causal_per_factor
    if len(causal_freqs) != n_causal:
        raise ValueError(f"expected {n_causal} causal SNVs, got {len(causal_freqs)}")
    variants = rng.permutation(n_causal).reshape(n_factors, causal_per_factor)
    weights = rng.uniform(0.5, 1.5, size=variants.shape) * rng.choice([-1.0, 1.0], size=variants.shape)
    cycle = rng.permutation(n_networks)
    pairs = np.array([[cycle[k], cycle[(k + 1) % n_networks]] for k in range(n_factors)])
    base = base_coupling * rng.choice([-1.0, 1.0], size=n_factors)
    return Link(variants, weights, causal_freqs[variants], pairs, base, effect_size, max_coupling)
