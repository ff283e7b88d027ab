"""memory.py: `estimate` against `measure` (state terms exactly, activations within 5%), the
premise that frozen Linears keep no input, the report's numbers, bad input, and the CLI.

Big shapes run on the meta device (no memory, shapes only). Autocast has no meta backend, so the
AMP checks use tiny configs on CPU, with `device="cpu"` in `estimate` so both count the same kernels.
"""

import re

import pytest
import torch
from torch import nn

import adapter
import memory
import model
import train

ROBERTA_BASE = model.Config(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                            num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                            type_vocab_size=1, pad_token_id=1)
BERT_LARGE = model.Config(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096)
_SMALL = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=70)
TINY = {"bert": model.Config(**_SMALL),
        "roberta": model.Config(model_type="roberta", type_vocab_size=1, pad_token_id=1, **_SMALL)}
STATE = ("weights", "master_weights", "gradients", "optimizer")


def both(cfg, batch, length, device, step=True, **kw):
    """(estimate, measure) for the same settings and the same kernels."""
    return (memory.estimate(cfg, batch, length, device=device, **kw),
            memory.measure(cfg, batch, length, device=device, step=step, **kw))


# --------------------------------------------------------------------------- parameters and states


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("settings", [{}, {"bottleneck": 16}, {"bottleneck": 8, "placement": "pfeiffer"},
                                      {"bottleneck": 8, "freeze_layernorm": True}])
def test_count_parameters_is_the_real_model(kind, settings):
    with torch.device("meta"):
        net = model.Classifier(TINY[kind], 3)
    if settings:
        adapter.add_adapters(net, settings["bottleneck"], settings.get("placement", "houlsby"),
                             settings.get("freeze_layernorm", False), verbose=False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    count = memory.count_parameters(TINY[kind], 3, **settings)
    assert count.total == sum(p.numel() for p in net.parameters())
    assert count.trainable == sum(p.numel() for p in trainable)
    assert count.trainable_tensors == len(trainable)


@pytest.mark.parametrize("precision,optimizer", [("fp32", "adamw"), ("pure-bf16", "sgd")])
@pytest.mark.parametrize("bottleneck", [None, 64])
def test_state_terms_equal_the_real_objects_after_a_step(precision, optimizer, bottleneck):
    est, real = both(ROBERTA_BASE, 2, 16, "meta", precision=precision, optimizer=optimizer, bottleneck=bottleneck)
    assert real.gradients > 0 and real.optimizer > 0  # the step really ran and made state
    for name in STATE:
        assert getattr(est, name) == getattr(real, name), name


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("bottleneck", [None, 8])
def test_amp_weight_copies_and_states_exact(kind, precision, bottleneck):
    """Under autocast the saved 16-bit weight copies are the `weights` line, fp32 params the master."""
    est, real = both(TINY[kind], 3, 17, "cpu", precision=precision, bottleneck=bottleneck)
    assert real.weights > 0 and real.master_weights == 4 * real.params
    for name in STATE:
        assert getattr(est, name) == getattr(real, name), name
    assert real.activations == pytest.approx(est.activations, rel=0.05)


def test_amp_costs_16_bytes_per_parameter_before_activations():
    est = memory.estimate(memory.generic_config(3e9), 1, 128, params=3e9)
    assert est.master_weights + est.gradients + est.optimizer == pytest.approx(48e9, rel=1e-6)


# --------------------------------------------------------------------------- activations


@pytest.mark.parametrize("cfg", [ROBERTA_BASE, BERT_LARGE], ids=["roberta-base", "bert-large"])
@pytest.mark.parametrize("batch,length", [(8, 128), (32, 64), (2, 512)])
@pytest.mark.parametrize("bottleneck", [None, 64])
def test_activations_match_what_autograd_saves(cfg, batch, length, bottleneck):
    est, real = both(cfg, batch, length, "meta", step=False, precision="fp32", bottleneck=bottleneck)
    assert real.activations / est.activations == pytest.approx(1, abs=0.05)


@pytest.mark.parametrize("settings", [{"precision": "pure-bf16"}, {"checkpointing": True},
                                      {"bottleneck": 64, "checkpointing": True},
                                      {"bottleneck": 32, "placement": "pfeiffer", "freeze_layernorm": True}])
def test_activations_match_in_other_settings(settings):
    est, real = both(ROBERTA_BASE, 4, 128, "meta", step=False, **{"precision": "fp32", **settings})
    assert real.activations / est.activations == pytest.approx(1, abs=0.05)


def test_adapters_and_checkpointing_shrink_activations():
    full = memory.estimate(ROBERTA_BASE, 64, 128)
    assert memory.estimate(ROBERTA_BASE, 64, 128, bottleneck=64).activations < 0.9 * full.activations
    assert memory.estimate(ROBERTA_BASE, 64, 128, checkpointing=True).activations < 0.2 * full.activations


def test_frozen_linear_keeps_no_input():
    """The premise of the adapter activation term: autograd saves a Linear's input only for its
    weight's gradient. If a PyTorch release changes this, adapters stop saving activations."""
    saved = []
    lin, x = nn.Linear(8, 4), torch.randn(3, 8, requires_grad=True)
    lin.requires_grad_(False)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lin(x)
    assert [tuple(t.shape) for t in saved] == [(8, 4)]  # the weight (transposed), not x


# --------------------------------------------------------------------------- the report


def test_report_numbers_under_its_own_assumptions():
    rep = memory.report_numbers(3e9)
    assert rep["full"] == pytest.approx(30e9)
    assert rep["peft"] == pytest.approx(12.12e9)
    assert rep["saved"] == pytest.approx(17.88e9)
    assert rep["saved_share"] == pytest.approx(0.60, abs=0.005)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": -4}, "batch_size"), ({"seq_len": 0}, "seq_len"),
    ({"bottleneck": 0}, "bottleneck"), ({"bottleneck": -64}, "bottleneck"), ({"seq_len": 600}, "position table"),
    ({"precision": "amp-fp16"}, "fp16"), ({"optimizer": "adam"}, "adamw"), ({"attention": "xformers"}, "flash"),
    ({"device": "tpu"}, "cuda"), ({"num_labels": 1}, "num_labels"), ({"params": -1}, "params"),
])
def test_bad_input_is_a_clear_error(kwargs, message):
    args = {"batch_size": 8, "seq_len": 128, **kwargs}
    with pytest.raises(ValueError, match=message):
        memory.estimate(ROBERTA_BASE, args.pop("batch_size"), args.pop("seq_len"), **args)


