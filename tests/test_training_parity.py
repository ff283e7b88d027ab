"""train.py's optimisation, step for step, against an independent reference loop.

The reference is written here from public parts only: transformers' Bert/RobertaForSequenceClassification
(attn_implementation="sdpa"), torch.optim.AdamW with the usual groups (no decay on biases and LayerNorm
weights), transformers.get_linear_schedule_with_warmup with ceil(0.1 x steps) warm-up steps (what
TrainingArguments(warmup_ratio=0.1) gives), clip_grad_norm_(1.0), and cross-entropy averaged over the
GLOBAL batch in one forward pass. Houlsby adapters enter transformers' model through forward hooks on
BertSelfOutput.dropout and BertOutput.dropout (before the residual add + LayerNorm). train.py runs through
its own code path: `train.main([...])` in-process, torchrun for 2 ranks. Only the batch ORDER comes from
data.train_batches (the order is the spec); tokenizing, padding and tensorizing are done here with
transformers' fast tokenizers. SDPA, not "eager": our encoder calls the same SDPA kernel, so train-mode
logits with dropout on are equal to the last bit; eager attention (matmul + softmax + dropout) lands 6e-7 away.
"""

import functools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import adapter
import data
import model
import runs
import train
from helpers import FILLER, KEYWORDS, random_batch, tiny_hf_config, write_keyword_task
from test_train import read_metrics, run_cli  # run_cli: torchrun with one thread per rank

LABELS = data.DATASETS["acl"].labels
LR, BATCH, EPOCHS, MAX_LENGTH, SEED = 1e-3, 20, 2, 64, 1
# 311 training examples in global batches of 20: 16 steps per epoch, the last one short (11 examples). With
# micro-batch 5 it is cut into 5 + 5 + 1 on one process, and into 5 + 1 and 5 + 0 (an empty micro-batch) on
# two ranks: a loss averaged per micro-batch or per rank instead of over the global batch shows there.
# Two epochs, so that the second epoch's order and the schedule across the epoch boundary count too.
SIZES = (311, 16, 16)

# fp32 throughout. We fuse Q/K/V into one matmul and use fused AdamW; the reference runs three matmuls and
# the for-each AdamW, so sums are taken in another order and the trajectories drift apart by float round-off
# only. Measured over the 32 steps here: at most 1.3e-7 on any weight (BERT and RoBERTa, full and adapters,
# 1 process or 2 ranks), i.e. one or two float32 ulps of weights near 1. TOL leaves an 8x margin, while the
# weights themselves move by 1e-2 (checked, so that agreement is not agreement at rest).
TOL = 1e-6


# ----------------------------------------------------------------------------- checkpoints and data


def write_checkpoint(directory, kind: str, dropout: float = 0.0, seed: int = 0):
    """A tiny random transformers classifier WITH its 6-label head (so that loading initialises nothing at
    random), in the Hub layout, with tokenizer files. RoBERTa in roberta-base's real layout: LayerNorm eps
    1e-5, 514 positions, one token type, pad id 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertForSequenceClassification, RobertaForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    words = KEYWORDS + FILLER
    if kind == "bert":
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
        vocab_size, extra = len(vocab), {}
    else:  # a small byte-level BPE trained on the task's words: vocab.json + merges.txt, as roberta-base has
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.train_from_iterator([" ".join(words), " ".join(reversed(words))], trainers.BpeTrainer(
            vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        bpe.model.save(str(directory))
        vocab_size = bpe.get_vocab_size()
        extra = dict(layer_norm_eps=1e-5, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
    # initializer_range 0.1: gradient norms then straddle the clipping threshold (0.4 to 4), so clipping is
    # active on some steps and not on others
    config = tiny_hf_config(kind, vocab_size=vocab_size, num_labels=len(LABELS), initializer_range=0.1,
                            hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, **extra)
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if kind == "bert" else RobertaForSequenceClassification
    cls(config).save_pretrained(directory)
    return directory


def hf_tokenizer(ckpt):
    """transformers' own tokenizer for the checkpoint (BertTokenizer from vocab.txt, RobertaTokenizer from
    vocab.json + merges.txt)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(ckpt)


