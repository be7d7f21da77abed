"""The HF engine's batched sampler: the distribution each row's settings define, and seeded rows that do not
depend on their batch."""

import pytest
import torch

from vlrl.engines.sampling import NUCLEUS_CANDIDATES, nucleus_of, sample_next
from vlrl.types import SamplingParams

LOGITS = torch.tensor([2.0, 1.5, 1.4, 0.3, -0.2, -1.0, 0.9, 0.0])
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}  # 99.9% quantiles


def expected(logits: torch.Tensor, p: SamplingParams, banned: list[int]) -> torch.Tensor:
    """The distribution by its definition, one token at a time: suppress, temperature, top-k (then renormalised),
    top-p."""
    scores = logits.double().clone()
    scores[banned] = float("-inf")
    ranked = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    if p.top_k:
        scores[ranked[p.top_k:]] = float("-inf")
    probs = torch.softmax(scores / p.temperature, -1)
    kept, mass = [], 0.0
    for i in ranked:
        if mass >= p.top_p or probs[i] == 0:
            break
        kept.append(i)
        mass += float(probs[i])
    out = torch.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


@pytest.mark.parametrize("params,banned", [
    (SamplingParams(temperature=1.0), []),
    (SamplingParams(temperature=0.5), [1]),
    (SamplingParams(temperature=1.0, top_k=3), []),
    (SamplingParams(temperature=1.3, top_p=0.7), [0]),
    (SamplingParams(temperature=0.8, top_k=4, top_p=0.9), [2, 5]),
])
def test_samples_follow_the_distribution_the_settings_define(params, banned):
    """20,000 draws in one batch against the distribution computed by hand: a chi-square test at 99.9%, and no
    draw of a token the settings remove (a fixed global seed: the test is deterministic)."""
    torch.manual_seed(0)
    n = 20_000
    logits = LOGITS.expand(n, -1)
    tokens, logprobs = sample_next(logits, [params] * n, [None] * n, [torch.tensor(banned, dtype=torch.long)] * n)
    counts = torch.bincount(torch.tensor(tokens), minlength=len(LOGITS)).double()
    want = expected(LOGITS, params, banned)
    assert (counts[want == 0] == 0).all()
    kept = want > 0
    chi2 = float(((counts[kept] - n * want[kept]) ** 2 / (n * want[kept])).sum())
    assert chi2 < CHI2_999[int(kept.sum()) - 1], (chi2, counts.tolist(), (n * want).tolist())
    raw = torch.log_softmax(LOGITS, -1)
    assert logprobs[:5] == pytest.approx([float(raw[t]) for t in tokens[:5]], abs=1e-6)  # the model's, untempered


def test_a_seeded_row_draws_the_same_tokens_whatever_its_batch():
    """A seeded request's tokens depend on its seed only: alone, or beside greedy, nucleus and unseeded rows."""
    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(1)) * 2
    mine = SamplingParams(temperature=1.0, top_p=0.95, seed=7)

    def draws(batch: bool, seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        others = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, top_k=20),
                  SamplingParams(temperature=1.0)]
        out = []
        for step in range(40):
            if batch:
                rows = [*others, mine]
                gens = [None, torch.Generator().manual_seed(step), None, gen]
                out.append(sample_next(logits[[0, 1, 2, 3]], rows, gens, [torch.tensor([], dtype=torch.long)] * 4
                                       )[0][-1])
            else:
                out.append(sample_next(logits[[3]], [mine], [gen], [torch.tensor([], dtype=torch.long)])[0][0])
        return out

    assert draws(False, 7) == draws(True, 7)
    assert draws(False, 7) != draws(False, 8)


def test_greedy_is_the_argmax_of_what_is_not_suppressed():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 1.0, 4.0]])
    tokens, logprobs = sample_next(logits, [SamplingParams(temperature=0.0)] * 2, [None, None],
                                   [torch.tensor([1]), torch.tensor([], dtype=torch.long)])
    assert tokens == [2, 0]
    assert logprobs == pytest.approx([float(torch.log_softmax(logits[0], -1)[2]),
                                      float(torch.log_softmax(logits[1], -1)[0])])


def test_a_nucleus_larger_than_the_first_candidates_is_found_whole():
    """A flat distribution whose top-p set holds thousands of tokens: the set is the full sort's."""
    vocab = 8 * NUCLEUS_CANDIDATES
    probs = torch.softmax(torch.randn(3, vocab, generator=torch.Generator().manual_seed(0)) * 0.1, -1)
    top_p = torch.tensor([0.3, 0.6, 0.99])
    got = nucleus_of(probs, top_p)
    for row in range(3):
        sorted_p, order = torch.sort(probs[row], descending=True)
        keep = int(((torch.cumsum(sorted_p, 0) - sorted_p) < top_p[row]).sum())
        assert keep > NUCLEUS_CANDIDATES
        assert set(got[row].nonzero().squeeze(-1).tolist()) == set(order[:keep].tolist())
        assert torch.equal(got[row][order[:keep]], sorted_p[:keep])
