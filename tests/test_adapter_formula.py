"""Adapters, checked against what the paper writes down and against the files train.py reads and writes.

1. Each wrapped sub-layer computes LayerNorm(x_res + adapter(dropout(dense(h)))) with
   adapter(x) = x + up(gelu(down(x))) (Houlsby et al. 2019, Fig. 2; google-research/adapter-bert),
   recomputed here with torch.nn.functional from the module's own weight tensors. The adapters get
   weights of std 0.5 first, so that they change the numbers (their near-identity init would let an
   adapter in the wrong place pass), and the test checks that the wrong places give other numbers.
2. `train.py --adapter` for a few steps moves exactly the trained set: every frozen tensor stays
   bit-identical to the base checkpoint's file, every trainable one moves, and `--save` writes
   exactly the trainable tensors.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import adapter
import model
import train
from helpers import random_batch, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

P_HIDDEN = 0.25  # dropout on, so that the formula's dropout(dense(h)) is a real step


def _model(kind: str, placement: str) -> model.Classifier:
    cfg = model.Config(model_type=kind, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, initializer_range=0.2, hidden_dropout_prob=P_HIDDEN,
                       attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5,
                       **(dict(max_position_embeddings=66, pad_token_id=1, type_vocab_size=1) if kind == "roberta"
                          else dict(max_position_embeddings=64)))
    torch.manual_seed(0)
    m = adapter.add_adapters(model.Classifier(cfg, 3), bottleneck=8, placement=placement, verbose=False)
    with torch.no_grad():  # adapters that matter: far from the identity
        for a in m.modules():
            if isinstance(a, adapter.Adapter):
                for p in a.parameters():
                    p.normal_(0, 0.5)
        for name, p in m.named_parameters():
            if "LayerNorm" in name:  # and LayerNorms that are not the identity affine map
                p.add_(0.3 * torch.randn_like(p))
    return m


def _sites(m: model.Classifier, placement: str) -> list[torch.nn.Module]:
    """Where the adapters must be: after attention and after the FFN (houlsby), after the FFN only (pfeiffer)."""
    sites = []
    for layer in m.encoder.layer:
        if placement == "houlsby":
            sites.append(layer.attention.output)
        else:
            assert type(layer.attention.output) is model.AddNorm
        sites.append(layer.output)
    assert all(hasattr(s, "adapter") for s in sites)
    assert sum(isinstance(a, adapter.Adapter) for a in m.modules()) == len(sites)
    return sites


def _record(sites):
    """Forward hooks: per site, the (h, x_res) it was called with, its output, and its dropout's output."""
    calls, handles = {}, []
    for i, site in enumerate(sites):
        def on_site(module, args, out, i=i):
            calls.setdefault(i, {}).update(h=args[0], residual=args[1], out=out)

        def on_dropout(module, args, out, i=i):
            calls.setdefault(i, {}).update(dropped=out)
        handles += [site.register_forward_hook(on_site), site.dropout.register_forward_hook(on_dropout)]
    return calls, handles


def _adapter(a: adapter.Adapter, x: torch.Tensor) -> torch.Tensor:
    return x + F.linear(F.gelu(F.linear(x, a.down.weight, a.down.bias)), a.up.weight, a.up.bias)


def _layernorm(site, x: torch.Tensor) -> torch.Tensor:
    ln = site.LayerNorm
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_each_sublayer_is_the_houlsby_formula(kind, placement, training):
    m = _model(kind, placement).train(training)
    sites = _sites(m, placement)
    calls, handles = _record(sites)
    ids, mask, _ = random_batch(99, m.config.pad_token_id, [9, 5, 7], seed=1)
    torch.manual_seed(3)
    with torch.no_grad():
        m(ids, mask)
    for h in handles:
        h.remove()
    assert len(calls) == len(sites)
    for i, site in enumerate(sites):
        c = calls[i]
        projected = F.linear(c["h"], site.dense.weight, site.dense.bias)
        kept = c["dropped"] != 0
        if training:  # dropout(dense(h)): each element dropped, or kept and scaled by 1 / (1 - p)
            assert 0.6 < kept.float().mean() < 0.9, "about 1 - p of the elements are kept"
            torch.testing.assert_close(c["dropped"][kept], projected[kept] / (1 - P_HIDDEN), atol=1e-6, rtol=1e-5)
        else:
            torch.testing.assert_close(c["dropped"], projected, atol=1e-6, rtol=0)
        want = _layernorm(site, c["residual"] + _adapter(site.adapter, c["dropped"]))
        torch.testing.assert_close(c["out"], want, atol=1e-5, rtol=0)
        # the formula has power: no adapter, or the adapter after the LayerNorm, give other numbers
        assert (_layernorm(site, c["residual"] + c["dropped"]) - want).abs().max() > 0.1
        assert (_adapter(site.adapter, _layernorm(site, c["residual"] + c["dropped"])) - want).abs().max() > 0.1


# ----------------------------------------------------------------------------- train.py moves only the trained set


def _trained(name: str, freeze_layernorm: bool) -> bool:
    """Houlsby's trained set, from the names: adapters, LayerNorms (unless frozen), the head (BERT: + pooler)."""
    return (".adapter." in name or name.startswith(("classifier.", "pooler."))
            or (".LayerNorm." in name and not freeze_layernorm))


@pytest.mark.parametrize("kind,placement,freeze_layernorm", [("bert", "houlsby", False), ("roberta", "pfeiffer", True)])
def test_train_py_moves_exactly_the_trained_set(tmp_path, monkeypatch, kind, placement, freeze_layernorm):
    enc = write_tiny_encoder(tmp_path / "enc", kind=kind)
    task = write_keyword_task(tmp_path / "data", sizes=(64, 16, 16))
    seen = []  # the model train.py builds, and its tensors before the first step
    original = adapter.add_adapters

    def add_adapters(net, *args, **kwargs):
        out = original(net, *args, **kwargs)
        seen.append((out, {n: p.detach().clone() for n, p in out.named_parameters()}))
        return out
    monkeypatch.setattr(adapter, "add_adapters", add_adapters)
    argv = ["--dataset", "acl", "--model", str(enc), "--data-dir", str(task), "--out", str(tmp_path / "runs"),
            "--epochs", "1", "--batch-size", "16", "--lr", "1e-2", "--max-length", "64", "--save",
            "--adapter", "--bottleneck", "8", "--adapter-placement", placement,
            *(["--freeze-layernorm"] if freeze_layernorm else [])]
    (result,) = train.main(argv)
    assert result["steps"] == 4
    (net, before), = seen
    checkpoint = model.hub_to_ours(load_file(enc / "model.safetensors"), net.config)

    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if _trained(n, freeze_layernorm)}
    for name, p in net.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"trainable {name} did not move"
        else:
            assert torch.equal(p, checkpoint[name]), f"frozen {name} is not the checkpoint's"
            assert p.grad is None, f"frozen {name} holds a gradient"
    assert result["trainable_params"] == sum(p.numel() for n, p in net.named_parameters() if n in trainable)

    saved_dir = tmp_path / "runs" / "acl" / "enc-adapter" / "seed1" / "model"
    saved = load_file(saved_dir / adapter.WEIGHTS_FILE)
    assert set(saved) == trainable
    assert all(torch.equal(saved[n], p) for n, p in net.named_parameters() if n in trainable)
    meta = json.loads((saved_dir / adapter.CONFIG_FILE).read_text())
    assert meta["adapter"] == {"bottleneck": 8, "placement": placement, "freeze_layernorm": freeze_layernorm,
                               "init_scale": 1e-3}
