"""adapter.py: near-identity init, what trains and what stays frozen, the closed-form trainable
count, save/load round trip and its refusals, DDP-style gradient coverage, bf16 autocast, meta device.

The bases are tiny random `model.Classifier`s saved with `model.save_pretrained` and loaded back
with `model.from_pretrained` (the path eval.py takes). There is no transformers oracle for
adapters, so these tests do not import it (that import alone would triple their runtime).
"""

import json

import pytest
import torch
import torch.nn.functional as F

import adapter
import eval as evaluation
import model
from helpers import random_batch

KINDS = ["bert", "roberta"]
PLACEMENTS = ["houlsby", "pfeiffer"]
NUM_LABELS = 3


def tiny_config(kind: str) -> model.Config:
    """The sizes of helpers.tiny_hf_config, as our Config."""
    common = dict(model_type=kind, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, initializer_range=0.2)
    if kind == "bert":
        return model.Config(**common, max_position_embeddings=64)
    return model.Config(**common, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)


def tiny_base(kind: str, seed: int = 0) -> model.Classifier:
    torch.manual_seed(seed)
    return model.Classifier(tiny_config(kind), NUM_LABELS).eval()


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    """{(kind, seed): directory} of tiny base checkpoints in the Hub layout."""
    dirs = {}
    for kind in KINDS:
        for seed in (0, 1):
            d = tmp_path_factory.mktemp(f"{kind}{seed}")
            model.save_pretrained(tiny_base(kind, seed), d)
            dirs[kind, seed] = str(d)
    return dirs


def batch(cfg: model.Config, seed: int = 0):
    ids, mask, types = random_batch(cfg.vocab_size, cfg.pad_token_id, [7, 5, 3], seed=seed,
                                    pair_at=None if cfg.roberta else 2)
    return ids, mask, None if cfg.roberta else types


def labels():
    return torch.tensor([0, 2, 1])


def train_steps(m: model.Classifier, steps: int = 3) -> None:
    """A few AdamW steps on cross-entropy, with the optimizer built as train.py does: trainable only."""
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        loss = F.cross_entropy(m(*batch(m.config, seed=step)), labels())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    m.eval()


def is_trained(name: str, freeze_layernorm: bool) -> bool:
    """The freezing rule, written from names so that it checks the module-based code independently."""
    head = name.startswith(("classifier.", "pooler."))
    layernorm = ".LayerNorm." in name and not freeze_layernorm
    return head or layernorm or ".adapter." in name


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_near_identity_at_init(kind, placement):
    base = tiny_base(kind)
    x = batch(base.config)
    with torch.no_grad():
        before = base(*x)
        adapter.add_adapters(base, bottleneck=8, placement=placement, verbose=False)
        after = base(*x)
        assert before.abs().max() > 0.1  # the logits are not trivially zero
        assert 0 < (after - before).abs().max() < 1e-3
        for a in base.modules():
            if isinstance(a, adapter.Adapter):
                a.up.weight.zero_()
        assert torch.equal(base(*x), before)  # zero up-projection (biases start at zero): exactly the base


@pytest.mark.parametrize("kind", KINDS)
def test_placement_and_keys(kind):
    m = adapter.add_adapters(tiny_base(kind), bottleneck=4, verbose=False)
    base_keys = set(tiny_base(kind).state_dict())
    adapter_keys = set(m.state_dict()) - base_keys
    assert base_keys <= set(m.state_dict())  # a base checkpoint's keys are untouched
    assert adapter_keys == {f"encoder.layer.{i}.{where}.adapter.{proj}.{p}" for i in range(2)
                            for where in ("attention.output", "output") for proj in ("down", "up")
                            for p in ("weight", "bias")}
    p = adapter.add_adapters(tiny_base(kind), bottleneck=4, placement="pfeiffer", verbose=False)
    assert all(".attention." not in k for k in set(p.state_dict()) - base_keys)
    assert isinstance(p.encoder.layer[0].attention.output, model.AddNorm)


def test_adapter_follows_dtype_and_bad_arguments():
    m = adapter.add_adapters(tiny_base("bert").double(), bottleneck=4, verbose=False)
    assert m.encoder.layer[1].output.adapter.down.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="already has adapters"):
        adapter.add_adapters(m, verbose=False)
    with pytest.raises(ValueError, match="placement"):
        adapter.add_adapters(tiny_base("bert"), placement="parallel", verbose=False)
    with pytest.raises(ValueError, match="bottleneck"):
        adapter.add_adapters(tiny_base("bert"), bottleneck=0, verbose=False)


