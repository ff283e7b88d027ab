"""memory.py: totals are the sum of their lines, the flash-attention path against what autograd
saves, and the figures docs/memory.md publishes against what the code computes now.

The page is parsed, not copied: its sample output of `memory.py --model roberta-base ...` must be
what the CLI prints today, and each number in its prose must be what `estimate` / `report_numbers`
/ the `--params 3e9` CLI give, at the precision the page prints. Change the code or the page
alone and this fails; change both together and it passes.
"""

import json
import re
import shlex

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

import memory
import model
from helpers import ROOT

ROBERTA_BASE_CONFIG = {  # config.json of FacebookAI/roberta-base on the Hub
    "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 514,
    "model_type": "roberta", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "type_vocab_size": 1, "vocab_size": 50265}
ROBERTA_BASE = model.Config.from_dict(ROBERTA_BASE_CONFIG)
SMALL = model.Config(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     max_position_embeddings=70)
FIELDS = ("weights", "master_weights", "gradients", "optimizer", "activations", "transient")

# --------------------------------------------------------------------------- totals


SETTINGS = [dict(precision=p, optimizer=o, checkpointing=c, **a)
            for p in memory.PRECISIONS for o in memory.OPTIMIZERS for c in (False, True)
            for a in ({}, {"bottleneck": 64}, {"bottleneck": 16, "placement": "pfeiffer", "freeze_layernorm": True})]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_estimate_total_is_the_sum_of_its_lines(device):
    for settings in SETTINGS:
        b = memory.estimate(ROBERTA_BASE, 16, 128, device=device, **settings)
        assert min(b.weights, b.gradients, b.optimizer, b.activations) > 0, settings
        assert (b.master_weights > 0) == (settings["precision"] in ("bf16", "fp16")), settings  # autocast: fp32 master
        assert b.total == sum(getattr(b, f) for f in FIELDS), settings
        assert b.activations == sum(b.terms.values()), settings
        assert b.optimizer >= b.gradients > 0, settings  # AdamW keeps 2 moments, SGD 1, both as wide as the grads


def test_measure_total_is_the_sum_of_its_lines():
    for settings in ({}, {"bottleneck": 16}, {"optimizer": "sgd", "precision": "pure-bf16"}):
        b = memory.measure(SMALL, 2, 16, **{"precision": "fp32", **settings})
        assert min(b.weights, b.gradients, b.optimizer, b.activations) > 0, settings
        assert b.total == sum(getattr(b, f) for f in FIELDS), settings


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows of the CLI output: label -> its value columns."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^  (\S.*?)\s{2,}(-?[\d.]+|-)\s+(\S.*)$", line)
        if m:
            rows[m[1]] = [m[2], *m[3].split()]
    return rows


def test_cli_total_row_is_the_sum_of_the_rows_above(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(ROBERTA_BASE_CONFIG))
    for extra in ([], ["--precision", "fp32", "--optimizer", "sgd"], ["--gradient-checkpointing", "--adapter-placement", "pfeiffer"]):
        memory.main(["--model", str(tmp_path), *extra])
        rows = _rows(capsys.readouterr().out)
        lines = [v for k, v in rows.items() if k.split(" (")[0] in
                 ("weights", "master weights", "gradients", "optimizer", "activations", "largest transient")]
        assert len(lines) == 6, rows
        for col in range(3):  # full, adapters, saving; each cell is rounded to 0.01 GB
            parts = sum(float(v[col]) for v in lines)
            assert abs(parts - float(rows["total"][col])) <= 6 * 0.005 + 1e-9, (extra, col)


# --------------------------------------------------------------------------- the flash-attention path, measured


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


_SMALL = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=70, attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("precision,bottleneck", [("fp32", None), ("bf16", None), ("pure-bf16", None), ("bf16", 8)])
def test_flash_path_equals_what_autograd_saves(kind, precision, bottleneck):
    """Without attention dropout the CPU runs SDPA's flash kernel, which saves what estimate's flash
    path derives (q, k, v, the output, the mask, the logsumexp): byte for byte."""
    cfg = model.Config(model_type=kind, hidden_dropout_prob=0.1, **_SMALL,
                       **(dict(type_vocab_size=1, pad_token_id=1) if kind == "roberta" else {}))
    est = memory.estimate(cfg, 3, 17, device="cpu", precision=precision, bottleneck=bottleneck)
    with _Ops() as ops:
        real = memory.measure(cfg, 3, 17, device="cpu", precision=precision, bottleneck=bottleneck)
    assert any("flash_attention" in n for n in ops.names), "the measured step did not run the flash kernel"
    assert est.terms["attention"] > 0
    assert real.activations == est.activations
    flash = memory.estimate(cfg, 3, 17, device="cpu", precision=precision, bottleneck=bottleneck, attention="flash")
    assert flash.activations == est.activations  # the same path, asked for by name


