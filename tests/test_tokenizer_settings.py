"""Every tokenizer setting in a checkpoint's files is honoured as transformers 5 honours it, or refused.

Oracle: `transformers.AutoTokenizer.from_pretrained(folder)` on the same folder, compared id for id
on real dataset texts and pairs plus a few texts that exercise the settings (case, accents,
Chinese characters, special tokens in the text). What transformers 5.24 does, found by these
tests: for BertTokenizer / RobertaTokenizer (named by tokenizer_config.json, or by config.json's
model_type) it rebuilds the pipeline from tokenizer_config.json's settings and takes only the
vocabulary from tokenizer.json, so tokenizer_config.json wins a disagreement on lower-casing and a
BERT folder that does not say do_lower_case is lower-cased whatever tokenizer.json says.
"""

import json
import shutil

import pytest

import model
from helpers import real_texts

EXTRA = ["Hello World", "Héllo wörld, naïve CAFÉ", "中文 text 日本語 mixed", "UPPER lower MiXeD Case",
         "a [SEP] inside", "ACL-ARC: 12.5% of 2,000 citations", "ﬁne-tuning ＢＥＲＴ"]


@pytest.fixture(scope="module")
def texts(shared_dir):
    singles, pairs = real_texts(shared_dir / "data", "train", 60, 30, "Restaurants_Test_Gold.xml", 40)
    return singles + EXTRA, pairs + [("Hello", "World"), ("CAFÉ", "中文")]


def folder(tmp_path, name, files: dict):
    """A checkpoint folder: values are source paths to copy, or dicts to write as JSON."""
    d = tmp_path / name
    d.mkdir()
    for filename, content in files.items():
        if isinstance(content, dict):
            (d / filename).write_text(json.dumps(content))
        else:
            shutil.copy(content, d / filename)
    return d


def oracle(directory):
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def assert_same_ids(directory, texts):
    singles, pairs = texts
    hf, ours = oracle(directory), model.load_tokenizer(directory)
    assert [e.ids for e in ours.encode_batch(singles)] == hf(singles)["input_ids"]
    want = hf([a for a, _ in pairs], [b for _, b in pairs])
    got = ours.encode_batch(pairs)
    assert [e.ids for e in got] == want["input_ids"]
    if "token_type_ids" in want:
        assert [e.type_ids for e in got] == want["token_type_ids"]
    return hf, ours


@pytest.fixture(scope="module")
def files(shared_dir, minilm_dir):
    tok = shared_dir / "tokenizers"
    lower = json.loads((minilm_dir / "tokenizer.json").read_text())
    cased = {**lower, "normalizer": {**lower["normalizer"], "lowercase": False}}
    return {"roberta": {"vocab.json": tok / "roberta-base" / "vocab.json", "merges.txt": tok / "roberta-base" /
                        "merges.txt", "config.json": {"model_type": "roberta"}},
            "bert": {"vocab.txt": tok / "bert-base-uncased" / "vocab.txt", "config.json": {"model_type": "bert"}},
            "lower_json": lower, "cased_json": cased}


def test_roberta_add_prefix_space(tmp_path, files, texts):
    d = folder(tmp_path, "r", {**files["roberta"], "tokenizer_config.json": {"add_prefix_space": True}})
    hf, ours = assert_same_ids(d, texts)
    assert hf.convert_ids_to_tokens(hf("Hello")["input_ids"]) == ["<s>", "ĠHello", "</s>"]  # the oracle's word
    assert ours.encode("Hello").tokens == ["<s>", "ĠHello", "</s>"]
    plain = model.load_tokenizer(folder(tmp_path, "plain", files["roberta"]))
    assert plain.encode("Hello").tokens == ["<s>", "Hello", "</s>"]  # the default is still no prefix space


def test_roberta_trim_offsets_and_special_tokens(tmp_path, files, texts):
    d = folder(tmp_path, "r", {**files["roberta"], "tokenizer_config.json": {
        "add_prefix_space": True, "trim_offsets": False, "cls_token": {"content": "<unk>", "__type": "AddedToken"}, "sep_token": "<pad>"}})
    _, ours = assert_same_ids(d, texts)
    assert ours.encode("a", "b").tokens[:2] == ["<unk>", "Ġa"]


