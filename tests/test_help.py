"""--help of every command line: a table of contents (argparse groups where a CLI has more than a handful of
flags), each option's default shown once, as the user types it, and never `(default: None)`, per-dataset
defaults as numbers, and one word per concept (an old flag name is a one-line error naming the new one).
Oracles: the dataclass defaults and REPORT_DEFAULTS (train.py), the script's own first assignments
(experiments/report.sh)."""

import contextlib
import io
import re
import subprocess
import sys

import pytest

import eval as evaluation
import memory
import train
from helpers import ROOT


def option_help(text: str) -> dict[str, str]:
    """--flag -> its help text, from argparse output printed without line wrapping."""
    out, current = {}, None
    for line in text.splitlines():
        if m := re.match(r"^  (-h, )?(--[\w-]+)", line):
            current = m[2]
            out[current] = line[m.end():]
        elif current and line.startswith("   "):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def test_train_help_shows_each_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    helps = option_help(capsys.readouterr().out)
    for f in train.dataclasses.fields(train.TrainConfig):
        text = helps["--" + f.name.replace("_", "-")]
        assert "(default: None)" not in text and "(default: False)" not in text
        if f.type == "bool" or f.name == "dataset":
            assert "default" not in text, text
            continue
        shown = text.count("(default: ")  # None: "absent" (no default to show) or words such as "per dataset"
        assert shown == 1 if f.default is not None else shown <= 1, text
        if f.default is not None:  # the value argparse really uses, shown as the user types it
            shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
            assert f"(default: {shown})" in text, text


def test_memory_help_shows_each_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        memory.main(["--help"])
    helps = option_help(capsys.readouterr().out)
    assert len(helps) > 15
    for flag, text in helps.items():
        assert "(default: None)" not in text and text.count("default") <= 1, (flag, text)
        if flag not in ("--help", "--params", "--model", "--adapter", "--freeze-layernorm", "--gradient-checkpointing", "--methods"):
            assert "(default: " in text, (flag, text)
    assert "(default: 64)" in helps["--batch-size"] and "(default: bf16)" in helps["--precision"]


def test_report_sh_help_prints_its_usage_with_the_scripts_defaults():
    script = ROOT / "experiments" / "report.sh"
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == ""
    assert "--models" in out.stdout and "--torchrun" in out.stdout and not out.stdout.startswith("#")
    source = script.read_text()
    for var in ("models", "adapter_model", "datasets", "seeds", "out"):
        value = re.findall(rf'\b{var}="([^"]*)"', source)[0]  # the first assignment: the default the script uses
        flag = "--" + var.replace("_", "-")
        (entry,) = [e for e in re.split(r"\n(?=  --)", out.stdout) if e.startswith(f"  {flag} ")]
        entry = " ".join(entry.split())  # an entry may go on over indented lines
        assert re.search(rf"\(default: {re.escape(value)}[),]", entry) and entry.count("default") == 1, (flag, entry)


def test_report_sh_calls_only_commands_that_exist():
    """report.sh ends with `python "$here/<script>.py" <command> ...`: each command must be one its script has
    (after eval.py's summarize and plot moved to report.py, the grid ran for hours and then failed here)."""
    calls = re.findall(r'python "\$here/(\w+\.py)" (\w+)', (ROOT / "experiments" / "report.sh").read_text())
    assert len(calls) >= 2
    for script, command in calls:
        out = subprocess.run([sys.executable, str(ROOT / script), command, "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, (script, command, out.stderr)


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
    assert f"with --adapter or --lora restaurant/acl/your own data 4, agnews {lr[0]}" in text
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
