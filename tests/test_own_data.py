"""Your own data: folders or files of .jsonl/.csv/.tsv, a Hub dataset repo, and every bad input.

Oracles: the registered datasets. The real acl and restaurant files, converted into csv, tsv and jsonl
with other column names and integer labels, must give exactly `data.load_split`'s examples, and a
short training run on them exactly the registered run's metrics. AG News' 7600 rows as one training
file with --test-fraction 0.1 must give exactly agnews' own split.
"""

import csv
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import data
import eval as evaluation
import own_data
import report
import train
from helpers import ROOT, hub_cache, without_timings, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


# ---------------------------------------------------------------------------- the real files, converted

ACL_NAMES = data.DATASETS["acl"].labels


def write_csv(path, header, rows, delimiter=",", encoding="utf-8"):
    # csv.writer ends lines with CRLF and quotes what needs it: CRLF files with quoted commas and quotes
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def convert(real, name, fmt, out, names=False):
    """The registered dataset `name` as <out>/<name>-<fmt>/{train,dev|validation,test}.<fmt>, with other
    column names and integer labels (class ids), or label names with names=True."""
    folder = out / f"{name}-{fmt}{'-names' if names else ''}"
    folder.mkdir()
    labels = data.DATASETS[name].labels
    for split in data.DATASETS[name].splits:
        examples = data.load_split(name, split, real)
        stem = "validation" if (split, fmt) == ("dev", "tsv") else split  # dev.* or validation.*
        ys = [labels[e.label] if names else e.label for e in examples]
        if name == "restaurant":
            header = ["aspect", "review", "polarity"]
            rows = [[e.text, e.text_pair, y] for e, y in zip(examples, ys)]
        else:  # the text first, so that a UTF-8 BOM kept in the first column's name would hide it
            header = ["sentence", "intent", "id"]
            rows = [[e.text, y, f"{split}-{i}"] for i, (e, y) in enumerate(zip(examples, ys))]
        if fmt == "jsonl":
            write_jsonl(folder / f"{stem}.jsonl", [dict(zip(header, row)) for row in rows])
        else:  # train.csv with a UTF-8 byte-order mark, as Excel writes it
            write_csv(folder / f"{stem}.{fmt}", header, rows, delimiter="\t" if fmt == "tsv" else ",",
                      encoding="utf-8-sig" if (fmt, split) == ("csv", "train") else "utf-8")
    return folder


def flags(name):
    if name == "restaurant":
        return dict(text_column="aspect", text_pair_column="review", label_column="polarity")
    return dict(text_column="sentence", label_column="intent")


def cli_flags(name):
    return [x for k, v in flags(name).items() for x in ("--" + k.replace("_", "-"), v)]