# --------------------------------------------------------------------------- freezing and counting


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("freeze_layernorm", [False, True])
def test_trainable_count_closed_form(kind, placement, freeze_layernorm, capsys):
    base = tiny_base(kind)
    base_total = sum(p.numel() for p in base.parameters())
    m = adapter.add_adapters(base, bottleneck=8, placement=placement, freeze_layernorm=freeze_layernorm)
    H, L, K, b = 32, 2, NUM_LABELS, 8
    per_adapter = H * b + b + b * H + H  # down weight + bias, up weight + bias
    adapters = L * (2 if placement == "houlsby" else 1) * per_adapter
    layernorms = 0 if freeze_layernorm else 2 * H * (1 + 2 * L)  # embeddings LN + two per layer
    head = (H * H + H) + (H * K + K)  # BERT: pooler + classifier; RoBERTa: classifier.dense + out_proj
    trainable, total = adapter.trainable_parameters(m)
    assert trainable == adapters + layernorms + head
    assert total == base_total + adapters
    assert f"trainable {trainable:,} of {total:,} parameters" in capsys.readouterr().out


def test_meta_device_roberta_base(capsys):
    """memory.py builds full-size models on the meta device; add_adapters must work there too."""
    with torch.device("meta"):
        m = model.Classifier(model.Config(model_type="roberta", vocab_size=50265, max_position_embeddings=514,
                                          pad_token_id=1, type_vocab_size=1, layer_norm_eps=1e-5), num_labels=3)
    adapter.add_adapters(m, bottleneck=64)
    assert m.encoder.layer[0].output.adapter.up.weight.is_meta
    # roberta-base: 124,055,040 encoder + 592,899 head; adapters 24 * 99,136; LayerNorms 25 * 1,536
    assert capsys.readouterr().out.strip() == (
        "adapters: houlsby, bottleneck 64: trainable 3,010,563 of 127,027,203 parameters (2.37%)")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("freeze_layernorm", [False, True])
def test_training_moves_only_trainable_tensors(kind, placement, freeze_layernorm):
    m = adapter.add_adapters(tiny_base(kind), bottleneck=8, placement=placement,
                             freeze_layernorm=freeze_layernorm, verbose=False)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    train_steps(m)
    for name, p in m.named_parameters():
        assert p.requires_grad == is_trained(name, freeze_layernorm), name
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{name} did not change"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
            assert p.grad is None, f"frozen {name} has a gradient"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("freeze_layernorm", [False, True])
def test_every_trainable_parameter_gets_a_gradient(kind, placement, freeze_layernorm):
    """What DDP's unused-parameter check needs: one forward + backward reaches every trainable tensor."""
    m = adapter.add_adapters(tiny_base(kind), bottleneck=8, placement=placement,
                             freeze_layernorm=freeze_layernorm, verbose=False).train()
    F.cross_entropy(m(*batch(m.config)), labels()).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert p.grad is None, name


