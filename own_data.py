"""Your own data, and the dataset flags that train.py and eval.py share.

`--dataset` names a registered dataset (data.py), a folder, or a Hub dataset repo (`hub:owner/name`) holding
train/test(/dev) `.jsonl`, `.csv` or `.tsv` files; `--train-file` / `--dev-file` / `--test-file` name files
directly. They are read with the standard library's `json` and `csv` (strict quoting, RFC 4180) and checked
whole before anything trains: a bad value is an error naming the file and the line. Labels are the text in
the file; `--labels` fixes their class-id order. `--test-fraction` holds out rows exactly as agnews' split
does (seed 2022). `open_dataset` is the one entry point, for registered datasets too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from common import UsageError, env_true
from data import DATASETS, Example, _holdout, _hub_cache_dir, load_split

OWN_FORMATS = (".jsonl", ".csv", ".tsv")


OWN_SPLITS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}  # split -> file stems


_PLAIN_INTEGER = re.compile(r"0|-?[1-9][0-9]*")  # one text per number: sorted numerically


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to tokenize, registered or your own (`open_dataset` builds it).

    `name` is what its runs are filed under (runs/<name>/...), `labels` the class names (index =
    class id), `examples` split -> examples in the order train, dev, test (the splits it has).
    """
    name: str
    labels: list[str]
    examples: dict[str, list[Example]] = field(repr=False)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.examples)


def run_name(dataset: str | None, train_file: str | None = None, given: str | None = None) -> str:
    """The name runs of `--dataset` / `--train-file` are filed under; checks the spelling, reads no file.

    A registered name wins; then `hub:owner/name` (named owner--name); then an existing folder (named
    after it). With `--train-file` the name is the folder holding that file. `given` (--dataset-name)
    overrides the last three; a registered name is refused for them, so their runs never mix.
    """
    if dataset is not None and train_file is not None:
        raise UsageError("--dataset and --train-file both name the training data: pass one of them")
    if dataset in DATASETS:
        if given not in (None, dataset):
            raise UsageError(f"--dataset-name names your own data; {dataset} is a registered dataset")
        return dataset
    spellings = (f"a registered name ({', '.join(DATASETS)}), a folder holding train.* and test.* "
                 f"({', '.join(OWN_FORMATS)}), or hub:owner/name")
    if dataset is None and train_file is None:
        raise UsageError(f"pass --dataset: {spellings}; or --train-file FILE")
    if dataset is not None and dataset.startswith("hub:"):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset[4:]):
            raise UsageError(f"--dataset {dataset}: a Hub dataset is spelled hub:owner/name")
        default = dataset[4:].replace("/", "--")
    elif dataset is not None:
        if not Path(dataset).is_dir():
            hint = f" ({dataset} is a file: pass it as --train-file)" if Path(dataset).is_file() else ""
            raise UsageError(f"unknown dataset {dataset!r}{hint}; --dataset takes {spellings}")
        default = Path(dataset).resolve().name
    else:
        default = Path(train_file).resolve().parent.name
    name = given or default
    if name in DATASETS or not re.fullmatch(r"[\w][\w.-]*", name):
        why = "is a registered dataset's" if name in DATASETS else "is not a plain folder name"
        raise UsageError(f"your data's run-folder name {name!r} {why}: pass --dataset-name NAME")
    return name


def own_files(directory: str | os.PathLike) -> dict[str, Path]:
    """split -> file of a folder holding train.*, test.* and dev.* or validation.* (.jsonl, .csv or .tsv)."""
    directory = Path(directory)
    found = {}
    for split, stems in OWN_SPLITS.items():
        hits = [directory / (s + ext) for s in stems for ext in OWN_FORMATS if (directory / (s + ext)).is_file()]
        if len(hits) > 1:
            raise UsageError(f"{directory} holds {' and '.join(h.name for h in hits)}: keep one {split} file")
        if hits:
            found[split] = hits[0]
    if "train" not in found:
        holds = ", ".join(sorted(p.name for p in directory.iterdir())[:10]) or "nothing"
        raise FileNotFoundError(f"{directory} has no train.jsonl, train.csv or train.tsv (it holds: {holds}); "
                                "name your files train.*, test.* (and dev.*), or pass --train-file FILE")
    return found