def test_measure_refuses_autocast_on_meta():
    with pytest.raises(ValueError, match="meta"):
        memory.measure(ROBERTA_BASE, 2, 16, precision="bf16", device="meta")


def test_generic_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="params"):
        memory.generic_config(0)
    with pytest.raises(ValueError, match="multiple"):
        memory.generic_config(1e9, hidden=1000, heads=3)


# --------------------------------------------------------------------------- CLI


def test_cli_params_prints_both_accountings(capsys):
    memory.main(["--params", "3e9"])
    out = capsys.readouterr().out
    for text in ("30.00", "12.12", "17.88", "59.6%", "master weights", "Why the columns differ"):
        assert text in out


def test_cli_model_prints_full_vs_adapters(capsys, minilm_dir):
    memory.main(["--model", str(minilm_dir), "--batch-size", "64", "--max-length", "128", "--bottleneck", "64"])
    out = capsys.readouterr().out
    assert "adapters-64" in out and "adapters save" in out and "22.7M parameters" in out


@pytest.mark.parametrize("argv,message", [
    (["--params", "3e9", "--precision", "fp8"], "invalid choice"),
    (["--params", "3e9", "--batch-size", "0"], "batch_size"),
    (["--model", "/no/such/dir"], "config.json"),
])
def test_cli_errors(capsys, argv, message):
    with pytest.raises(SystemExit):
        memory.main(argv)
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- one vocabulary with train.py


def _cli(capsys, argv):
    memory.main(argv)
    return capsys.readouterr()