def test_ddp_without_find_unused_parameters(tmp_path):
    """Real DDP, one process: its reducer raises on the next iteration if a trainable parameter went
    unused (checked by hand: adding an unused Linear makes this test fail)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for kind in KINDS:
            for placement in PLACEMENTS:
                m = adapter.add_adapters(tiny_base(kind), bottleneck=8, placement=placement, verbose=False)
                ddp = DistributedDataParallel(m.train())  # find_unused_parameters=False, the default
                for step in range(2):
                    F.cross_entropy(ddp(*batch(m.config, seed=step)), labels()).backward()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_forward_backward(kind):
    m = adapter.add_adapters(tiny_base(kind), bottleneck=8, verbose=False)
    x = batch(m.config)
    with torch.no_grad():
        fp32 = m(*x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(*x)
        loss = F.cross_entropy(logits, labels())
    loss.backward()
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), fp32, atol=0.1, rtol=0.05)
    for name, p in m.named_parameters():
        assert p.dtype == torch.float32, name  # autocast computes in bf16, the weights stay fp32
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name


# --------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("placement,freeze_layernorm", [("houlsby", False), ("pfeiffer", True)])
def test_save_load_round_trip(kind, placement, freeze_layernorm, base_dirs, tmp_path):
    base = base_dirs[kind, 0]
    m = adapter.add_adapters(model.from_pretrained(base, NUM_LABELS), bottleneck=8, placement=placement,
                             freeze_layernorm=freeze_layernorm, verbose=False)
    train_steps(m)
    adapter.save_adapters(m, tmp_path / "run", base=base)
    assert adapter.is_adapter_dir(tmp_path / "run") and not adapter.is_adapter_dir(base)

    from safetensors.torch import load_file
    saved = load_file(tmp_path / "run" / adapter.WEIGHTS_FILE)
    assert set(saved) == {n for n, p in m.named_parameters() if p.requires_grad}  # only what was trained
    meta = json.loads((tmp_path / "run" / adapter.CONFIG_FILE).read_text())
    assert meta["base"] == base and meta["num_labels"] == NUM_LABELS and meta["model_type"] == kind
    assert meta["adapter"]["bottleneck"] == 8 and meta["adapter"]["placement"] == placement

    x = batch(m.config)
    with torch.no_grad():
        expected = m(*x)
        loaded = adapter.from_pretrained(tmp_path / "run").eval()
        assert torch.equal(loaded(*x), expected)
        again = adapter.load_adapters(model.from_pretrained(base, NUM_LABELS), tmp_path / "run").eval()
        assert torch.equal(again(*x), expected)
    assert loaded.adapter_config == m.adapter_config
    assert adapter.trainable_parameters(loaded) == adapter.trainable_parameters(m)


@pytest.fixture(scope="module")
def saved_bert(base_dirs, tmp_path_factory):
    """A BERT adapter checkpoint (houlsby, bottleneck 4) on base ("bert", 0)."""
    d = tmp_path_factory.mktemp("bert-adapter")
    m = adapter.add_adapters(model.from_pretrained(base_dirs["bert", 0], NUM_LABELS), bottleneck=4, verbose=False)
    adapter.save_adapters(m, d, base=base_dirs["bert", 0])
    return d


def test_load_onto_other_weights_fails(saved_bert, base_dirs):
    other = model.from_pretrained(base_dirs["bert", 1], NUM_LABELS)  # same shapes, other weights
    with pytest.raises(ValueError, match="other base weights"):
        adapter.load_adapters(other, saved_bert)
    with pytest.raises(ValueError, match="other base weights"):
        adapter.from_pretrained(saved_bert, base=base_dirs["bert", 1])


@pytest.mark.parametrize("name", ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                                  "encoder.layer.0.attention.self.qkv.weight", "encoder.layer.1.output.dense.bias"])
def test_any_frozen_tensor_changed_is_other_base_weights(saved_bert, base_dirs, name):
    """The fingerprint covers every frozen parameter (adapter.base_fingerprint's docstring), embeddings included:
    one element changed by 1e-3 anywhere in the frozen base is another base."""
    other = model.from_pretrained(base_dirs["bert", 0], NUM_LABELS)
    with torch.no_grad():
        other.get_parameter(name).view(-1)[0] += 1e-3
    with pytest.raises(ValueError, match="other base weights"):
        adapter.load_adapters(other, saved_bert)


def test_load_onto_other_architecture_or_labels_fails(saved_bert, base_dirs):
    with pytest.raises(ValueError, match="model_type=bert, but this model has model_type=roberta"):
        adapter.load_adapters(model.from_pretrained(base_dirs["roberta", 0], NUM_LABELS), saved_bert)
    with pytest.raises(ValueError, match="num_labels=3, but this model has num_labels=4"):
        adapter.load_adapters(tiny_base_with_labels(4), saved_bert)


def tiny_base_with_labels(n: int) -> model.Classifier:
    torch.manual_seed(0)
    return model.Classifier(tiny_config("bert"), n)


@pytest.mark.parametrize("settings,differs", [
    (dict(bottleneck=8), "bottleneck=4"),
    (dict(bottleneck=4, placement="pfeiffer"), "placement='houlsby'"),
    (dict(bottleneck=4, freeze_layernorm=True), "freeze_layernorm=False"),
])
def test_load_with_other_settings_fails(saved_bert, base_dirs, settings, differs):
    m = adapter.add_adapters(model.from_pretrained(base_dirs["bert", 0], NUM_LABELS), verbose=False, **settings)
    with pytest.raises(ValueError, match=f"saved with {differs}"):
        adapter.load_adapters(m, saved_bert)


def test_load_checks_saved_keys(saved_bert, tmp_path):
    """Every trainable tensor must be in the file, and nothing else."""
    import shutil

    from safetensors.torch import load_file, save_file
    for edit, message in [(lambda s: s.pop("classifier.bias"), "missing key 'classifier.bias'"),
                          (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra'")]:
        d = tmp_path / message.split()[0]
        shutil.copytree(saved_bert, d)
        state = load_file(d / adapter.WEIGHTS_FILE)
        edit(state)
        save_file(state, d / adapter.WEIGHTS_FILE)
        with pytest.raises(ValueError, match=message):
            adapter.from_pretrained(d)


def test_not_an_adapter_dir(base_dirs, tmp_path):
    assert not adapter.is_adapter_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        adapter.from_pretrained(base_dirs["bert", 0])
    with pytest.raises(ValueError, match="no adapters"):
        adapter.save_adapters(tiny_base("bert"), tmp_path, base="x")


# --------------------------------------------------------------------------- a portable adapter base


def test_adapter_config_records_the_alias_and_loads_it(minilm_dir, tmp_path):
    torch.manual_seed(0)
    net = adapter.add_adapters(model.from_pretrained(minilm_dir, num_labels=3), bottleneck=8, verbose=False)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # as if trained
    adapter.save_adapters(net, tmp_path / "ad", base=str(minilm_dir))  # what the README's old recipe passed
    assert adapter.read_config(tmp_path / "ad")["base"] == "minilm"
    loaded, tok = evaluation.load_model(tmp_path / "ad")  # the alias is resolved again when loading
    ids = torch.tensor([tok.encode("the soup was cold").ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids), net.eval()(ids), atol=0, rtol=0)
