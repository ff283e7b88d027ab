"""model.dropout's fast masks (issue 25): still a correct dropout, drawn from bulk random bits.

Oracles: scipy's binomial and chi-square tests for the rate, the independence and the lanes of the bulk draw
(each int64 gives four int16 thresholds: a lane whose bits are not uniform shows as a rate of its own); exact
arithmetic for the scaling; torch's SDPA for the written-out attention that carries attention's fast mask. Every
statistical test runs on a fixed seed, so it is deterministic: a p-value threshold of 1e-6 never fails a correct
dropout by chance on some seed we did not try, and a rate off by 1% of the elements on 1M draws gives p < 1e-30.
"""

import numpy as np
import pytest
import torch
from scipy import stats

import model
import train
from helpers import random_batch, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")
N = 1 << 20  # elements per mask: the rate is then known to +-0.0006 (2 sigma at p = 0.1)
P_MIN = 1e-6


def mask(p: float, n: int = N, seed: int = 0) -> torch.Tensor:
    """Which elements the fast dropout keeps, (n,) bool; checks the kept ones are scaled by exactly 1/(1-p)."""
    torch.manual_seed(seed)
    y = model.dropout(torch.ones(n), p, fast=True)
    keep = y != 0
    assert torch.equal(y[keep], torch.full((int(keep.sum()),), 1 / (1 - p))), "kept elements scaled by 1/(1-p)"
    return keep


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_rate_is_p(p):
    dropped = int((~mask(p)).sum())
    assert stats.binomtest(dropped, N, p).pvalue > P_MIN, dropped / N


def test_each_lane_of_the_bulk_draw_has_the_rate():
    """The four int16s of one int64: random_() without a range leaves the top bit 0 (a lane that never drops)."""
    lanes = (~mask(0.1)).view(-1, 4).sum(0).numpy()  # dropped per lane
    table = np.stack([lanes, N // 4 - lanes])
    assert stats.chi2_contingency(table).pvalue > P_MIN, lanes / (N // 4)
    for dropped in lanes:
        assert stats.binomtest(int(dropped), N // 4, 0.1).pvalue > P_MIN


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 5, 64, N // 4, N // 2])
def test_independent_across_elements(lag):
    """Pairs of elements `lag` apart (in one int64, in neighbouring ones, far apart: a reused half of the draw):
    a 2x2 table, chi-square."""
    keep = mask(0.3).numpy()
    a, b = keep[:-lag], keep[lag:]
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert stats.chi2_contingency(table).pvalue > P_MIN, table


def test_independent_across_calls_and_steps():
    """Two masks drawn one after the other (two dropout sites of a step, or the same site at the next step)."""
    torch.manual_seed(0)
    a = model.dropout(torch.ones(N), 0.3, fast=True) != 0
    b = model.dropout(torch.ones(N), 0.3, fast=True) != 0
    a, b = a.numpy(), b.numpy()
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert stats.chi2_contingency(table).pvalue > P_MIN, table
    assert not np.array_equal(a, b)


def test_rate_within_2_to_the_minus_16_for_any_p():
    """The threshold rounds p to a multiple of 2^-16: p = 1e-5 (0.66 of a step) drops 1 in 65536."""
    n = 1 << 22
    for p in (1e-5, 0.123456):
        dropped = int((~mask(p, n)).sum())
        assert stats.binomtest(dropped, n, round(p * 65536) / 65536).pvalue > P_MIN, (p, dropped)
        assert abs(round(p * 65536) / 65536 - p) <= 2 ** -17


def test_same_seed_repeats_bit_for_bit_and_gradients_are_the_mask():
    x = torch.randn(3, 5, 7, requires_grad=True)
    torch.manual_seed(1)
    y = model.dropout(x, 0.25, fast=True)
    torch.manual_seed(1)
    again = model.dropout(x, 0.25, fast=True)
    assert torch.equal(y, again)
    torch.manual_seed(2)
    assert not torch.equal(y, model.dropout(x, 0.25, fast=True))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, (y != 0).float() / 0.75)
    for p in (0.0, 1.0):  # the ends: torch's own
        assert torch.equal(model.dropout(x, p, fast=True), torch.nn.functional.dropout(x, p))


def test_bf16_stays_bf16():
    y = model.dropout(torch.ones(1000, dtype=torch.bfloat16), 0.1, fast=True)
    assert y.dtype == torch.bfloat16 and set(y.unique().tolist()) <= {0.0, torch.tensor(1 / 0.9).bfloat16().item()}


@pytest.fixture(params=["bert", "roberta"])
def tiny(request, tmp_path):
    return model.from_pretrained(write_tiny_encoder(tmp_path, request.param, dropout=0.1), num_labels=3)


def test_model_modes(tiny):
    """torch is the default (transformers' parity tests rely on it); set_dropout_masks switches every site;
    eval mode is the same in both; the same seed repeats a fast train-mode forward bit for bit."""
    ids, mask_, types = random_batch(tiny.config.vocab_size, tiny.config.pad_token_id, [9, 5, 7])
    sites = [m for m in tiny.modules() if isinstance(m, (model.Dropout, model.SelfAttention))]
    assert sites and not any(m.fast for m in sites)
    evaluated = tiny.eval()(ids, mask_, types)
    torch.manual_seed(3)
    exact = tiny.train()(ids, mask_, types)
    model.set_dropout_masks(tiny, "fast")
    assert all(m.fast for m in sites)
    torch.manual_seed(3)
    fast = tiny(ids, mask_, types)
    torch.manual_seed(3)
    assert torch.equal(fast, tiny(ids, mask_, types))
    assert not torch.equal(fast, exact) and (fast - evaluated).abs().max() > 1e-3
    assert torch.equal(tiny.eval()(ids, mask_, types), evaluated)
    with pytest.raises(ValueError, match="'torch' or 'fast'"):
        model.set_dropout_masks(tiny, "auto")


def test_written_out_attention_equals_sdpa(tiny):
    """Fast masks on attention take a written-out attention (SDPA has no mask hook). With a rate that rounds to
    0 (p = 1e-9: every element kept, scale 1 + 1e-9) it must equal SDPA without dropout, padding mask included."""
    for m in tiny.modules():
        if isinstance(m, model.Dropout):
            m.p = 0.0
    ids, mask_, types = random_batch(tiny.config.vocab_size, tiny.config.pad_token_id, [9, 3, 6])
    want = tiny.eval()(ids, mask_, types)
    for m in tiny.modules():
        if isinstance(m, model.SelfAttention):
            m.dropout_p = 1e-9
    model.set_dropout_masks(tiny, "fast")
    got = tiny.train()(ids, mask_, types)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    model.set_dropout_masks(tiny, "torch")  # SDPA's own dropout path, p = 1e-9: the same
    torch.testing.assert_close(tiny(ids, mask_, types), want, rtol=1e-5, atol=1e-6)


def test_auto_is_fast_on_cpu_torch_on_gpu():
    assert model.dropout_masks("auto", torch.device("cpu")) == "fast"
    assert model.dropout_masks("auto", torch.device("cuda", 0)) == "torch"
    assert model.dropout_masks("torch", torch.device("cpu")) == "torch"
    cfg = train.resolve(train.parse_args(["--dataset", "acl"]), 1, torch.device("cpu"))
    assert cfg.dropout_masks == "fast"
    cfg = train.resolve(train.parse_args(["--dataset", "acl", "--dropout-masks", "torch"]), 1, torch.device("cpu"))
    assert cfg.dropout_masks == "torch"