def _hub_snapshot(repo: str) -> Path:
    """The local folder of a Hub dataset repo's train/dev/validation/test files (downloaded once, then cached)."""
    from huggingface_hub import snapshot_download
    offline = env_true("HF_HUB_OFFLINE")
    patterns = [stem + ext for stems in OWN_SPLITS.values() for stem in stems for ext in OWN_FORMATS]
    try:
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns,
                                      cache_dir=_hub_cache_dir(), local_files_only=offline))
    except Exception as err:  # noqa: BLE001  (offline, no network, missing repo: the same advice)
        how = "offline (HF_HUB_OFFLINE=1) and not in the cache" if offline else "could not download it"
        raise FileNotFoundError(
            f"hub:{repo}: the Hub dataset repo {repo!r}: {how} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Download it once where the Hub is reachable, "
            f"or pass --dataset DIR with local copies of its train.*/test.* files.") from None


BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"), (b"\xff\xfe", "UTF-16LE"),
        (b"\xfe\xff", "UTF-16BE"))  # UTF-32LE's mark starts like UTF-16LE's: the longer one first


def _utf16_or_32(raw: bytes) -> tuple[str, str] | None:
    """(iconv's name of the encoding, why) when the bytes are UTF-16 or UTF-32, else None: a byte-order mark,
    or a strict UTF-16 decode into text that keeps the file's line breaks. A UTF-8 file with a stray NUL byte
    also decodes as UTF-16 (into CJK-like characters), but its 0x0A bytes then end up inside characters."""
    for bom, codec in BOMS:
        if raw.startswith(bom):
            return codec, "its byte-order mark says so"
    if b"\x00" not in raw:
        return None
    for codec in ("UTF-16LE", "UTF-16BE"):
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text and 2 * text.count("\n") > raw.count(b"\n"):
            return codec, "it has no byte-order mark but decodes as such, line breaks and all"
    return None


def _converted(path: Path) -> Path:
    """Where a suggested command writes the fixed copy of `path`: beside it, train.csv -> train.utf8.csv."""
    return path.with_name(f"{path.stem}.utf8{path.suffix}")


def _decode(path: Path) -> str:
    """The text of a UTF-8 file (a UTF-8 byte-order mark dropped); else a UsageError that names what the bytes
    are (UTF-16/32, a stray NUL byte, cp1252, UTF-8 with a bad byte, or unknown), the line, and a command
    that writes a fixed copy beside the file."""
    raw = path.read_bytes()
    out, q = _converted(path), shlex.quote
    fix = f"then use {out.name} in place of {path.name}:"
    if found := _utf16_or_32(raw):
        codec, why = found
        raise UsageError(f"{path}: {codec}, not UTF-8 ({why}); convert it, {fix} "
                         f"iconv -f {codec} -t UTF-8 {q(str(path))} > {q(str(out))}")
    if b"\x00" in raw:  # no text holds one (a damaged export, or a binary file); UTF-8 never uses it in a character
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise UsageError(f"{path}:{line}: a NUL byte (0x00), which no text holds, and the file does not read as "
                         f"UTF-16 either; remove the NUL bytes, {fix} tr -d '\\000' < {q(str(path))} > {q(str(out))}")
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 byte-order mark (Excel writes one) is no part of the first column
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        head = f"{path}:{line}: not UTF-8 (byte 0x{raw[err.start]:02x})"
        bad_line = raw[raw.rfind(b"\n", 0, err.start) + 1:].split(b"\n", 1)[0]
        utf8 = sum(ord(c) > 127 for c in raw.decode("utf-8", errors="replace").replace("\ufffd", ""))
        if utf8:  # UTF-8 elsewhere: a conversion from cp1252 would garble those characters
            raise UsageError(f"{head}, yet {utf8} other non-ASCII character(s) in it are UTF-8: it is UTF-8 with "
                             f"damaged bytes; fix the line by hand, or drop the bytes that are not UTF-8, {fix} "
                             f"iconv -c -f UTF-8 -t UTF-8 {q(str(path))} > {q(str(out))}") from None
        try:
            raw.decode("cp1252")
        except UnicodeDecodeError:
            raise UsageError(f"{head}, nor cp1252: find its encoding (`file -i {q(str(path))}` guesses it) and "
                             f"convert it: iconv -f ENCODING -t UTF-8 {q(str(path))} > {q(str(out))}") from None
        # Windows' Western encoding, what a non-UTF-8 spreadsheet export usually is; the user sees if the line reads right
        shown = bad_line.decode("cp1252").rstrip("\r")[:80]
        raise UsageError(f"{head}; as cp1252 (Windows' Western European) line {line} reads {shown!r}: if that is "
                         f"right, convert it, {fix} iconv -f cp1252 -t UTF-8 {q(str(path))} > {q(str(out))}") from None


DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def _one_column_header(path: Path, header: list[str], delimiter: str) -> str | None:
    """Why a header of one column is another delimiter's file, or None."""
    others = [d for d in DELIMITERS if d != delimiter and d in header[0]]
    if len(header) != 1 or not others:
        return None
    name = DELIMITERS[others[0]]
    if others[0] in ",\t":  # the other format this project reads
        suffix = ".tsv" if others[0] == "\t" else ".csv"
        fix = f"rename it to {suffix}: mv {shlex.quote(str(path))} {shlex.quote(str(path.with_suffix(suffix)))}"
    else:  # e.g. Excel's CSV in locales with a decimal comma
        fix = "save it with commas between the columns (.csv) or tabs (.tsv)"
    return (f"{path}:1: the header is the one column {header[0][:60]!r}: the file looks {name}-separated: {fix}")


def _read_table(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, row)]) of a .csv/.tsv text with a header row; a row's line is where it starts."""
    kind, delimiter = ("TSV", "\t") if path.suffix == ".tsv" else ("CSV", ",")
    # strict: a quote in the wrong place is an error, not a field that silently swallows the next lines
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, rows, start = None, [], 1
    limit = csv.field_size_limit()  # 131,072 characters by default; long documents are valid CSV
    csv.field_size_limit(max(limit, len(text)))  # no field is longer than the file; set back below
    try:
        for fields in reader:
            if fields and header is None:
                header = [name.strip() for name in fields]
                if problem := _one_column_header(path, header, delimiter):
                    raise UsageError(problem)
                if len(set(header)) < len(header):
                    twice = sorted({n for n in header if header.count(n) > 1})
                    raise UsageError(f"{path}:{start}: the header names {', '.join(map(repr, twice))} more than "
                                     "once; give every column its own name")
            elif fields:
                n, want = len(fields), len(header)
                if n > want:
                    raise UsageError(f"{path}:{start}: {n} fields, the header has {want}: a text holding a "
                                     f"{'tab' if kind == 'TSV' else 'comma'} must be quoted (\"a, b\"), with "
                                     'its own quotes doubled (""); or remove the extra separator')
                if n < want:
                    raise UsageError(f"{path}:{start}: {n} field{'s' if n > 1 else ''}, the header has {want}: a "
                                     "value is missing (fill in every column), or a text holding a line break "
                                     "is not quoted (quote it)")
                rows.append((start, dict(zip(header, fields))))
            start = reader.line_num + 1
    except csv.Error as err:
        if "end of data" in str(err):  # the reader ran to the end of the file inside a quoted field
            raise UsageError(f"{path}:{start}: a quoted text starting in this row is never closed ({err}): close "
                             'its quote, and double every quote inside it ("")') from None
        raise UsageError(f"{path}:{start}: {kind} quoting error ({err}): a text that starts with a quote must "
                         'end with one; quote the whole text and double the quotes inside it ("say ""hi"" '
                         'there")') from None
    finally:
        csv.field_size_limit(limit)
    if header is None:
        raise UsageError(f"{path}: empty file; it needs a header row ({kind}) and one example per row")
    if not rows:
        raise UsageError(f"{path}: only a header row ({', '.join(header)}), no examples")
    return header, rows


