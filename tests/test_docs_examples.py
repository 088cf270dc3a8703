"""Every code example in the README and the docs runs, or is checked, as written.

* ``python`` blocks (also those indented inside admonitions or tabs) run in order, one namespace per
  page, as a reader would run them.
* ``bash`` blocks are checked line by line. ``unifiedops list``, ``unifiedops flops MODEL`` and any
  ``--help`` run for real (they take seconds); the other ``unifiedops`` commands (benchmarks, the
  docs regeneration: minutes each) and ``python -m benchmarks.*`` are parsed by their own argument
  parsers, and their quick forms run in tests/test_benchmarks.py, test_model_benchmarks.py and
  test_docs_assets.py. A script the docs run (``python``/``torchrun`` on a path) must exist, and its
  arguments must parse with its ``parse_args``; the guides' training script runs in
  tests/test_training_guide.py. Anything else must be one of the commands this test knows (the
  install commands, which CI runs itself).
* Examples that are not meant to run are written as ``text`` blocks.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# A fenced block may be indented (inside an admonition or a content tab); its body keeps the indent.
BLOCK = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>python|bash)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.DOTALL | re.M)

# Commands that the docs show and CI runs itself (the README's install and test commands, the docs build).
KNOWN_PREFIXES = (
    "python3 -m venv .venv",
    ".venv/bin/pip install",
    "pip install",
    ".venv/bin/python -m pytest",
    "python -m pytest",
    ".venv/bin/mkdocs",
    "mkdocs",
    "apt-get install",
    "sudo apt-get install",
)


def _blocks(page: Path, lang: str) -> list[str]:
    return [textwrap.dedent(m["body"]) for m in BLOCK.finditer(page.read_text(encoding="utf-8")) if m["lang"] == lang]


def _python_pages() -> list:
    return [
        pytest.param(blocks, id=str(page.relative_to(ROOT))) for page in PAGES if (blocks := _blocks(page, "python"))
    ]


def _shell_commands() -> list:
    cases = []
    for page in PAGES:
        for block in _blocks(page, "bash"):
            # Join continuation lines, drop comments, split `a && b` chains into their commands.
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                for command in line.split("&&"):
                    cases.append(pytest.param(command.strip(), id=f"{page.relative_to(ROOT)}: {command.strip()[:60]}"))
    return cases


def test_pages_have_examples() -> None:
    assert len(_python_pages()) >= 10
    assert len(_shell_commands()) >= 10


@pytest.mark.parametrize("blocks", _python_pages())
def test_python_example_runs(blocks: list[str]) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for code in blocks:
        exec(compile(code, "<docs example>", "exec"), namespace)


def _strip_env(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words


def check_command(command: str) -> None:
    """Raise if the shell command would not be accepted as written."""
    words = _strip_env(shlex.split(command))
    if not words:
        raise AssertionError(f"empty command: {command!r}")
    if " ".join(words).startswith(KNOWN_PREFIXES):
        return
    program = words[0].removeprefix(".venv/bin/")
    from unifiedops.cli import build_parser, main

    if program == "unifiedops":
        args = build_parser().parse_args(words[1:])
        if args.command == "list" or (args.command == "flops" and not args.zoo):
            assert main(words[1:]) == 0, f"{command!r} failed"
        return
    if program in ("python", "python3") and words[1:2] == ["-m"] and words[2].startswith("benchmarks."):
        module = importlib.import_module(words[2])
        module._parse(words[3:]) if hasattr(module, "_parse") else module.build_parser().parse_args(words[3:])
        return
    if program in ("python", "python3", "torchrun") and "-m" in words and words.index("-m") + 1 < len(words):
        module = words[words.index("-m") + 1]
        if module == "unifiedops.cli":  # `torchrun ... -m unifiedops.cli shootout ...`
            build_parser().parse_args(words[words.index("-m") + 2 :])
            return
    if program in ("python", "python3", "torchrun"):
        scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
        assert scripts, f"{command!r}: runs no script this test knows how to check"
        script = ROOT / words[scripts[0]]
        assert script.is_file(), f"{command!r}: {words[scripts[0]]} is not a file of the repository"
        spec = importlib.util.spec_from_file_location(f"_docs_script_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # defines the script's functions; its main runs only as __main__
        if hasattr(module, "parse_args"):
            module.parse_args(words[scripts[0] + 1 :])
        return
    raise AssertionError(f"{command!r}: not a command this test can check; write it as a `text` block if it is prose")


@pytest.mark.parametrize("command", _shell_commands())
def test_shell_example_is_accepted(command: str) -> None:
    try:
        check_command(command)
    except SystemExit as error:  # argparse rejected the arguments
        raise AssertionError(f"{command!r} is rejected by its parser (exit {error.code})") from None


@pytest.mark.parametrize(
    "command",
    [
        "unifiedops flops --no-such-flag",
        "unifiedops flops no_such_model",
        "python -m benchmarks.models --batch x",
        "python docs/guides/train.py --no-such-option",
        "python docs/guides/missing.py",
        "torchrun --nproc_per_node=2 -m unifiedops.cli shootout --no-such-flag",
    ],
)
def test_shell_check_can_fail(command: str) -> None:
    with pytest.raises((AssertionError, SystemExit)):
        check_command(command)