# --------------------------------------------------------------------------- the figures of docs/memory.md


def _memory_section() -> str:
    return (ROOT / "docs" / "memory.md").read_text()  # the README's memory section moved to its own page


def test_docs_sample_output_is_what_the_cli_prints(tmp_path, monkeypatch, capsys):
    """The block after the README's `memory.py --model roberta-base ...` command, run where
    roberta-base/ is a local folder holding roberta-base's config.json, as the README says."""
    section = _memory_section()
    command = next(line for line in section.splitlines() if line.startswith("python memory.py --model roberta-base"))
    argv = shlex.split(command.split("#")[0])[2:]
    after = section[section.index(command):]
    _, prose, block = after.split("```")[:3]  # the command's block ends, the prose, then the sample output
    assert "local copy of roberta-base's `config.json`" in prose
    expected = block.removeprefix("\n")
    (tmp_path / "roberta-base").mkdir()
    (tmp_path / "roberta-base" / "config.json").write_text(json.dumps(ROBERTA_BASE_CONFIG))
    monkeypatch.chdir(tmp_path)
    memory.main(argv)
    assert capsys.readouterr().out == expected


def _number(pattern: str, text: str) -> list[str]:
    m = re.search(pattern, text)
    assert m, f"README no longer says {pattern!r}"
    return list(m.groups())


def _same(readme: str, value: float) -> None:
    """`value` printed with as many decimals as the README's figure has."""
    decimals = len(readme.split(".")[1]) if "." in readme else 0
    assert f"{value:.{decimals}f}" == readme, (readme, value)


def test_docs_prose_figures(capsys):
    prose = " ".join(_memory_section().split())
    gb = 1e9
    rep = memory.report_numbers(3e9)
    full, w, g, adam, act = _number(r"takes (\S+) GB \((\S+) GB fp16 weights \+ (\S+) GB gradients \+ (\S+) GB Adam "
                                    r"\+ (\S+) GB assumed activations\)", prose)
    for text, key in ((full, "full"), (w, "weights"), (g, "gradients"), (adam, "optimizer"), (act, "activations")):
        _same(text, rep[key] / gb)
    (peft,) = _number(r"PEFT needs (\S+) GB", prose)
    saved, share = _number(r"so it saves (\S+) GB, (\S+)%", prose)
    _same(peft, rep["peft"] / gb)
    _same(saved, rep["saved"] / gb)
    _same(share, 100 * rep["saved_share"])

    layers, hidden, params, batch, length, full_gb, adapters_gb, saving, fewer = _number(
        r"a generic (\d+)-layer, (\d+)-wide encoder of (\S+) parameters at batch (\d+) x (\d+) tokens "
        r"\(bf16, AdamW\) full fine-tuning needs (\S+) GB and adapters (\S+) GB, a saving of (\S+)%; .*? "
        r"the adapters' activations are (\S+)% smaller", prose)
    cfg = memory.generic_config(3e9)
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (int(layers), int(hidden))
    assert float(params) == float(f"{memory.count_parameters(cfg).total:.3g}")
    kw = dict(precision="bf16", optimizer="adamw", params=3e9)
    f = memory.estimate(cfg, int(batch), int(length), **kw)
    a = memory.estimate(cfg, int(batch), int(length), bottleneck=64, **kw)
    _same(full_gb, f.total / gb)
    _same(adapters_gb, a.total / gb)
    _same(saving, 100 * (f.total - a.total) / f.total)
    _same(fewer, 100 * (f.activations - a.activations) / f.activations)

    # and the CLI a reader runs prints the same
    memory.main(["--params", "3e9"])
    out = capsys.readouterr().out
    total = _rows(out)["total"]
    assert total[:4] == [f"{rep['full'] / gb:.2f}", f"{f.total / gb:.2f}", f"{rep['peft'] / gb:.2f}",
                         f"{a.total / gb:.2f}"]
    _same(full_gb, float(total[1]))
    _same(adapters_gb, float(total[3]))
    assert f"= {saving}% of {total[1]} GB" in out and f"adapters keep {fewer}% fewer" in out
    assert f"PEFT saves {rep['saved'] / gb:.2f} GB = {share}%" in out

