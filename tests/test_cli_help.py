"""--help is a table of contents: argparse groups in every CLI with more than a handful of flags, per-dataset
defaults shown as numbers, and one word per concept (an old flag name is a one-line error naming the new one)."""

import contextlib
import io

import pytest

import eval as evaluation
import train


def help_text(main, argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(out.getvalue().split())  # argparse wraps lines; compare words


def sections(help_text: str) -> dict[str, str]:
    """argparse's --help, cut at its group headers (unindented lines ending in ':')."""
    out, title = {}, None
    for line in help_text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            title = line[:-1]
            out[title] = ""
        elif title:
            out[title] += line + "\n"
    return out


def test_train_help_groups_every_flag_once_in_config_order():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        train.parse_args(["--help"])
    groups = sections(out.getvalue())
    assert list(groups) == ["options", *train.FLAG_GROUPS]
    grouped = [name for names in train.FLAG_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in train.dataclasses.fields(train.TrainConfig))
    for title, names in train.FLAG_GROUPS.items():  # each flag is listed under its own group's title only
        flags = [line.split()[0] for line in groups[title].splitlines() if line.startswith("  --")]
        assert flags == [f"--{n.replace('_', '-')}" for n in names], title


def test_train_help_shows_the_report_defaults_as_numbers():
    text = help_text(train.parse_args, [])
    epochs, lr = train.REPORT_DEFAULTS["full"]["agnews"], train.REPORT_DEFAULTS["adapter"]["agnews"]
    assert f"full fine-tuning restaurant/acl/your own data 4, agnews {epochs[0]}" in text
    assert f"with --adapter restaurant/acl/your own data 4, agnews {lr[0]}" in text
    assert f"agnews {epochs[1]:g}" in text and f"{lr[1]:g}" in text


def test_eval_evaluate_help_uses_the_one_vocabulary():
    text = help_text(evaluation.main, ["evaluate"])
    for flag in ("--model", "--eval-batch-size", "--max-length", "--precision", "--dataset", "--train-file"):
        assert flag in text
    assert "--checkpoint" not in text and "--batch-size " not in text


@pytest.mark.parametrize("old,new", [("--checkpoint", "--model"), ("--batch-size", "--eval-batch-size")])
def test_eval_old_flag_names_are_one_line_errors(old, new, capsys):
    assert evaluation.cli(["evaluate", old, "8", "--model", "x", "--dataset", "acl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eval.py: error: {old} is now {new}") and err.count("\n") == 1