def read_train(data_dir):
    with open(data_dir / "acl" / "train.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [r["text"] for r in rows], torch.tensor([LABELS.index(r["label"]) for r in rows])


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return {"bert": write_checkpoint(root / "bert", "bert"), "roberta": write_checkpoint(root / "roberta", "roberta"),
            "data": write_keyword_task(root / "data", sizes=SIZES)}


def argv(setup, kind, out, *extra):
    return ["--dataset", "acl", "--model", str(setup[kind]), "--data-dir", str(setup["data"]), "--out", str(out),
            "--epochs", str(EPOCHS), "--lr", str(LR), "--batch-size", str(BATCH), "--max-length", str(MAX_LENGTH),
            "--log-every", "1", "--device", "cpu", "--save", *extra]


# ----------------------------------------------------------------------------- the reference


class RefAdapter(nn.Module):
    """Houlsby et al. 2019: x + up(gelu(down(x)))."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down, self.up = nn.Linear(hidden, bottleneck), nn.Linear(bottleneck, hidden)

    def forward(self, x):
        return x + self.up(F.gelu(self.down(x)))


def add_reference_adapters(hf, init: dict[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """Hook adapters in after each sub-layer's output dropout, freeze what Houlsby freezes, load `init`
    (our names) into the adapters. Returns the trainable parameters under our names."""
    base = hf.base_model
    bottleneck = init["encoder.layer.0.output.adapter.down.weight"].shape[0]
    hf.adapters = nn.ModuleDict()  # registered on the model so that .train() / .parameters() see them
    for i, layer in enumerate(base.encoder.layer):
        for where, sub in (("attention.output", layer.attention.output), ("output", layer.output)):
            a = RefAdapter(hf.config.hidden_size, bottleneck)
            name = f"encoder.layer.{i}.{where}.adapter"
            with torch.no_grad():
                for part in ("down", "up"):
                    getattr(a, part).weight.copy_(init[f"{name}.{part}.weight"])
                    getattr(a, part).bias.copy_(init[f"{name}.{part}.bias"])
            hf.adapters[name.replace(".", "_")] = a
            sub.dropout.register_forward_hook(lambda module, args, out, a=a: a(out))
    hf.requires_grad_(False)
    trained = [hf.adapters, hf.classifier, *[m for m in hf.modules() if isinstance(m, nn.LayerNorm)]]
    if hf.config.model_type == "bert":
        trained.append(base.pooler)  # the counterpart of RoBERTa's classifier.dense (see adapter.py)
    for m in trained:
        m.requires_grad_(True)
    out = {}
    for n, p in hf.named_parameters():
        if p.requires_grad:
            if n.startswith("adapters."):
                n = n.removeprefix("adapters.").replace("_", ".")
            out[n.removeprefix(base.base_model_prefix + ".")] = p
    return out


def reference_run(ckpt, kind, data_dir, adapter_init=None, epochs=EPOCHS, batch_size=BATCH, prepare=None):
    """The reference loop. Returns (model, {our-or-hub name: trained parameter}, per-step records).
    `prepare(hf) -> (model, trained)` swaps in another model and trained set (test_lora: PEFT's LoRA)."""
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup
    hf = AutoModelForSequenceClassification.from_pretrained(ckpt, attn_implementation="sdpa").train()
    if prepare is not None:
        hf, trained = prepare(hf)
    else:
        trained = (add_reference_adapters(hf, adapter_init) if adapter_init is not None
                   else dict(hf.named_parameters()))
    tok = hf_tokenizer(ckpt)
    texts, labels = read_train(data_dir)
    ids = tok(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n
    opt = torch.optim.AdamW([{"params": [p for n, p in trained.items() if not no_decay(n)], "weight_decay": 0.01},
                             {"params": [p for n, p in trained.items() if no_decay(n)], "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.999), eps=1e-8)
    total = epochs * math.ceil(len(texts) / batch_size)
    schedule = get_linear_schedule_with_warmup(opt, math.ceil(0.1 * total), total)
    key_bias = [n for n in trained if "attention.self.key.bias" in n]
    records = []
    for epoch in range(epochs):
        for batch in data.train_batches(lengths, batch_size, SEED, epoch):
            T = int(lengths[batch].max())
            input_ids = torch.full((len(batch), T), hf.config.pad_token_id)
            mask = torch.zeros(len(batch), T, dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, :lengths[i]] = torch.tensor(ids[i])
                mask[row, :lengths[i]] = 1
            logits = hf(input_ids=input_ids, attention_mask=mask).logits
            loss = F.cross_entropy(logits, labels[batch])  # the mean over the global batch
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(list(trained.values()), 1.0)
            records.append({"loss": loss.item(), "grad_norm": min(norm.item(), 1.0), "norm_before_clip": norm.item(),
                            "examples": len(batch), "tokens": int(lengths[batch].sum()),  # real tokens, no padding
                            "key_bias_grad": max((trained[n].grad.abs().max().item() for n in key_bias), default=0),
                            "grad_max": max(p.grad.abs().max().item() for p in trained.values())})
            opt.step()
            schedule.step()
            opt.zero_grad()
            records[-1]["lr"] = schedule.get_last_lr()[0]  # what train.py logs after step s: the next lr
    return hf, trained, records


# ----------------------------------------------------------------------------- what train.py did


class Spy:
    """Watches train.py's own Run without changing it: the weights right after it is built, and at every
    optimizer step (a step pre-hook: after clipping and unscaling) the norm of the gradients about to be
    applied and the largest attention key-bias gradient."""

    def __init__(self, monkeypatch):
        self.init, self.model, self.steps = None, None, []
        build = train.Run.__init__

        def spied(run, *args, **kwargs):
            build(run, *args, **kwargs)
            self.init = {n: p.detach().clone() for n, p in run.model.named_parameters()}
            self.model = run.model
            names = {id(p): n for n, p in run.model.named_parameters()}
            C = run.model.config.hidden_size

            def hook(optimizer, args, kwargs):
                grads = {names[id(p)]: p.grad for g in optimizer.param_groups for p in g["params"]
                         if p.grad is not None}
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
                key_bias = [g[C:2 * C].abs().max().item() for n, g in grads.items() if n.endswith("qkv.bias")]
                self.steps.append({"grad_norm": norm.item(), "key_bias_grad": max(key_bias, default=0.0),
                                   "grad_max": max(g.abs().max().item() for g in grads.values())})

            run.optimizer.register_step_pre_hook(hook)

        monkeypatch.setattr(train.Run, "__init__", spied)


def run_dir(out, setup, kind, adapter=False):
    return out / "acl" / (setup[kind].name + ("-adapter" if adapter else "")) / f"seed{SEED}"


KEY_BIAS = "attention.self.key.bias"


def check_steps(metrics, ref, spied=None):
    """Per step: the logged loss, lr, gradient norm (before clipping) and tokens per example, and (in-process)
    the applied gradient's norm, against the reference."""
    logged = [r for r in metrics if r["split"] == "train"]
    assert [r["step"] for r in logged] == list(range(1, len(ref) + 1))
    for s, (got, want) in enumerate(zip(logged, ref), 1):
        # lr: train.py logs the lr after step s, i.e. the one step s + 1 will use; exact formula, exact floats
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12, abs=1e-15), f"lr after step {s}"
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), f"loss of step {s}"
        # --log-every 1: each record's grad_norm is its own step's, clip_grad_norm_'s return value
        assert got["grad_norm"] == pytest.approx(want["norm_before_clip"], rel=1e-4), f"grad_norm of step {s}"
        # both rates share one wall time: their ratio is the step's real (unpadded) tokens per example
        assert got["tokens_per_s"] > 0 and got["examples_per_s"] > 0
        assert got["tokens_per_s"] / got["examples_per_s"] == pytest.approx(want["tokens"] / want["examples"],
                                                                            rel=1e-9), f"tokens/s of step {s}"
    assert ref[-1]["lr"] == 0.0 and max(r["lr"] for r in ref) == pytest.approx(LR)  # the schedule is exercised
    if spied is None:
        return
    assert len(spied) == len(ref), "one optimizer step per global batch"
    for s, (got, want) in enumerate(zip(spied, ref), 1):
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), f"clipped gradient norm, step {s}"
        # The key bias adds q.b_k to every score of a query; softmax ignores a shift, so its true gradient is 0
        # and what autograd returns is round-off, in both implementations. Adam divides by sqrt(v), turning that
        # noise into full-size steps of either sign, so its value is not compared (check_weights) but its
        # gradient is: it must be noise-sized here and in the reference.
        for r in (got, want):
            assert r["key_bias_grad"] < 1e-6 * r["grad_max"], f"key-bias gradient is not ~0 at step {s}"
    assert any(r["grad_norm"] < 0.999 for r in ref) and any(r["grad_norm"] > 0.999 for r in ref), \
        "pick settings where clipping is active on some steps and not on others"


def check_weights(got: dict, want: dict, init: dict):
    """Every trained tensor against the reference, except the key bias (see check_steps)."""
    assert got.keys() == want.keys()
    moved = 0.0
    for k, tensor in got.items():
        if KEY_BIAS in k:
            continue
        torch.testing.assert_close(tensor, want[k].detach(), atol=TOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        moved = max(moved, (want[k].detach() - init[k]).abs().max().item())
    assert moved > 100 * TOL, "the weights hardly moved: agreeing would prove nothing"


# ----------------------------------------------------------------------------- trajectory parity


@pytest.mark.parametrize("kind,adapter,micro", [
    ("bert", False, 20), ("roberta", False, 5), ("bert", True, 5), ("roberta", True, 20)],
    ids=["bert-full", "roberta-full-accumulation", "bert-adapter-accumulation", "roberta-adapter"])
def test_trajectory_equals_reference(setup, tmp_path, monkeypatch, kind, adapter, micro):
    """32 optimizer steps of train.main against the reference loop, every trained tensor compared.
    Micro-batch 5 of a global batch of 20 is 4 accumulation steps (the short last batch: 3 unequal ones)."""
    spy = Spy(monkeypatch)
    train.main(argv(setup, kind, tmp_path, "--micro-batch-size", str(micro),
                    *(["--adapter", "--bottleneck", "8"] if adapter else [])))
    out = run_dir(tmp_path, setup, kind, adapter)
    init = {n: t for n, t in spy.init.items() if ".adapter." in n} if adapter else None
    hf, trained, ref = reference_run(setup[kind], kind, setup["data"], adapter_init=init)
    check_steps(read_metrics(out / "metrics.jsonl"), ref, spy.steps)
    if not adapter:
        check_weights(load_file(out / "model" / "model.safetensors"), hf.state_dict(),
                      load_file(setup[kind] / "model.safetensors"))
        return
    check_weights(load_file(out / "model" / "adapter.safetensors"), trained, spy.init)
    final = dict(spy.model.named_parameters())
    frozen = [n for n in final if n not in trained]
    assert frozen and all(not final[n].requires_grad for n in frozen)
    for n in frozen:  # bit for bit where they started (which is the checkpoint: the logits tests prove that)
        assert torch.equal(final[n], spy.init[n]), f"frozen {n} moved"


def test_two_ranks_equal_reference(setup, tmp_path):
    """torchrun, 2 ranks (gloo) x micro-batch 5 x 2 accumulation steps, RoBERTa in roberta-base's layout.
    The short last batch (11 examples) gives rank 0 micro-batches of 5 and 1, rank 1 of 5 and 0."""
    done = run_cli(argv(setup, "roberta", tmp_path, "--micro-batch-size", "5"), torchrun=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    out = run_dir(tmp_path, setup, "roberta")
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    hf, _, ref = reference_run(setup["roberta"], "roberta", setup["data"])
    check_steps(read_metrics(out / "metrics.jsonl"), ref)
    check_weights(load_file(out / "model" / "model.safetensors"), hf.state_dict(),
                  load_file(setup["roberta"] / "model.safetensors"))


# ----------------------------------------------------------------------------- train mode, dropout on


@pytest.mark.parametrize("adapters", [False, True], ids=["plain", "adapters"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_train_mode_dropout_equals_transformers(tmp_path, kind, adapters):
    """Dropout on everywhere (p = 0.1: embeddings, attention probabilities, both sub-layer outputs, the head).
    With the same torch seed our train-mode forward draws the same random numbers, in the same order and the
    same shapes, as transformers' (SDPA draws the attention mask inside the same kernel in both), so the
    logits are equal to the last bit (measured: 0.0) and the gradients up to the fused Q/K/V summation order
    (measured: 3e-7). Any dropout site missing, added, moved or swapped with another puts other masks in other
    places: the logits then differ by 0.1 or more. BERT with a sentence pair and padding; RoBERTa's head is
    dropout, dense, tanh, dropout, out_proj. With adapters (weights drawn large here, so that where they sit
    shows), the reference's hooks put them after each output dropout, before the residual add."""
    from transformers import AutoModelForSequenceClassification
    ckpt = write_checkpoint(tmp_path, kind, dropout=0.1)
    hf = AutoModelForSequenceClassification.from_pretrained(ckpt, attn_implementation="sdpa").train()
    ours = model.from_pretrained(ckpt).train()
    trained = None
    if adapters:
        adapter.add_adapters(ours, bottleneck=8, verbose=False)
        torch.manual_seed(2)
        for n, p in ours.named_parameters():
            if ".adapter." in n:
                nn.init.normal_(p, std=0.3)
        trained = add_reference_adapters(hf, {n: p.detach() for n, p in ours.named_parameters()})
    ids, mask, types = random_batch(hf.config.vocab_size, hf.config.pad_token_id, [12, 5, 9, 12], seed=3,
                                    pair_at=4 if kind == "bert" else None)
    labels = torch.tensor([0, 3, 5, 1])
    for seed in (0, 1):
        torch.manual_seed(seed)
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        rng_hf = torch.get_rng_state()
        torch.manual_seed(seed)
        got = ours(ids, mask, types)
        assert torch.equal(torch.get_rng_state(), rng_hf), "another number of random draws than transformers"
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        with torch.no_grad():
            assert (got - ours.eval()(ids, mask, types)).abs().max() > 0.1, "dropout changed nothing"
        ours.train()
        F.cross_entropy(got, labels).backward()
        F.cross_entropy(want, labels).backward()
        grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
        if trained is None:
            grads = model.ours_to_hub(grads, ours.config)
            want_grads = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}
        else:
            want_grads = {n: p.grad for n, p in trained.items()}
        assert grads.keys() == want_grads.keys()
        for k, g in grads.items():
            torch.testing.assert_close(g, want_grads[k], atol=2e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        ours.zero_grad()
        hf.zero_grad()


# ----------------------------------------------------------------------------- mixed precision


class OpDtypes(TorchDispatchMode):
    """Records the floating input dtypes of every matmul-like aten op (forward and backward) and of the loss's
    log-softmax and NLL."""

    MATMULS = ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul")
    LOSS = ("_log_softmax", "nll_loss_forward")

    def __init__(self):
        super().__init__()
        self.matmuls, self.loss = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        dtypes = [a.dtype for a in args[:2] if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if name in self.MATMULS or "scaled_dot_product" in name:
            self.matmuls.append((name, dtypes))
        elif name in self.LOSS:
            self.loss.append((name, dtypes))
        return func(*args, **(kwargs or {}))


def test_bf16_matmuls_run_in_bf16_and_stay_near_fp32(setup, tmp_path, monkeypatch):
    """--precision bf16 on CPU: during a real train.Run.train_step every matmul (the Linear layers' addmm
    forward, their mm backward, SDPA both ways) takes bf16 inputs, while fp32 takes fp32 ones; the loss's
    log-softmax and NLL take fp32 in both. After the 32
    steps, bf16's weights stay within 8% of fp32's movement away from the start (per tensor, L2 norms):
    measured 2.7% at most (the position embeddings), so 3x margin for other CPUs' bf16 kernels. bf16 keeps 8
    mantissa bits (0.4% per rounding); Adam's normalised steps keep that from compounding over 32 steps."""
    dtypes = {}
    step = train.Run.train_step

    def recorded_first_step(run, batch):
        if run.step > 0:
            return step(run, batch)
        with OpDtypes() as mode:
            step(run, batch)
        dtypes[run.cfg.precision] = mode

    monkeypatch.setattr(train.Run, "train_step", recorded_first_step)
    weights = {}
    for precision in ("fp32", "bf16"):
        train.main(argv(setup, "bert", tmp_path / precision, "--precision", precision))
        weights[precision] = load_file(run_dir(tmp_path / precision, setup, "bert") / "model" / "model.safetensors")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ops = {name for name, _ in dtypes[precision].matmuls}
        assert {"addmm", "mm"} <= ops and any("scaled_dot_product" in n for n in ops), ops
        wrong = [(n, d) for n, d in dtypes[precision].matmuls if any(x != dtype for x in d)]
        assert not wrong, f"--precision {precision}: matmuls not in {dtype}: {wrong[:3]}"
        # the loss is taken in fp32 from fp32 logits whatever the precision (bf16 would round the log-probs)
        loss = dtypes[precision].loss
        assert {n for n, _ in loss} == set(OpDtypes.LOSS) and all(x == torch.float32 for _, d in loss for x in d), loss
    init = load_file(setup["bert"] / "model.safetensors")
    rel = {k: ((weights["bf16"][k] - weights["fp32"][k]).norm() / (weights["fp32"][k] - init[k]).norm()).item()
           for k in init if KEY_BIAS not in k}
    assert max(rel.values()) < 0.08, max(rel.items(), key=lambda kv: kv[1])
    assert max(rel.values()) > 1e-3, "bf16 ended where fp32 did: it did not run in bf16"


def test_fp16_grad_scaler_is_saved_and_restored(setup, tmp_path, monkeypatch):
    """--precision fp16 (autocast + GradScaler), three epochs, 48 steps. The scaler grows its scale every 4
    good steps here (growth_interval=4 instead of 2000, so that in 48 steps it grows until the scaled fp16
    gradients overflow, skips those steps and backs off: measured 6 skipped steps, and at the step-36
    checkpoint scale 262144 with growth tracker 2, not the fresh 65536 / 0). A run stopped at step 40 resumes from its step-36 checkpoint: the scaler must come back with
    the checkpoint's state, and the resumed run must end with the uninterrupted run's scaler state and weights.
    Every applied gradient was clipped AFTER unscaling: its norm is min(true norm, 1), not ~1/scale."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, growth_interval=4))
    extra = ["--precision", "fp16", "--epochs", "3", "--checkpoint-every", "12"]
    spy = Spy(monkeypatch)
    scalers = {}
    finish = train.Run.finish

    def recorded_finish(run, results):
        scalers[run.dir.parents[2].name] = run.scaler.state_dict()
        return finish(run, results)

    monkeypatch.setattr(train.Run, "finish", recorded_finish)
    train.main(argv(setup, "bert", tmp_path / "whole", *extra))
    # fused AdamW is called on every step and skips the update itself when the scaler found an inf: those
    # steps show non-finite gradients here
    assert len(spy.steps) == 48
    norms = [r["grad_norm"] for r in spy.steps if math.isfinite(r["grad_norm"])]
    assert 36 <= len(norms) < 48, "some steps overflow and are skipped, most do not"
    assert max(norms) < 1 + 1e-4, "clipped to 1.0"
    assert any(n > 1 - 1e-3 for n in norms) and any(n < 0.9 for n in norms), \
        "clipping active on some steps only, of the true (unscaled) gradients"

    step = train.Run.train_step

    def stop_at_40(run, batch):
        if run.step == 40:
            raise KeyboardInterrupt  # as Ctrl-C would
        return step(run, batch)

    monkeypatch.setattr(train.Run, "train_step", stop_at_40)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(setup, "bert", tmp_path / "stopped", *extra))
    monkeypatch.setattr(train.Run, "train_step", step)
    out = run_dir(tmp_path / "stopped", setup, "bert")
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 36
    assert saved["scaler"]["scale"] != 65536.0, "the scaler never moved: restoring it would prove little"

    restored = {}
    load = runs.load_checkpoint

    def recorded_load(run):
        load(run)
        restored.update(run.scaler.state_dict())

    monkeypatch.setattr(runs, "load_checkpoint", recorded_load)
    train.main(argv(setup, "bert", tmp_path / "stopped", *extra, "--resume"))
    assert restored == saved["scaler"]
    assert scalers["stopped"] == scalers["whole"]
    a = load_file(run_dir(tmp_path / "whole", setup, "bert") / "model" / "model.safetensors")
    b = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