def _read_jsonl_records(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(the first record's fields, [(line, record)]) of a JSON-lines text."""
    if text.lstrip().startswith("["):  # a whole-file JSON list (what json.dump writes), not one object a line
        out, q = _converted(path), shlex.quote
        raise UsageError(f"{path}: a JSON list, not JSON lines (one object per line); convert it, then use "
                         f"{out.name} in place of {path.name}: python3 -c 'import json, sys; [print(json.dumps(r)) "
                         f"for r in json.load(sys.stdin)]' < {q(str(path))} > {q(str(out))}")
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                             "the file needs one JSON object per line") from None
        if not isinstance(record, dict):  # bad input in a file, not a caller's bug: ValueError like the rest
            raise UsageError(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object with your "
                             "columns")
        rows.append((lineno, record))
    if not rows:
        raise UsageError(f"{path}: empty file; it needs one JSON object per line")
    return list(rows[0][1]), rows


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, row)]) of a .jsonl, .csv or .tsv file (JSON lines: the first record's fields)."""
    text = _decode(path)
    return (_read_jsonl_records if path.suffix == ".jsonl" else _read_table)(path, text)


def _own_examples(path: Path, columns: list[str], rows: list[tuple[int, dict]], text_column: str,
                  pair_column: str | None, label_column: str) -> list[tuple]:
    """[(line, text, text_pair, label)] of one file; the label is its text (a JSON integer: its digits)."""
    flags = {text_column: "--text-column", pair_column: "--text-pair-column", label_column: "--label-column"}
    out = []
    for line, row in rows:
        for column in (text_column, pair_column, label_column):
            if column is not None and column not in row:
                where, found = (f"{path}:{line}", list(row)) if path.suffix == ".jsonl" else (f"{path}:1", columns)
                raise UsageError(f"{where}: no column {column!r} (found: {', '.join(map(repr, found))}); "
                                 f"pass {flags[column]} NAME")
        texts = [row[c] if c is not None else None for c in (text_column, pair_column)]
        for column, value in zip((text_column, pair_column), texts):
            if column is not None and not (isinstance(value, str) and value.strip()):
                what = "empty" if value is None or isinstance(value, str) else _a(type(value).__name__)
                raise UsageError(f"{path}:{line}: the text in {column!r} is {what}; every example needs one "
                                 "(fill it in or remove the line)")
        label = row[label_column]
        if isinstance(label, int) and not isinstance(label, bool):
            label = str(label)  # a JSON integer is the digits it is written with (JSON has no leading zeros)
        if not (isinstance(label, str) and label.strip()):
            what = "empty" if label is None or isinstance(label, str) else _a(type(label).__name__)
            raise UsageError(f"{path}:{line}: the label in {label_column!r} is {what}; a label is a text (or a "
                             "JSON integer)")
        out.append((line, *texts, label.strip()))
    return out


def _label_list(records: dict[Path, list[tuple]], train: Path, given: list[str] | None) -> list[str]:
    """Class names, index = class id: `given` (--labels), else the sorted set of the training labels.

    A label is its text: `1`, `01` and `001` are three classes, never merged. The order is numeric only
    when every training label is a plain integer (`0`, `7`, `-3`: no `+`, no leading zero), for which the
    text and the number are one-to-one; otherwise by code point.
    """
    if given is not None:
        if len(set(given)) < len(given) or not all(given):
            why = "lists a label twice" if len(set(given)) < len(given) else "has an empty label"
            raise UsageError(f"--labels {','.join(given)} {why}")
        names = list(given)
    else:
        found = {row[-1] for row in records[train]}
        integers = all(_PLAIN_INTEGER.fullmatch(y) for y in found)
        names = sorted(found, key=int) if integers else sorted(found)
    known = set(names)
    for path, rows in records.items():
        for line, *_, label in rows:
            if label not in known:
                why = (f"is not in --labels ({', '.join(names)}); add it there" if given is not None else
                       f"never occurs in {train}; fix the line, or list every class with --labels")
                raise UsageError(f"{path}:{line}: label {label!r} {why}")
    if len(names) < 2:
        raise UsageError(f"{train}: every example has the label {names[0]!r}; a classifier needs two classes or more")
    return names


def read_own(files: dict[str, Path], *, text_column: str = "text", text_pair_column: str | None = None,
             label_column: str = "label", labels: list[str] | None = None,
             test_fraction: float | None = None) -> tuple[list[str], dict[str, list[Example]]]:
    """(label names, split -> examples) of your own files: split -> .jsonl/.csv/.tsv path ("train" needed).

    Every value is checked before anything is returned; an error names the file and the line. The pair
    column is `text_pair_column`, else `text_pair` when the training file has one. A label is its text,
    stripped of surrounding spaces (`01` and `1` are two classes); see `_label_list` for their order.
    Without a test file, `test_fraction` holds out that share of the training rows (`_holdout`).
    Raises ValueError (bad content) or FileNotFoundError (a missing file).
    """
    for path in files.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found")
        if Path(path).suffix not in OWN_FORMATS:
            raise UsageError(f"{path}: read are {', '.join(OWN_FORMATS)} files; convert it to one of them")
    if ("test" in files) == (test_fraction is not None):
        raise UsageError(f"{files['test']} is the test file: drop --test-fraction" if "test" in files else
                         f"no test file beside {files['train']}: add test.jsonl/.csv/.tsv (or --test-file), or "
                         "hold out a share of the training file with --test-fraction 0.1")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise UsageError(f"--test-fraction must lie strictly between 0 and 1, got {test_fraction}")
    files = {s: Path(files[s]) for s in OWN_SPLITS if s in files}
    train = files["train"]
    tables = {path: _read_rows(path) for path in files.values()}
    pair = text_pair_column
    if pair is None:  # the default pair column counts when the training file has it, and then everywhere
        pair = "text_pair" if "text_pair" in tables[train][0] else None
        for path, (columns, _) in tables.items():
            if pair is None and "text_pair" in columns:
                raise UsageError(f"{path} has a 'text_pair' column, {train} has none: give every file the pair "
                                 "or none, or pass --text-pair-column")
    records = {path: _own_examples(path, *tables[path], text_column, pair, label_column) for path in files.values()}
    names = _label_list(records, train, labels)
    ids = {name: i for i, name in enumerate(names)}
    examples = {s: [Example(t, p, ids[y]) for _, t, p, y in records[path]] for s, path in files.items()}
    if test_fraction is not None:
        rows, held = _holdout(len(examples["train"]), test_fraction)
        if not len(rows) or not len(held):
            raise UsageError(f"--test-fraction {test_fraction} of {train}'s {len(examples['train'])} examples "
                             "leaves no training or no test example")
        examples["test"] = [examples["train"][i] for i in held]
        examples["train"] = [examples["train"][i] for i in rows]
    return names, examples


@dataclass(frozen=True)
class Texts:
    """Inputs to classify (eval.py predict): `texts[i]`, with `pairs[i]` when there is a pair column, and
    `ids[i]` (the value as the file spells it) when there is an id column; file order."""
    texts: list[str]
    pairs: list[str] | None
    ids: list | None


def read_texts(path: str, text_column: str = "text", text_pair_column: str | None = None,
               id_column: str = "id") -> Texts:
    """Texts to classify from a .jsonl, .csv or .tsv file (the readers and one-line errors of your own data),
    or `-`: standard input, one text per line. Other columns (a label column too) are ignored; the
    `id_column` is kept when the file has one. The pair column is `text_pair_column`, else `text_pair`
    when the file has it. Raises UsageError (bad content) or FileNotFoundError (no such file)."""
    if path == "-":
        import sys
        lines = sys.stdin.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        lines = [line.removesuffix("\r") for line in lines]
        if not lines:
            raise UsageError("standard input is empty: give one text per line")
        for i, line in enumerate(lines, 1):
            if not line.strip():
                raise UsageError(f"<stdin>:{i}: empty line; with --input -, every line is one text "
                                 "(remove it, or use a .jsonl/.csv/.tsv file)")
        return Texts(lines, None, None)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    if file.suffix not in OWN_FORMATS:
        raise UsageError(f"--input {path}: read are {', '.join(OWN_FORMATS)} files, or - for one text per line "
                         "on standard input")
    columns, rows = _read_rows(file)
    pair = text_pair_column or ("text_pair" if "text_pair" in columns else None)
    flags = {text_column: "--text-column", pair: "--text-pair-column"}
    texts, pairs, ids = [], [], []
    for line, row in rows:
        for column in (text_column, pair):
            if column is None:
                continue
            if column not in row:
                where, found = (f"{file}:{line}", list(row)) if file.suffix == ".jsonl" else (f"{file}:1", columns)
                raise UsageError(f"{where}: no column {column!r} (found: {', '.join(map(repr, found))}); "
                                 f"pass {flags[column]} NAME")
            value = row[column]
            if not (isinstance(value, str) and value.strip()):
                what = "empty" if value is None or isinstance(value, str) else f"a {type(value).__name__}"
                raise UsageError(f"{file}:{line}: the text in {column!r} is {what}; every row needs one "
                                 "(fill it in or remove the line)")
        texts.append(row[text_column])
        pairs.append(row[pair] if pair else None)
        ids.append(row.get(id_column))
    has_ids = id_column in columns or any(i is not None for i in ids)
    return Texts(texts, pairs if pair else None, ids if has_ids else None)


def from_hub(dataset: str | None, data_dir: str | os.PathLike | None) -> bool:
    """Whether --dataset (with this --data-dir) reads its files from the Hub: a registered dataset without a
    local folder, or a hub:owner/name repo."""
    return (dataset in DATASETS and data_dir is None) or (dataset or "").startswith("hub:")


def open_dataset(dataset: str | None = None, *, data_dir: str | os.PathLike | None = None,
                 train_file: str | None = None, dev_file: str | None = None, test_file: str | None = None,
                 test_fraction: float | None = None, text_column: str = "text", text_pair_column: str | None = None,
                 label_column: str = "label", labels: list[str] | None = None, dataset_name: str | None = None,
                 splits: tuple[str, ...] | None = None) -> Dataset:
    """The dataset train.py's and eval.py's dataset flags name, with `splits` (default: all) read.

    `dataset` is a registered name (read with `load_split` from `data_dir` or the Hub), a folder
    holding train.*/test.* (and dev.* or validation.*), or `hub:owner/name`, a Hub dataset repo with
    such files at its top level; or None with `train_file` (and `test_file`, `dev_file`). The column,
    label and fraction options are for your own data only (see `read_own`). Your own data is read and
    checked whole even when `splits` asks for one split: the labels come from the training file.
    """
    name = run_name(dataset, train_file, dataset_name)
    own = {"--train-file": train_file, "--dev-file": dev_file, "--test-file": test_file,
           "--test-fraction": test_fraction, "--text-pair-column": text_pair_column, "--labels": labels,
           "--text-column": None if text_column == "text" else text_column,
           "--label-column": None if label_column == "label" else label_column}
    if dataset in DATASETS:
        given = [flag for flag, value in own.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for your own data; {dataset} is a registered dataset")
        wanted = splits or DATASETS[dataset].splits
        return Dataset(name, list(DATASETS[dataset].labels), {s: load_split(dataset, s, data_dir) for s in wanted})
    if data_dir is not None:
        raise UsageError("--data-dir holds local copies of the registered datasets; your own data is "
                         "--dataset DIR or --train-file FILE")
    if train_file is not None:
        files = {s: f for s, f in (("train", train_file), ("dev", dev_file), ("test", test_file)) if f is not None}
    elif dev_file is not None or test_file is not None:
        raise UsageError(f"--dev-file and --test-file go with --train-file; {dataset} is searched for dev.* "
                         "and test.* itself")
    else:
        files = own_files(_hub_snapshot(dataset[4:]) if dataset.startswith("hub:") else dataset)
    label_names, examples = read_own(files, text_column=text_column, text_pair_column=text_pair_column,
                                     label_column=label_column, labels=labels, test_fraction=test_fraction)
    for s in splits or ():
        if s not in examples:
            raise UsageError(f"{name} has no split {s!r}; its splits: {', '.join(examples)}")
    return Dataset(name, label_names, {s: e for s, e in examples.items() if splits is None or s in splits})


def comma_list(text: str) -> list[str]:
    """argparse type of --labels: "a, b,c" -> ["a", "b", "c"]."""
    return [item.strip() for item in text.split(",")]


# The dataset flags of train.py and eval.py evaluate, defined once: name -> (default, help, argparse keywords).
# train.TrainConfig declares its fields from them and eval.py adds them to its parser, so both CLIs spell and
# explain them alike. OWN_DATA: the ones that say which of your own files to read and how.
OWN_DATA = ("train_file", "dev_file", "test_file", "test_fraction", "text_column", "text_pair_column", "label_column",
            "labels", "dataset_name")


FLAGS = {
    "dataset": (None, (f"a registered dataset ({', '.join(DATASETS)}), a folder of your own train/test(/dev) "
                       ".jsonl/.csv/.tsv files, or hub:owner/name"), {}),
    "data_dir": (None, "local dataset folder in the layout of shared/data (default: the Hub)", {}),
    "train_file": (None, "your own training file (.jsonl, .csv or .tsv), instead of --dataset", {}),
    "dev_file": (None, "with --train-file: a dev file, evaluated every epoch like the test file", {}),
    "test_file": (None, "with --train-file: the test file", {}),
    "test_fraction": (None, ("without a test file: hold out this share of the training file "
                             "(fixed seed 2022, as agnews' split)"), {"type": float}),
    "text_column": ("text", "your files' text column", {}),
    "text_pair_column": (None, ("your files' second text of a pair (default: text_pair, if the "
                                "training file has it)"), {}),
    "label_column": ("label", "your files' label column (its texts are the class names)", {}),
    "labels": (None, ("your labels in class-id order, comma-separated (default: "
                      "the sorted set of the training labels; numeric order when all are plain integers)"), {"type": comma_list}),
    "dataset_name": (None, "your dataset's name in the run folder (default: its folder's name)", {}),
}


def open_from_flags(args, splits: tuple[str, ...] | None = None) -> Dataset:
    """open_dataset with the dataset flags of `args` (a train.TrainConfig, or eval.py evaluate's arguments)."""
    return open_dataset(args.dataset, data_dir=args.data_dir, splits=splits, **{k: getattr(args, k) for k in OWN_DATA})
