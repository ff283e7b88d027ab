"""Users' files, by kind of fault: what Python's own readers accept loads, and every diagnosis is true.

Oracles: Python's csv and json modules (what they read, we read: long fields included), the file's own
bytes (a diagnosis must name the line that holds the bad byte and the encoding the bytes really decode
as), and the fix a message gives, run as written with the system's iconv / tr / mv: the fixed file must
load, with the texts the user wrote.
"""

import csv
import json
import re
import subprocess

import pytest

import data
import own_data

GOOD = "text,label\nfine,a\nalso fine,b\n"


def load_one(path, **kwargs):
    """(labels, train examples) of `path` as the training file, with a plain test file beside it."""
    test = path.parent / "other" / "test.csv"
    test.parent.mkdir(exist_ok=True)
    test.write_text(kwargs.pop("test", GOOD))
    return own_data.read_own({"train": path, "test": test}, **kwargs)


def error_of(path, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        load_one(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def run_fix(message: str, cwd) -> None:
    """Run the command a message ends with, as a user would paste it."""
    command = re.search(r"((?:iconv|tr|mv|python3?) .*)$", message)
    assert command, f"no command to run at the end of: {message}"
    done = subprocess.run(command[1], shell=True, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, (command[1], done.stderr)


# ---------------------------------------------------------------------------- long fields

@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("length", [131_072, 131_073, 2_000_000])
@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_long_texts_load_as_pythons_readers_read_them(tmp_path, fmt, length, quoted):
    """csv's default field limit is 131,072 characters: a longer text is no quoting error. The text is
    read exactly (a reader's own limit must not leak out: the global limit is the same afterwards)."""
    long = ("word, " if fmt == "csv" and quoted else "word ") * (length // 5 + 1)
    long = long[:length].rstrip() + "x"
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in [(long, "a"), ("b", "b")]))
    else:
        with open(path, "w", newline="") as f:
            csv.writer(f, delimiter="," if fmt == "csv" else "\t",
                       quoting=csv.QUOTE_ALL if quoted else csv.QUOTE_MINIMAL).writerows(
                [["text", "label"], [long, "a"], ["short", "b"], ["pair", "a"]])
    before = csv.field_size_limit()
    labels, examples = load_one(path)
    assert csv.field_size_limit() == before
    assert labels == ["a", "b"] and examples["train"][0] == data.Example(long, None, 0)


def test_a_long_label_field_or_header_loads_too(tmp_path):
    name = "n" * 200_000
    (tmp_path / "train.csv").write_text(f"text,label,{name}\nx,a,1\ny,{name},2\n")
    labels, examples = load_one(tmp_path / "train.csv", test=f"text,label\nz,{name}\n")
    assert labels == ["a", name] and examples["test"] == [data.Example("z", None, 1)]


# ---------------------------------------------------------------------------- encodings: name what the bytes are

TEXT = "text,label\nfine,a\ncafé au lait,b\nthird line,a\nsmörgåsbord,b\n"
ROWS = [("fine", "a"), ("café au lait", "b"), ("third line", "a"), ("smörgåsbord", "b")]


def assert_rows(path):
    labels, examples = load_one(path)
    assert [(e.text, labels[e.label]) for e in examples["train"]] == ROWS


@pytest.mark.parametrize("codec, bom", [("utf-16-le", True), ("utf-16-be", True), ("utf-16-le", False),
                                        ("utf-16-be", False), ("utf-32-le", True), ("utf-32-be", True)])
def test_utf16_and_utf32_are_named_with_their_byte_order_and_the_command_converts_them(tmp_path, codec, bom):
    raw = TEXT.encode(codec)
    if bom:
        raw = ("\ufeff" + TEXT).encode(codec)
    path = tmp_path / "train.csv"
    path.write_bytes(raw)
    message = error_of(path)
    name = codec.upper().replace("-LE", "LE").replace("-BE", "BE")  # iconv's names: UTF-16LE, UTF-32BE, ...
    assert f": {name}, not UTF-8" in message, message
    run_fix(message, tmp_path)
    converted = re.search(r"use (\S+) in place of", message)[1]
    assert_rows(tmp_path / converted)


@pytest.mark.parametrize("where", range(0, 70, 3))
def test_a_stray_nul_byte_in_utf8_is_named_at_its_line_never_utf16(tmp_path, where):
    """A NUL byte at every position of the file (even and odd offsets, next to line breaks, in the
    header): no UTF-16 claim, the NUL's own line, and a command that removes it and gives the texts back."""
    raw = TEXT.encode("utf-8")
    where = min(where, len(raw))
    path = tmp_path / "train.csv"
    path.write_bytes(raw[:where] + b"\x00" + raw[where:])
    message = error_of(path)
    assert not re.search(r"UTF-16\w*, not UTF-8", message) and "iconv" not in message, message
    line = raw.count(b"\n", 0, where) + 1
    assert message.startswith(f"{path}:{line}: "), message
    assert "NUL byte" in message
    run_fix(message, tmp_path)
    assert_rows(tmp_path / re.search(r"use (\S+) in place of", message)[1])


def test_a_nul_byte_in_jsonl_is_named_at_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "b\x00ad", "label": "b"}\n')
    message = error_of(path)
    assert message.startswith(f"{path}:2: ") and "NUL byte" in message, message
    assert not re.search(r"UTF-16\w*, not UTF-8", message) and "iconv" not in message, message


def test_cp1252_is_offered_with_the_line_as_it_would_read_and_the_command_converts_it(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(TEXT.encode("cp1252"))
    message = error_of(path)
    assert message.startswith(f"{path}:3: not UTF-8 (byte 0xe9)") and "'café au lait,b'" in message, message
    run_fix(message, tmp_path)
    assert_rows(tmp_path / re.search(r"use (\S+) in place of", message)[1])


def test_utf8_with_one_bad_byte_is_not_called_cp1252(tmp_path):
    """Converting a UTF-8 file from cp1252 would garble every accent in it: the message says it is UTF-8
    with one bad byte, and its command drops only that byte."""
    raw = TEXT.encode("utf-8").replace(b"third", b"th\xffird")
    path = tmp_path / "train.csv"
    path.write_bytes(raw)
    message = error_of(path)
    assert message.startswith(f"{path}:4: not UTF-8 (byte 0xff)") and "cp1252" not in message, message
    run_fix(message, tmp_path)
    assert_rows(tmp_path / re.search(r"use (\S+) in place of", message)[1])


def test_neither_utf8_nor_cp1252_claims_no_encoding(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\nfine,a\n中文,b\n".encode("gbk"))  # 0xd6 0xd0 ...: and 0x81 is not cp1252
    path.write_bytes(path.read_bytes().replace(b"fine", b"\x81\x40"))
    message = error_of(path)
    assert message.startswith(f"{path}:2: not UTF-8 (byte 0x81)"), message
    assert "cp1252" in message and "latin-1" not in message and "file -i" in message, message


# ---------------------------------------------------------------------------- delimiters and field counts

@pytest.mark.parametrize("texts", [["fine", "also fine"], ["a, b", "c"]], ids=["no-commas", "commas"])
def test_a_tab_separated_csv_is_named_and_renaming_it_works(tmp_path, texts):
    path = tmp_path / "train.csv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, "ab")))
    message = error_of(path)
    assert message.startswith(f"{path}:1: ") and "looks tab-separated: rename it to .tsv" in message, message
    assert "comma must be quoted" not in message
    run_fix(message, tmp_path)
    _, examples = load_one(tmp_path / "train.tsv")
    assert [e.text for e in examples["train"]] == texts


def test_a_comma_separated_tsv_is_named(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("text,label\nfine,a\nalso fine,b\n")
    message = error_of(path)
    assert "looks comma-separated: rename it to .csv" in message, message
    run_fix(message, tmp_path)
    assert load_one(tmp_path / "train.csv")[0] == ["a", "b"]


def test_a_semicolon_separated_csv_is_named(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text;label\nfine;a\nalso fine;b\n")
    message = error_of(path)
    assert "looks semicolon-separated" in message and "pass --text-column" not in message, message


@pytest.mark.parametrize("row, line, cause", [
    ("no label", 3, "a value is missing"),
    ("two\nlines,b", 3, "a value is missing"),
    ("a, b,a", 3, "a text holding a comma must be quoted"),
    ("x,a,", 3, "a text holding a comma must be quoted"),
])
def test_a_wrong_field_count_names_the_cause_it_can_be(tmp_path, row, line, cause):
    path = tmp_path / "train.csv"
    path.write_text(f"text,label\nfine,a\n{row}\n")
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: ") and cause in message, message
    assert "1 fields" not in message


@pytest.mark.parametrize("row, cause", [
    ('"quoted" then not,b', "quote the whole text"),
    ('"never closed,b\nmore,a', "never closed"),
])
def test_quoting_errors_name_what_is_wrong(tmp_path, row, cause):
    path = tmp_path / "train.csv"
    path.write_text(f"text,label\nfine,a\n{row}\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: ") and cause in message, message


def test_a_json_list_is_not_json_lines_and_the_command_converts_it(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps([{"text": t, "label": y} for t, y in ROWS], indent=2))
    message = error_of(path)
    assert "a JSON list" in message, message
    run_fix(message, tmp_path)
    assert_rows(tmp_path / re.search(r"use (\S+) in place of", message)[1])


def test_messages_say_an_int(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": 7, "label": "a"}\n')
    assert "is an int" in error_of(path)


# ---------------------------------------------------------------------------- labels keep their text

SPELLINGS = ["01", "1", "001", "02", "2"]


def write_labels(path, labels):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": f"t{i}", "label": y}) + "\n" for i, y in enumerate(labels)))
    else:
        with open(path, "w", newline="") as f:
            csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",").writerows(
                [["text", "label"], *[[f"t{i}", y] for i, y in enumerate(labels)]])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_spellings_of_one_number_are_different_labels(tmp_path, fmt):
    path = tmp_path / f"train.{fmt}"
    write_labels(path, SPELLINGS * 2)
    labels, examples = load_one(path, test="text,label\nx,001\ny,2\n")
    assert labels == sorted(SPELLINGS)  # not all plain integers: by code point, as the names they are
    assert [labels[e.label] for e in examples["train"]] == SPELLINGS * 2
    assert [labels[e.label] for e in examples["test"]] == ["001", "2"]
    given, examples = load_one(path, labels=SPELLINGS, test="text,label\nx,001\ny,2\n")
    assert given == SPELLINGS and [e.label for e in examples["test"]] == [2, 4]


@pytest.mark.parametrize("seed", range(20))
def test_any_labels_are_their_text(tmp_path, seed):
    """Random labels from digits, signs, leading zeros, spaces and letters, in csv and JSON (strings, and
    integers where they are integers): one class per distinct text (surrounding spaces stripped); numeric
    order only when every training label is a plain integer (no sign +, no leading zero)."""
    import random
    rng = random.Random(seed)
    pool = ["0", "1", "2", "10", "-1", "-10", "01", "001", "+1", "00", "-0", "1.0", "1e3", "x", "X", " 2", "3 "]
    plain = ["0", "1", "2", "10", "-1", "-10", "7", "12"]
    labels = rng.choices(plain if seed % 2 else pool, k=12)
    if len({y.strip() for y in labels}) < 2:
        labels += ["5", "6"]
    for fmt in ("csv", "jsonl"):
        path = tmp_path / fmt / f"train.{fmt}"
        path.parent.mkdir()
        values = [int(y) if fmt == "jsonl" and seed % 4 == 1 else y for y in labels]  # JSON integers too
        write_labels(path, values)
        names, examples = load_one(path, test="text,label\n" + "".join(f"x,{y}\n" for y in labels))
        texts = sorted({y.strip() for y in labels})
        if all(re.fullmatch(r"0|-?[1-9][0-9]*", y.strip()) for y in labels):
            texts.sort(key=int)
        assert names == texts, (fmt, labels)
        assert [names[e.label] for e in examples["train"]] == [y.strip() for y in labels]


def test_labels_flag_takes_any_spelling_and_refuses_a_repeat(tmp_path):
    path = tmp_path / "train.csv"
    write_labels(path, ["1", "2", "10"])
    assert load_one(path, labels=["10", "2", "1"], test="text,label\nx,1\n")[0] == ["10", "2", "1"]
    with pytest.raises(ValueError, match="label '1' is not in --labels"):
        load_one(path, labels=["01", "2", "10"], test="text,label\nx,1\n")
    with pytest.raises(ValueError, match="lists a label twice"):
        load_one(path, labels=["1", "2", "10", "2"], test="text,label\nx,1\n")
    with pytest.raises(ValueError, match="has an empty label"):
        load_one(path, labels=["1", "", "2", "10"], test="text,label\nx,1\n")