@pytest.fixture(scope="module")
def converted(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    folders = {(name, fmt): convert(data_dir, name, fmt, out) for name in ("acl", "restaurant")
               for fmt in ("csv", "tsv", "jsonl")}
    folders["acl", "names"] = convert(data_dir, "acl", "jsonl", out, names=True)
    return folders


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("name", ["acl", "restaurant"])
def test_converted_real_files_give_the_registered_examples(converted, data_dir, name, fmt):
    ds = own_data.open_dataset(str(converted[name, fmt]), **flags(name))
    assert ds.name == f"{name}-{fmt}" and ds.splits == data.DATASETS[name].splits
    assert ds.labels == [str(i) for i in range(len(data.DATASETS[name].labels))]  # integers, numeric order
    for split in ds.splits:
        assert ds.examples[split] == data.load_split(name, split, data_dir), split


def test_train_dev_test_files_by_flag(converted, data_dir):
    folder = converted["acl", "tsv"]
    ds = own_data.open_dataset(train_file=str(folder / "train.tsv"), dev_file=str(folder / "validation.tsv"),
                           test_file=str(folder / "test.tsv"), **flags("acl"))
    assert ds.name == "acl-tsv"  # the folder holding the training file
    assert ds.examples == {s: data.load_split("acl", s, data_dir) for s in ("train", "dev", "test")}


def test_label_names_sorted_or_in_the_given_order(converted, data_dir):
    folder = str(converted["acl", "names"])
    given = own_data.open_dataset(folder, labels=ACL_NAMES, **flags("acl"))
    assert given.labels == ACL_NAMES
    assert given.examples["test"] == data.load_split("acl", "test", data_dir)
    default = own_data.open_dataset(folder, **flags("acl"))
    assert default.labels == sorted(ACL_NAMES) != ACL_NAMES
    registered = data.load_split("acl", "train", data_dir)
    assert [default.labels[e.label] for e in default.examples["train"]] == [ACL_NAMES[e.label] for e in registered]


def test_integer_labels_sort_numerically_and_names_by_code_point(tmp_path):
    write_csv(tmp_path / "train.csv", ["text", "label"], [["a", 10], ["b", 2], ["c", 1], ["d", 2]])
    write_csv(tmp_path / "test.csv", ["text", "label"], [["e", "2"], ["f", 10]])  # "02" would be another label
    ds = own_data.open_dataset(str(tmp_path))
    assert ds.labels == ["1", "2", "10"]
    assert [e.label for e in ds.examples["train"]] == [2, 1, 0, 1] and [e.label for e in ds.examples["test"]] == [1, 2]
    assert own_data.open_dataset(str(tmp_path), labels=["10", "1", "2"]).examples["test"][1].label == 0
    write_csv(tmp_path / "train.csv", ["text", "label"], [["a", "pos"], ["b", "Neg"], ["c", "neutral"]])
    write_csv(tmp_path / "test.csv", ["text", "label"], [["e", "pos"]])
    assert own_data.open_dataset(str(tmp_path)).labels == ["Neg", "neutral", "pos"]


def test_labels_are_stripped_of_surrounding_spaces(tmp_path):
    """As the README promises: " pos", "pos " and "pos" are one class, in every file."""
    write_csv(tmp_path / "train.csv", ["text", "label"], [["a", " pos"], ["b", "neg"], ["c", "pos "], ["d", "neg"]])
    write_csv(tmp_path / "test.csv", ["text", "label"], [["e", "pos"], ["f", " neg "]])
    ds = own_data.open_dataset(str(tmp_path))
    assert ds.labels == ["neg", "pos"]
    assert [e.label for e in ds.examples["train"]] == [1, 0, 1, 0] and [e.label for e in ds.examples["test"]] == [1, 0]


def test_test_fraction_holds_out_exactly_like_agnews(data_dir, tmp_path):
    with open(data_dir / "agnews" / "test.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    write_jsonl(tmp_path / "train.jsonl", [{"text": r[1] + " " + r[2], "label": int(r[0]) - 1} for r in rows])
    for _ in range(2):  # a fixed seed: the same rows on every call
        ds = own_data.open_dataset(str(tmp_path), test_fraction=0.1)
        assert ds.splits == ("train", "test")
        assert ds.examples["test"] == data.load_split("agnews", "test", data_dir)
        assert ds.examples["train"] == data.load_split("agnews", "train", data_dir)


def test_test_fraction_rounds_the_test_share_up(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(5)])
    ds = own_data.open_dataset(str(tmp_path), test_fraction=0.5)
    # as datasets' train_test_split: n_test = ceil(test_size * n), the rest trains
    assert (len(ds.examples["train"]), len(ds.examples["test"])) == (2, 3)
    assert sorted(e.text for s in ds.splits for e in ds.examples[s]) == [f"t{i}" for i in range(5)]


def test_text_pair_column_is_used_when_the_training_file_has_one(tmp_path):
    write_csv(tmp_path / "train.csv", ["label", "text", "text_pair"], [["a", "q1", "p1"], ["b", "q2", "p2"]])
    write_csv(tmp_path / "test.csv", ["text_pair", "text", "label"], [["p3", "q3", "b"]])
    ds = own_data.open_dataset(str(tmp_path))
    assert ds.examples["test"] == [data.Example("q3", "p3", 1)]
    write_csv(tmp_path / "train.csv", ["label", "text"], [["a", "q1"], ["b", "q2"]])
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'test.csv'} has a 'text_pair' column, ")):
        own_data.open_dataset(str(tmp_path))  # test pairs where training had none: refused, not dropped


