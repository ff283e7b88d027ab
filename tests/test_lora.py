"""adapter.add_lora against PEFT (huggingface/peft) on transformers' models: forward, trained set, files both
ways, the merge, and train.py's trajectory against a PEFT + torch.optim.AdamW reference loop.

Our attention has one fused Q/K/V matmul, PEFT's three Linears; a LoRA on query must update exactly the
first third of our qkv output (a LoRA on the wrong slice, or on all three, changes the logits by far more
than the tolerance: the weights are drawn large here so that every LoRA matters).
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import adapter
import eval as evaluation
import model
import train
from helpers import random_batch, tiny_hf_model
from test_training_parity import (
    SIZES,
    Spy,
    argv,
    check_steps,
    check_weights,
    reference_run,
    write_checkpoint,
    write_keyword_task,
)

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread
ATOL = 1e-5


def peft_lora(hf, r=4, alpha=8, dropout=0.0, targets=("query", "value")):
    """PEFT's LoRA on a transformers classifier, with our head choice: BERT's pooler trained too."""
    from peft import LoraConfig, TaskType, get_peft_model
    head = ["classifier"] + (["pooler"] if hf.config.model_type == "bert" else [])
    return get_peft_model(hf, LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                                         target_modules=list(targets), modules_to_save=head))


def peft_key(name: str) -> str:
    """PEFT's parameter name -> the key it saves (adapter name and modules_to_save wrapper dropped)."""
    return name.replace(".default.", ".").replace(".modules_to_save.", ".").replace(".original_module.", ".")