@pytest.mark.parametrize("lower", [True, False], ids=["config-lowercases", "config-cased"])
def test_tokenizer_config_wins_over_tokenizer_json_on_lower_casing(tmp_path, files, texts, lower):
    """tokenizer.json says the opposite of tokenizer_config.json's do_lower_case: transformers follows
    tokenizer_config.json, and so must we."""
    d = folder(tmp_path, "b", {"tokenizer.json": files["cased_json"] if lower else files["lower_json"],
                               "config.json": {"model_type": "bert"},
                               "tokenizer_config.json": {"tokenizer_class": "BertTokenizer", "do_lower_case": lower}})
    hf, ours = assert_same_ids(d, texts)
    lowered = hf("hello world")["input_ids"]
    assert hf.unk_token_id not in lowered, "oracle is broken"
    assert (hf("Hello World")["input_ids"] == lowered) is lower  # the oracle did follow tokenizer_config.json
    assert (ours.encode("Hello World").ids == lowered) is lower


def test_bert_without_do_lower_case_is_lower_cased(tmp_path, files, texts):
    """A cased tokenizer.json in a BERT folder that does not say do_lower_case: transformers lower-cases
    (BertTokenizer's default), whatever tokenizer.json's normalizer says."""
    d = folder(tmp_path, "b", {"tokenizer.json": files["cased_json"], "config.json": {"model_type": "bert"}})
    hf, ours = assert_same_ids(d, texts)
    assert ours.encode("Hello World").ids == hf("hello world")["input_ids"]


@pytest.mark.parametrize("settings", [
    {"strip_accents": False},
    {"do_lower_case": False, "strip_accents": True},
    {"tokenize_chinese_chars": False},
    {"cls_token": "[unused0]", "sep_token": {"content": "[unused1]", "__type": "AddedToken"}},
    {"additional_special_tokens": ["text"], "unk_token": "[unused5]"},
], ids=["keep-accents", "cased-strip-accents", "no-chinese-split", "special-tokens", "extra-special"])
def test_bert_settings(tmp_path, files, texts, settings):
    d = folder(tmp_path, "b", {**files["bert"], "tokenizer_config.json": settings})
    assert_same_ids(d, texts)
    default = model.load_tokenizer(folder(tmp_path, "default", files["bert"]))
    singles, _ = texts
    ours = model.load_tokenizer(d)
    assert [e.ids for e in ours.encode_batch(singles)] != [e.ids for e in default.encode_batch(singles)], \
        "the setting changed nothing on these texts: the test would prove nothing"


@pytest.mark.parametrize("cls", ["PreTrainedTokenizerFast", None], ids=["class", "no-config-json"])
def test_tokenizer_json_as_it_is(tmp_path, files, texts, cls):
    """No tokenizer class: transformers reads tokenizer.json as it is (here cased), ignoring do_lower_case."""
    d = folder(tmp_path, "t", {"tokenizer.json": files["cased_json"], "tokenizer_config.json":
                               {"do_lower_case": True, **({"tokenizer_class": cls} if cls else {})}})
    _, ours = assert_same_ids(d, texts)
    assert ours.encode("Hello").tokens == ["[CLS]", "[UNK]", "[SEP]"]


@pytest.mark.parametrize("settings,message", [
    ({"tokenizer_class": "XLNetTokenizer"}, "tokenizer_class 'XLNetTokenizer' is not supported"),
    ({"split_special_tokens": True}, "split_special_tokens=True is not supported"),
    ({"padding_side": "left"}, "padding_side='left' is not supported"),
    ({"truncation_side": "left"}, "truncation_side='left' is not supported"),
    ({"cls_token": "[NOPE]"}, "cls_token '[NOPE]' is not in the vocabulary"),
])
def test_settings_we_cannot_follow_are_refused(tmp_path, files, settings, message):
    d = folder(tmp_path, "b", {**files["bert"], "tokenizer_config.json": settings})
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        model.load_tokenizer(d)
    assert str(d / "tokenizer_config.json") in str(e.value)