def test_bom_crlf_and_quoted_newlines_are_read(tmp_path):
    text = '\ufefftext,label\r\n"two\r\nlines, one ""text""",a\r\nplain,b\r\n"",a\r\n'
    (tmp_path / "train.csv").write_bytes(text.encode("utf-8"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'train.csv'}:5: the text in 'text' is empty")):
        own_data.open_dataset(str(tmp_path), test_fraction=0.5)  # the line count goes on past a quoted line break
    (tmp_path / "train.csv").write_bytes(text.removesuffix('"",a\r\n').encode("utf-8"))
    (tmp_path / "test.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "x", "label": "b"}\r\n\r\n')
    ds = own_data.open_dataset(str(tmp_path))
    assert ds.examples["train"] == [data.Example('two\r\nlines, one "text"', None, 0), data.Example("plain", None, 1)]
    assert ds.examples["test"] == [data.Example("x", None, 1)]


# ---------------------------------------------------------------------------- a Hub dataset repo, offline



def test_hub_dataset_from_the_cache_and_offline_error(converted, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = converted["acl", "csv"]
    hub_cache(tmp_path / "hub", "dataset", "someone/citations", {p.name: p for p in folder.iterdir()})
    ds = own_data.open_dataset("hub:someone/citations", **flags("acl"))
    assert ds.name == "someone--citations"
    assert ds.examples == {s: data.load_split("acl", s, data_dir) for s in ("train", "dev", "test")}
    with pytest.raises(FileNotFoundError) as err:
        own_data.open_dataset("hub:someone/elsewhere")
    message = str(err.value)
    assert "hub:someone/elsewhere" in message and "HF_HUB_OFFLINE=1" in message and "--dataset DIR" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------- which --dataset is meant


def test_registered_name_wins_then_folder_then_hub(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acl").mkdir()  # a folder called like a registered dataset: the name still means the registered one
    write_csv(tmp_path / "acl" / "train.csv", ["text", "label"], [["a", 1], ["b", 2]])
    assert own_data.open_dataset("acl", data_dir=data_dir, splits=("dev",)).examples["dev"] == \
        data.load_split("acl", "dev", data_dir)
    with pytest.raises(ValueError, match="'acl' is a registered dataset's: pass --dataset-name"):
        own_data.run_name("./acl")  # its runs would mix with the registered acl's
    assert own_data.run_name("./acl", given="mine") == "mine"
    with pytest.raises(ValueError) as err:
        own_data.run_name("imdb")
    assert all(n in str(err.value) for n in ("restaurant", "acl", "agnews", "train.* and test.*", "hub:owner/name"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="acl", text_column="sentence"), "--text-column: only for your own data; acl is a registered"),
    (dict(dataset="acl", test_fraction=0.1), "--test-fraction: only for your own data"),
    (dict(dataset="DIR", data_dir="/data"), "--data-dir holds local copies of the registered datasets"),
    (dict(dataset="DIR", train_file="DIR/train.csv"), "--dataset and --train-file both"),
    (dict(dataset="DIR", test_file="DIR/test.csv"), "--dev-file and --test-file go with --train-file"),
    (dict(dataset="DIR", test_fraction=0.1), "DIR/test.csv is the test file: drop --test-fraction"),
    (dict(train_file="DIR/train.csv"), "no test file beside DIR/train.csv"),
    (dict(train_file="DIR/train.csv", test_fraction=1.0), "strictly between 0 and 1"),
    (dict(train_file="DIR/nope.csv", test_fraction=0.5), "DIR/nope.csv not found"),
    (dict(), "pass --dataset"),
    (dict(dataset="DIR", labels=["a", "a"]), "lists a label twice"),
    (dict(dataset="DIR", labels=["1", "2"]), "label 'a' is not in --labels (1, 2); add it there"),
])
def test_contradicting_flags(tmp_path, kwargs, message):
    write_csv(tmp_path / "train.csv", ["text", "label"], [["x", "a"], ["y", "b"]])
    write_csv(tmp_path / "test.csv", ["text", "label"], [["z", "a"]])
    kwargs = {k: (v.replace("DIR", str(tmp_path)) if isinstance(v, str) else v) for k, v in kwargs.items()}
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message.replace("DIR", str(tmp_path)))):
        own_data.open_dataset(**kwargs)