def ours_and_peft(kind, tmp_path, targets=("query", "value"), dropout=0.0, seed=2):
    """(ours, PEFT's) with the same LoRA: our LoRA weights drawn large, then saved and loaded into PEFT's."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    tiny_hf_model(kind).save_pretrained(tmp_path / "base")
    ours = model.from_pretrained(tmp_path / "base")
    adapter.add_lora(ours, r=4, alpha=8, dropout=dropout, targets=targets, verbose=False)
    torch.manual_seed(seed)
    for n, p in ours.named_parameters():
        if p.requires_grad:
            nn.init.normal_(p, std=0.3)
    adapter.save_lora(ours, tmp_path / "lora", base=str(tmp_path / "base"))
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3,
                                                            attn_implementation="sdpa")
    return ours, PeftModel.from_pretrained(hf, tmp_path / "lora", is_trainable=True)


def logits(net, ids, mask, train_mode=False):
    net.train(train_mode)
    with torch.no_grad():
        if isinstance(net, model.Classifier):
            return net(ids, mask)
        return net(input_ids=ids, attention_mask=mask).logits


# ----------------------------------------------------------------------------- forward, trained set, files


@pytest.mark.parametrize("targets", [("query", "value"), ("key",), ("query", "key", "value")],
                         ids=["query-value", "key", "qkv"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_forward_equals_peft_in_eval_and_train_mode(tmp_path, kind, targets):
    """Our saved LoRA, loaded by peft.PeftModel onto transformers' model, gives our logits: eval mode (LoRA
    dropout 0.1, off in eval) and train mode with every dropout off. And it matters: without the LoRA, or
    with it on another slice, the logits move by far more than ATOL."""
    ours, theirs = ours_and_peft(kind, tmp_path, targets, dropout=0.1)
    ids, mask, _ = random_batch(99, ours.config.pad_token_id, [11, 6, 9], seed=1)
    want = logits(theirs, ids, mask)
    torch.testing.assert_close(logits(ours, ids, mask), want, atol=ATOL, rtol=0)
    with theirs.disable_adapter():
        assert (logits(theirs, ids, mask) - want).abs().max() > 100 * ATOL, "the LoRA changes nothing: no power"
    other = [t for t in adapter.LORA_TARGETS if t not in targets] or ["query"]
    moved, _ = ours_and_peft(kind, tmp_path / "other", tuple(other), dropout=0.1)
    assert (logits(moved, ids, mask) - want).abs().max() > 100 * ATOL
    for net in (ours, theirs):  # train mode, dropout off everywhere (the tiny config's 0.1 and the LoRA's)
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        for m in net.modules():
            if hasattr(m, "dropout_p"):
                m.dropout_p = 0.0
    theirs.base_model.model.config.attention_probs_dropout_prob = 0.0
    for layer in theirs.base_model.model.base_model.encoder.layer:
        layer.attention.self.dropout_prob = 0.0  # transformers' SDPA path reads this, not a Dropout module
    torch.testing.assert_close(logits(ours, ids, mask, train_mode=True), logits(theirs, ids, mask, train_mode=True),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_trained_set_is_the_lora_matrices_and_the_head(tmp_path, kind):
    """requires_grad and the gradients of one backward: exactly PEFT's trainable set (LoRA A and B of every
    targeted projection, the head; BERT's pooler, our choice, see adapter.freeze_base), nothing else;
    LayerNorms frozen. Our names map to PEFT's saved keys one to one."""
    ours, theirs = ours_and_peft(kind, tmp_path)
    want = {peft_key(n) for n, p in theirs.named_parameters() if p.requires_grad}
    saved = set(load_file(tmp_path / "lora" / "adapter_model.safetensors"))
    assert saved == want
    ids, mask, _ = random_batch(99, ours.config.pad_token_id, [8, 5], seed=1)
    nn.functional.cross_entropy(ours.train()(ids, mask), torch.tensor([0, 2])).backward()
    grads = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in ours.named_parameters() if p.requires_grad}
    assert len(grads) == len(want)
    assert all(".lora." in n or n.startswith(("classifier.", "pooler.")) for n in grads)
    assert sum(".lora." in n for n in grads) == 2 * 2 * 2  # 2 layers x query, value x A, B
    assert not any(p.requires_grad for m in ours.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_a_lora_peft_saved_loads_here(tmp_path, kind):
    """PEFT's own files (default modules_to_save: BERT's classifier only, its pooler stays the base's), by
    adapter.from_pretrained and by eval.py's load_model (base read from adapter_config.json)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification
    write_checkpoint(tmp_path / "base", kind)  # with tokenizer files, which eval.py loads too
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    theirs = get_peft_model(hf, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, lora_alpha=5, target_modules=["key", "value"]))
    torch.manual_seed(3)
    for n, p in theirs.named_parameters():
        if "lora_B" in n or "modules_to_save" in n:
            nn.init.normal_(p, std=0.3)
    theirs.save_pretrained(tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert adapter.is_adapter_dir(tmp_path / "peft") and adapter.is_peft_dir(tmp_path / "peft")
    ids, mask, _ = random_batch(hf.config.vocab_size, hf.config.pad_token_id, [11, 6, 9], seed=1)
    want = logits(theirs, ids, mask)
    loaded, _ = evaluation.load_model(tmp_path / "peft")
    assert loaded.lora_config.targets == ("key", "value") and loaded.lora_config.r == 2
    torch.testing.assert_close(logits(loaded, ids, mask), want, atol=ATOL, rtol=0)
    with theirs.disable_adapter():
        assert (logits(theirs, ids, mask) - want).abs().max() > 100 * ATOL


def test_peft_folders_this_encoder_cannot_run_are_refused(tmp_path):
    ours_and_peft("bert", tmp_path)
    cfg_path = tmp_path / "lora" / "adapter_config.json"
    good = json.loads(cfg_path.read_text())
    for change, words in [({"target_modules": ["dense"]}, "target_modules"), ({"use_dora": True}, "use_dora"),
                          ({"peft_type": "IA3"}, "IA3"), ({"base_model_name_or_path": None}, "--base")]:
        cfg_path.write_text(json.dumps({**good, **change}))
        with pytest.raises(adapter.UsageError, match=words):
            adapter.from_pretrained(tmp_path / "lora")
    cfg_path.write_text(json.dumps(good))
    state = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    from safetensors.torch import save_file
    save_file({k: v for k, v in state.items() if "classifier" not in k}, tmp_path / "lora" / "adapter_model.safetensors")
    with pytest.raises(adapter.UsageError, match="no classifier"):
        adapter.from_pretrained(tmp_path / "lora")


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_merged_lora_loads_in_transformers_alone(tmp_path, kind):
    """merge_lora folds W + (alpha / r) B A into the weights; save_pretrained's files then give
    transformers' plain model our LoRA model's logits."""
    from transformers import AutoModelForSequenceClassification
    ours, _ = ours_and_peft(kind, tmp_path, ("query", "key", "value"))
    ids, mask, _ = random_batch(99, ours.config.pad_token_id, [11, 6, 9], seed=1)
    want = logits(ours, ids, mask)
    model.save_pretrained(adapter.merge_lora(ours), tmp_path / "merged")
    assert not adapter.has_lora(ours)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(hf, ids, mask), want, atol=ATOL, rtol=0)
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    assert (logits(base, ids, mask)[:, :1] - want[:, :1]).abs().max() > 100 * ATOL


# ----------------------------------------------------------------------------- train.py: flags, trajectory


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {"bert": write_checkpoint(root / "bert", "bert"), "roberta": write_checkpoint(root / "roberta", "roberta"),
            "data": write_keyword_task(root / "data", sizes=SIZES)}


def lora_reference(init: dict, r: int, alpha: float, targets):
    """prepare() for reference_run: PEFT's LoRA, its A matrices set to train.py's initial ones (B is zero in
    both). Returns the PEFT model and its trained parameters under the keys PEFT saves."""
    def prepare(hf):
        pm = peft_lora(hf, r=r, alpha=alpha, targets=targets)
        trained = {peft_key(n): p for n, p in pm.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for k, p in trained.items():
                p.copy_(init[k])
        return pm, trained
    return prepare


@pytest.mark.parametrize("kind,micro", [("bert", 5), ("roberta", 20)], ids=["bert-accumulation", "roberta"])
def test_trajectory_equals_peft_reference(setup, tmp_path, monkeypatch, kind, micro):
    """32 optimizer steps of train.main --lora against PEFT + torch.optim.AdamW (test_training_parity's loop):
    per-step loss, lr and gradient norms, then every trained tensor (the saved adapter_model.safetensors
    against PEFT's) to 1e-6, frozen ones bit for bit where they started."""
    spy = Spy(monkeypatch)
    train.main(argv(setup, kind, tmp_path, "--micro-batch-size", str(micro), "--lora", "--lora-r", "4",
                    "--lora-alpha", "8", "--lora-dropout", "0"))
    out = tmp_path / "acl" / f"{setup[kind].name}-lora" / "seed1"
    assert json.loads((out / "result.json").read_text())["method"] == "lora"
    saved = load_file(out / "model" / "adapter_model.safetensors")
    # the initial trained weights under PEFT's keys: save the spied initial model the same way
    start = model.from_pretrained(setup[kind])
    adapter.add_lora(start, r=4, alpha=8, dropout=0.0, verbose=False)
    start.load_state_dict(spy.init)
    adapter.save_lora(start, tmp_path / "init", base=str(setup[kind]))
    init = load_file(tmp_path / "init" / "adapter_model.safetensors")
    assert init.keys() == saved.keys()
    _, trained, ref = reference_run(setup[kind], kind, setup["data"],
                                    prepare=lora_reference(init, 4, 8, ("query", "value")))
    check_steps([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], ref, spy.steps)
    check_weights(saved, trained, init)
    final = dict(spy.model.named_parameters())
    for n, p in final.items():
        if not p.requires_grad:
            assert torch.equal(p, spy.init[n]), f"frozen {n} moved"


def test_train_flags(setup, tmp_path, capsys):
    """--lora with --adapter, LoRA flags without --lora, --merge-lora without --save: one-line errors (exit 2).
    --lora --save --merge-lora writes a plain saved model that model.from_pretrained loads."""
    base = argv(setup, "bert", tmp_path, "--epochs", "1")
    for extra, words in [(["--lora", "--adapter"], "pick one"), (["--lora-r", "4"], "need --lora"),
                         (["--lora", "--merge-lora"], None)]:
        args = [a for a in base if a != "--save"] if extra[-1] == "--merge-lora" else base
        assert train.cli(args + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("train.py: error: ") and err.count("\n") == 1
        assert (words or "add --save") in err
    train.main(base + ["--lora", "--merge-lora", "--epochs", "1"])
    saved = tmp_path / "acl" / f"{setup['bert'].name}-lora" / "seed1" / "model"
    assert (saved / "model.safetensors").is_file() and not (saved / "adapter_config.json").exists()
    assert not adapter.has_lora(model.from_pretrained(saved))
    # the finished seed holds a merged model: the command without --merge-lora is refused, not skipped
    assert train.cli(base + ["--lora", "--epochs", "1"]) == 2
    assert "saved with --merge-lora" in capsys.readouterr().err


def test_lora_dropout_acts_on_the_input_before_a():
    """dropout(x) goes into A (Hu et al.; PEFT's order), not A's output: A's input is x with about p of its
    elements zeroed and the rest scaled by 1/(1-p)."""
    torch.manual_seed(0)
    lora = adapter.LoRA(16, 16, r=4, alpha=8, dropout=0.5).train()
    seen = []
    lora.lora_A.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = torch.rand(4, 32, 16) + 1.0  # no zeros of its own
    lora(x)
    kept = seen[0] != 0
    assert seen[0].shape == x.shape and 0.4 < kept.float().mean().item() < 0.6
    torch.testing.assert_close(seen[0][kept], 2 * x[kept])
