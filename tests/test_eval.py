"""eval.py: metrics against scikit-learn, exact sharded evaluation, `evaluate` refusing a saved model whose
label names are not the dataset's, bf16 evaluation against a reference loop, the progress bar."""

import io
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

import data
import eval as evaluation
import model
from helpers import write_keyword_task, write_tiny_encoder

ACL = data.DATASETS["acl"].labels


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 8))
    n = int(rng.integers(1, 60))
    # some draws use only a few classes, so that classes absent from labels and/or predictions occur
    used = rng.choice(num_classes, size=int(rng.integers(1, num_classes + 1)), replace=False)
    labels = rng.choice(used, size=n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.choice(used, size=n))
    got = evaluation.compute_metrics(preds, labels, num_classes)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
    assert got["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0), abs=1e-12)
    assert got["f1_micro"] == pytest.approx(f1_score(labels, preds, average="micro", zero_division=0), abs=1e-12)


def test_absent_classes_follow_sklearn():
    labels, preds = [0, 0, 1, 1], [0, 2, 1, 1]  # class 2 only predicted, class 3 nowhere
    got = evaluation.compute_metrics(preds, labels, 4)
    assert got["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0))
    assert got["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # class 3 is left out, class 2 scores 0


def test_bad_metric_input():
    with pytest.raises(ValueError, match="outside 0..2"):
        evaluation.compute_metrics([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        evaluation.compute_metrics([0, 1], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="no examples"):
        evaluation.compute_metrics([], [], 3)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharded_evaluation_is_exact(world_size):
    """Each rank scores its shard; summing what the ranks hand to `reduce` gives the one-process totals."""
    torch.manual_seed(0)
    cfg = model.Config(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=40)
    net = model.Classifier(cfg, num_labels=3)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=37)  # odd-sized split
    enc = data.Encoded(rng.integers(5, 50, size=lengths.sum()).astype(np.int32),
                       np.zeros(lengths.sum(), np.int8), np.concatenate([[0], np.cumsum(lengths)]),
                       rng.integers(0, 3, size=37))
    kwargs = dict(pad_id=0, device=torch.device("cpu"), batch_size=5)

    seen = []
    whole = evaluation.evaluate(net, enc, 3, **kwargs, reduce=lambda t: seen.append(t.clone()))
    parts = []
    for rank in range(world_size):
        evaluation.evaluate(net, enc, 3, **kwargs, rank=rank, world_size=world_size,
                            reduce=lambda t: parts.append(t.clone()))
    total = sum(parts)
    assert torch.equal(total[:-2], seen[0][:-2]) and total[-1] == seen[0][-1] == 37  # confusion matrix and count
    assert total[-2].item() == pytest.approx(seen[0][-2].item(), rel=1e-6)  # loss: other batches, other rounding
    assert whole["n"] == 37
    assert net.training, "evaluate restores the training mode"

    net.eval()
    with torch.no_grad():  # and against an unbatched, unsorted evaluation
        preds = [net(torch.from_numpy(enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]]).long()[None]).argmax().item()
                 for i in range(37)]
    net.train()
    assert whole["accuracy"] == evaluation.compute_metrics(preds, enc.labels, 3)["accuracy"]


# ----------------------------------------------------------------------------- label names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(10, 10, 20)),
            "root": root}


def _checkpoint(files, names) -> str:
    """A 6-label classifier saved with these label names, beside the encoder's vocab."""
    directory = files["root"] / ("ckpt-" + "-".join(names).replace("/", "_"))
    if not directory.exists():
        torch.manual_seed(0)
        net = model.from_pretrained(files["enc"], num_labels=6)
        model.save_pretrained(net, directory, labels=list(names))
        shutil.copy(files["enc"] / "vocab.txt", directory / "vocab.txt")
    return str(directory)


def _evaluate(files, names):
    return evaluation.main(["evaluate", "--model", _checkpoint(files, names), "--dataset", "acl",
                            "--data-dir", str(files["data"]), "--device", "cpu", "--max-length", "64"])


@pytest.mark.parametrize("names", [
    ["positive", "neutral", "negative", "World", "Sports", "Business"],  # six names, another task's
    ACL[1:] + ACL[:1],  # acl's own names in another order: class ids would mean other classes
    [*ACL[:5], "background"],  # one name differs
    ["LABEL_0", *ACL[1:]],  # one default name among real ones: the real ones still have to agree
], ids=["other-names", "permuted", "one-differs", "one-default"])
def test_evaluate_refuses_other_label_names(files, names):
    assert len(names) == len(ACL)
    if names[0] == "LABEL_0":
        names = ["LABEL_0", *ACL[:5]]  # LABEL_0 then acl's names shifted: only all-default names are meaningless
    with pytest.raises(ValueError, match=r"labels its classes .* acl has .*index = class id") as e:
        _evaluate(files, names)
    assert str(names) in str(e.value) and str(ACL) in str(e.value)


@pytest.mark.parametrize("names", [ACL, [f"LABEL_{i}" for i in range(6)]], ids=["acl", "transformers-default"])
def test_evaluate_accepts_the_datasets_names_or_none(files, names):
    """transformers' default names (LABEL_i) carry no meaning, so they are no reason to refuse."""
    result = _evaluate(files, names)
    assert result["n"] == 20 and 0 <= result["accuracy"] <= 1


# ----------------------------------------------------------------------------- bf16 and the progress bar


def test_bf16_evaluation_runs_under_autocast_and_scores_fp32_logits(files):
    """eval.evaluate under train.py's bf16 autocast: the forward runs in bf16 (its loss differs from fp32's),
    and the loss is cross-entropy of the logits cast to fp32, summed in float64 (a reference loop over the
    same batches; bf16 cross-entropy would be off by about 1e-3)."""
    import common
    torch.manual_seed(0)
    net = model.from_pretrained(files["enc"], num_labels=6).eval()
    tok = model.load_tokenizer(files["enc"])
    enc = data.encode(data.load_split("acl", "test", files["data"]), tok, 64)
    bf16 = common.autocast(torch.bfloat16, torch.device("cpu"))
    got = evaluation.evaluate(net, enc, 6, pad_id=0, device=torch.device("cpu"), batch_size=8, max_length=64,
                              autocast=bf16)
    fp32 = evaluation.evaluate(net, enc, 6, pad_id=0, device=torch.device("cpu"), batch_size=8, max_length=64)
    loss, n = 0.0, 0
    with torch.no_grad():
        for idx in data.eval_batches(enc.lengths, 8, 0, 1):
            b = data.collate(enc, idx, 0, 1, 64)
            with bf16():
                logits = net(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            assert logits.dtype == torch.bfloat16  # the oracle itself ran in bf16
            loss += F.cross_entropy(logits.float(), b["labels"], reduction="sum").double().item()
            n += len(idx)
    assert got["n"] == n and got["loss"] == pytest.approx(loss / n, rel=1e-9)
    assert abs(got["loss"] - fp32["loss"]) > 1e-5 * fp32["loss"]  # bf16 really ran (measured: 6.6e-5 relative)


def test_evaluation_shows_a_progress_bar_on_rank_0_only(files, monkeypatch):
    bars, screen = [], io.StringIO()

    class Recorded(evaluation.tqdm):
        def __init__(self, *args, **kwargs):
            bars.append((dict(kwargs), self))
            if kwargs["disable"] is None:  # None: drawn on a terminal; pytest's stderr is none, so pretend
                kwargs.update(disable=False, file=screen)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(evaluation, "tqdm", Recorded)
    net = model.from_pretrained(files["enc"], num_labels=6)
    enc = data.encode(data.load_split("acl", "test", files["data"]), model.load_tokenizer(files["enc"]), 64)
    for rank in (0, 1):
        evaluation.evaluate(net, enc, 6, pad_id=0, device=torch.device("cpu"), batch_size=16, rank=rank,
                            world_size=2)
    (kw0, bar0), (kw1, _) = bars
    assert bar0.total == len(data.eval_batches(enc.lengths, 16, 0, 2)) and bar0.n == bar0.total  # every batch
    assert kw0["disable"] is None  # shown on a terminal, as training's bar
    assert kw1["disable"] is True  # other ranks never draw
    assert f"evaluate ({len(enc)} examples)" in screen.getvalue()