# ---------------------------------------------------------------------------- bad input: file, line, what to do

GOOD = "text,label\nfine,a\nalso fine,b\n"


@pytest.mark.parametrize("files, kwargs, where, message", [
    ({"train.csv": "sentence,label\nhi,a\n"}, {}, "train.csv:1",
     "no column 'text' (found: 'sentence', 'label'); pass --text-column NAME"),
    ({"train.jsonl": '{"text": "a", "label": "x"}\n{"text": "b"}\n'}, {}, "train.jsonl:2",
     "no column 'label' (found: 'text'); pass --label-column NAME"),
    ({"train.csv": "a,b\nx,y\n"}, dict(text_column="a", label_column="b", text_pair_column="c"), "train.csv:1",
     "no column 'c' (found: 'a', 'b'); pass --text-pair-column NAME"),
    ({"train.csv": "text,label\nfine,a\n  ,b\n"}, {}, "train.csv:3", "the text in 'text' is empty"),
    ({"train.jsonl": '{"text": "a", "label": "x"}\n\n{"text": null, "label": "y"}\n'}, {}, "train.jsonl:3",
     "the text in 'text' is empty"),
    ({"train.jsonl": '{"text": 7, "label": "x"}\n'}, {}, "train.jsonl:1", "the text in 'text' is an int"),
    ({"train.csv": "text,label\nfine,a\nno label\n"}, {}, "train.csv:3", "1 field, the header has 2: a value is missing"),
    ({"train.csv": "text,label\nfine,\n"}, {}, "train.csv:2", "the label in 'label' is empty"),
    ({"train.jsonl": '{"text": "a", "label": 1.5}\n'}, {}, "train.jsonl:1", "the label in 'label' is a float"),
    ({"test.csv": "text,label\nx,a\ny,c\n"}, {}, "test.csv:3", "label 'c' never occurs in"),
    ({"dev.csv": "text,label\nx,a\ny,b\nz,q\n"}, dict(labels=["a", "b"]), "dev.csv:4",
     "label 'q' is not in --labels (a, b); add it there"),
    ({"train.csv": "text,label\n"}, {}, "train.csv", "only a header row (text, label), no examples"),
    ({"train.csv": ""}, {}, "train.csv", "empty file"),
    ({"train.jsonl": "\n  \n"}, {}, "train.jsonl", "empty file"),
    ({"train.csv": "text,label,text\nx,a,y\n"}, {}, "train.csv:1", "the header names 'text' more than once"),
    ({"train.csv": 'text,label\nfine,a\n"quoted" then not,b\n'}, {}, "train.csv:3", "CSV quoting error"),
    ({"train.csv": 'text,label\nfine,a\n"never closed,b\nmore,a\n'}, {}, "train.csv:3", "is never closed"),
    ({"train.tsv": "text\tlabel\nfine\ta\nhas\ta tab\tb\n"}, {}, "train.tsv:3", "3 fields, the header has 2"),
    ({"train.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": "y",}\n'}, {}, "train.jsonl:2",
     "not valid JSON"),
    ({"train.csv": "text,label\nx,a\ny,a\n", "test.csv": "text,label\nz,a\n"}, {}, "train.csv",
     "a classifier needs two classes or more"),
    ({"train.csv": "text,label\nx,1\ny,2\n", "test.csv": "text,label\nz,1\n"}, dict(labels=["a", "b"]),
     "train.csv:2", "label '1' is not in --labels (a, b); add it there"),
])
def test_bad_input_names_file_line_and_what_to_do(tmp_path, files, kwargs, where, message):
    (tmp_path / "train.csv").write_text(GOOD)
    (tmp_path / "test.csv").write_text(GOOD)
    for name, content in files.items():
        if name.startswith(("train.", "test.")) and name != f"{name.split('.')[0]}.csv":
            (tmp_path / f"{name.split('.')[0]}.csv").unlink()  # the file given in another format replaces it
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        own_data.open_dataset(str(tmp_path), **kwargs)
    text = str(err.value)
    assert text.startswith(str(tmp_path / where) if where else "--labels"), text
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("encoding, byte, source", [("cp1252", "0xe9", "cp1252"), ("utf-16", "", "UTF-16LE")])
def test_not_utf8_names_the_line_and_the_encoding(tmp_path, encoding, byte, source):
    (tmp_path / "train.csv").write_bytes("text,label\nfine,a\ncafé au lait,b\n".encode(encoding))
    (tmp_path / "test.csv").write_text(GOOD)
    with pytest.raises(ValueError) as err:
        own_data.open_dataset(str(tmp_path))
    where = f"{tmp_path / 'train.csv'}" + (":3: not UTF-8 (byte 0xe9)" if byte else ": UTF-16LE, not UTF-8")
    assert str(err.value).startswith(where) and f"iconv -f {source} -t UTF-8" in str(err.value), str(err.value)