def test_cli_takes_train_py_adapter_flags_and_old_spellings_are_one_line_errors(capsys, minilm_dir):
    """train.py's --bottleneck and --adapter-placement (and its --adapter switch, which changes nothing
    here); memory.py's old spellings are refused in one line that names the new flag (no compatibility layer)."""
    base = ["--model", str(minilm_dir)]
    new = _cli(capsys, [*base, "--adapter", "--bottleneck", "32", "--adapter-placement", "pfeiffer"])
    assert new.err == "" and "adapters-32" in new.out
    for old, says in ((["--adapter", "32"], "--adapter 32 is now --bottleneck 32"),
                      (["--placement", "pfeiffer"], "--placement is now --adapter-placement"),
                      (["--seq-len", "128"], "--seq-len is now --max-length"),
                      (["--checkpointing"], "--checkpointing is now --gradient-checkpointing")):
        with pytest.raises(SystemExit) as e:
            memory.main([*base, *old])
        assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(f": error: {says}")
    peft = memory.estimate(model.load_config(minilm_dir), 64, 128, bottleneck=32, placement="pfeiffer")
    (trainable,) = [line.split() for line in new.out.splitlines() if line.startswith("  trainable parameters")]
    assert trainable[3] == f"{peft.trainable / 1e6:.2f}M"  # the placement reached estimate
    assert _cli(capsys, [*base, "--bottleneck", "32"]).out != new.out  # houlsby, the default, is another table


def test_cli_precision_uses_train_py_names_with_train_py_meaning(capsys, minilm_dir):
    """train.py's bf16 and fp16 are autocast over fp32 weights, here too; the whole model in bf16 is
    pure-bf16, which keeps no fp32 master copy. The old amp-* names are refused."""
    base = ["--model", str(minilm_dir)]
    for name in ("bf16", "fp16", "fp32"):
        assert f"; {name}, adamw," in _cli(capsys, [*base, "--precision", name]).out.splitlines()[0]
    with pytest.raises(SystemExit):
        memory.main([*base, "--precision", "amp-bf16"])
    assert "invalid choice: 'amp-bf16'" in capsys.readouterr().err
    master = {}
    for name in ("bf16", "pure-bf16"):
        (row,) = [line for line in _cli(capsys, [*base, "--precision", name]).out.splitlines()
                  if line.startswith("  master weights")]
        master[name] = float(row.split()[-3])  # the full fine-tuning column
    assert master["bf16"] > 0 and master["pure-bf16"] == 0
    full = {n: memory.estimate(ROBERTA_BASE, 8, 128, precision=n) for n in ("bf16", "fp16", "pure-bf16")}
    assert full["bf16"].total == full["fp16"].total > full["pure-bf16"].total  # bf16 is autocast, not pure


@pytest.mark.parametrize("name", ["amp-bf16", "amp-fp16"])
def test_estimate_refuses_the_old_precision_names(name):
    with pytest.raises(ValueError, match=f"unknown precision '{name}'; choose one of: fp32, bf16, fp16, pure-bf16"):
        memory.estimate(ROBERTA_BASE, 8, 128, precision=name)


def test_every_cli_offers_the_placements_adapter_py_defines(capsys, monkeypatch):
    """The placement names are defined once (adapter.PLACEMENTS): memory.py and train.py offer exactly
    those, and memory.py can estimate each."""
    monkeypatch.setenv("COLUMNS", "1000")
    for parse in (memory.main, train.parse_args):
        with pytest.raises(SystemExit):
            parse(["--help"])
        assert set(re.findall(r"--adapter-placement \{([\w,-]+)\}", capsys.readouterr().out)) == {
            ",".join(adapter.PLACEMENTS)}, parse
    for placement in adapter.PLACEMENTS:
        assert memory.estimate(ROBERTA_BASE, 8, 128, bottleneck=8, placement=placement).trainable > 0


# --------------------------------------------------------------------------- memory.py's wording


def test_memory_output_reads_like_the_report(capsys, minilm_dir):
    memory.main(["--params", "3e9"])
    out = capsys.readouterr().out
    assert "3 billion parameters" in out and "2.97 billion parameters" in out
    assert "e+09" not in out and "billed" not in out and "report_numbers" not in out
    memory.main(["--model", str(minilm_dir)])
    out = capsys.readouterr().out
    assert "-0.00 " not in out + " "
    cfg = model.load_config(minilm_dir)
    full = memory.estimate(cfg, 64, 128, precision="bf16")
    peft = memory.estimate(cfg, 64, 128, precision="bf16", bottleneck=64)
    (weights_row,) = [line for line in out.splitlines() if line.lstrip().startswith("weights")]
    saving = float(weights_row.split()[-1])
    assert saving < 0 and saving == pytest.approx((full.weights - peft.weights) / 1e9, abs=5e-4)
