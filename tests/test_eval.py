"""eval.py's metrics against scikit-learn, and exact sharded evaluation."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

import data
import eval as evaluation
import model


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