def test_folder_without_training_file(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    with pytest.raises(FileNotFoundError, match=r"has no train.jsonl, train.csv or train.tsv \(it holds: "
                                                r"train.parquet\)"):
        own_data.open_dataset(str(tmp_path))
    (tmp_path / "train.csv").write_text(GOOD)
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "b"}\n')
    with pytest.raises(ValueError, match="holds train.jsonl and train.csv: keep one train file"):
        own_data.open_dataset(str(tmp_path))


def test_cli_bad_file_is_one_line_and_trains_nothing(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.csv").write_text("text,label\nfine,a\nalso,b\n,a\n")
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", str(tmp_path / "mine"),
                          "--test-fraction", "0.5", "--model", str(write_tiny_encoder(tmp_path / "enc")),
                          "--max-length", "48", "--out", str(tmp_path / "runs")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    want = (f"train.py: error: {tmp_path / 'mine' / 'train.csv'}:4: the text in 'text' is empty; every example "
            "needs one (fill it in or remove the line)")
    assert out.stderr.strip().splitlines() == [want]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- training on it


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("enc") / "enc")


@pytest.fixture(scope="module")
def small(data_dir, tmp_path_factory):
    """The first examples of the real acl and restaurant files, in the registered layout: short runs, on CPU."""
    root = tmp_path_factory.mktemp("small")
    (root / "acl").mkdir()
    for split, n in (("train", 300), ("dev", 40), ("test", 80)):
        lines = (data_dir / "acl" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (root / "acl" / f"{split}.jsonl").write_text("".join(lines[:n]), encoding="utf-8")
    (root / "restaurant").mkdir()
    for name, n in (("Restaurants_Train_v2.xml", 150), ("Restaurants_Test_Gold.xml", 50)):  # sentences
        tree = ET.parse(data_dir / "restaurant" / name)
        for sentence in list(tree.getroot())[n:]:
            tree.getroot().remove(sentence)
        tree.write(root / "restaurant" / name, encoding="utf-8", xml_declaration=True)
    folders = {(name, fmt): convert(root, name, fmt, root) for name, fmt in (("acl", "csv"), ("restaurant", "jsonl"))}
    folders["acl", "names"] = convert(root, "acl", "jsonl", root, names=True)
    return root, folders


def fit(enc, out, *argv, epochs=1):
    return train.main([*argv, "--model", str(enc), "--out", str(out), "--epochs", str(epochs), "--lr", "3e-3",
                       "--batch-size", "32", "--max-length", "48"])


@pytest.fixture(scope="module")
def reference(small, enc, tmp_path_factory):
    """name -> (result, metrics.jsonl) of a run on the registered dataset (the small copy), made once."""
    out, runs = tmp_path_factory.mktemp("reference"), {}

    def get(name):
        if name not in runs:
            (result,) = fit(enc, out, "--dataset", name, "--data-dir", str(small[0]))
            runs[name] = result, out / name / "enc" / "seed1" / "metrics.jsonl"
        return runs[name]
    return get


def metrics_lines(path):
    return without_timings([json.loads(line) for line in path.read_text().splitlines()])


@pytest.mark.parametrize("name, fmt", [("acl", "csv"), ("restaurant", "jsonl")])
def test_training_on_converted_files_gives_the_registered_metrics(small, reference, enc, tmp_path, name, fmt):
    ref, ref_metrics = reference(name)
    (own,) = fit(enc, tmp_path, "--dataset", str(small[1][name, fmt]), *cli_flags(name))
    splits = [s for s in data.DATASETS[name].splits if s != "train"]
    assert {s: own[s] for s in splits} == {s: ref[s] for s in splits}
    assert own["dataset"] == f"{name}-{fmt}" and own["steps"] == ref["steps"] > 1
    assert metrics_lines(tmp_path / f"{name}-{fmt}" / "enc" / "seed1" / "metrics.jsonl") == metrics_lines(ref_metrics)


def test_label_names_reach_config_export_and_evaluate(small, reference, enc, tmp_path):
    folder = str(small[1]["acl", "names"])
    given = ["--dataset", folder, *cli_flags("acl"), "--labels", ",".join(ACL_NAMES)]
    (own,) = fit(enc, tmp_path, *given, "--save")
    assert own["test"] == reference("acl")[0]["test"]
    run = tmp_path / "acl-jsonl-names" / "enc" / "seed1"
    assert json.loads((run / "config.json").read_text())["labels"] == own["labels"] == ACL_NAMES
    exported = json.loads((run / "model" / "config.json").read_text())["id2label"]
    assert exported == {str(i): n for i, n in enumerate(ACL_NAMES)}  # what transformers reads as the label names
    checkpoint = ["evaluate", "--model", str(run / "model"), "--max-length", "48"]
    assert evaluation.main([*checkpoint, *given]) == own["test"]
    assert evaluation.main([*checkpoint, *given, "--split", "dev"]) == own["dev"]
    with pytest.raises(ValueError, match="labels its classes"):  # the sorted default order is another label set
        evaluation.main([*checkpoint, "--dataset", folder, *cli_flags("acl")])


def test_adapters_seeds_summarize_and_plot(enc, tmp_path):
    task = write_keyword_task(tmp_path / "task", sizes=(150, 30, 40))
    mine = tmp_path / "keywords"
    mine.mkdir()
    for split in ("train", "dev", "test"):  # the acl-format keyword task as csv, with a given run name
        records = [json.loads(line) for line in (task / "acl" / f"{split}.jsonl").read_text().splitlines()]
        write_csv(mine / f"{split}.csv", ["body", "intent"], [[r["text"], r["label"]] for r in records])
    common = ["--dataset", str(mine), "--text-column", "body", "--label-column", "intent", "--dataset-name", "kw"]
    full = fit(enc, tmp_path / "runs", *common, "--seeds", "1", "2")
    adapted = fit(enc, tmp_path / "runs", *common, "--adapter", "--bottleneck", "8")
    assert [r["seed"] for r in full] == [1, 2] and full[0]["test"] != full[1]["test"]
    assert adapted[0]["trainable_params"] < adapted[0]["total_params"]
    assert sorted(p.name for p in (tmp_path / "runs" / "kw").iterdir()) == ["enc", "enc-adapter"]
    rows = {r["model"]: r for r in report.summarize(tmp_path / "runs")}
    assert rows["enc"]["dataset"] == "kw" and rows["enc"]["n"] == 2
    assert rows["enc"]["accuracy"]["values"] == [r["test"]["accuracy"] for r in full]
    written = report.plot(tmp_path / "runs", tmp_path / "figures")
    assert sorted(p.name for p in written) == ["kw.png", "peft_vs_full_enc.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
