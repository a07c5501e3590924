"""Every `sbir …` command in README.md and docs/ is one the CLI accepts as written: dry runs are run as written,
every other command is parsed by the CLI (its options and arguments) and its config overrides are validated."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from sbir.cli import app
from sbir.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```bash\n(.*?)```", re.S)  # the blocks of commands to type
ELLIPSIS = "…"  # a placeholder in prose examples: such a line is an outline, not a command


def _shell_lines(block: str) -> list[str]:
    """The block's shell commands: continuation lines joined, a quote left open carried into the next line."""
    lines, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        lines.append(pending)
        pending = ""
    assert not pending, f"an unclosed quote in {pending!r}"
    return lines


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `sbir`) for each command line in a fenced block of the docs."""
    found = []
    for doc in DOCS:
        for block in FENCE.findall(doc.read_text()):
            for line in _shell_lines(block):
                if ELLIPSIS in line:
                    continue
                words = shlex.split(line, comments=True)
                starts = [
                    i
                    for i, w in enumerate(words)
                    if w in ("sbir", ".venv/bin/sbir") and (i == 0 or words[i - 1] == "--")
                ]
                if starts and not any(w in ("|", "&&", ";") for w in words[starts[0] :]):
                    found.append((f"{doc.name}: {line.strip()}", words[starts[0] + 1 :]))
    return found


COMMANDS = documented_commands()


def _is_group(command) -> bool:
    return hasattr(command, "list_commands")  # typer ships its own copy of click: no isinstance


def _leaf(argv: list[str]):
    """The subcommand an argv reaches, its own arguments, and the command path."""
    command = typer.main.get_command(app)
    path: list[str] = []
    while _is_group(command) and argv:
        sub = command.get_command(command.context_class(command), argv[0])
        if sub is None:
            break
        path.append(argv[0])
        command, argv = sub, argv[1:]
    return command, argv, path


def test_the_docs_hold_the_commands_we_expect():
    assert len(COMMANDS) >= 40
    assert any("--dry-run" in argv for _, argv in COMMANDS)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w[:90] for w, _ in COMMANDS])
def test_a_documented_command_is_accepted_as_written(where, argv, tmp_path, monkeypatch, no_ray):
    command, rest, path = _leaf(argv)
    assert path and not _is_group(command), f"{where}: no such subcommand"
    context = command.make_context(" ".join(["sbir", *path]), list(rest), resilient_parsing=False)
    params = context.params
    overrides = list(params.get("overrides") or [])
    preset = params.get("config")
    if overrides or preset:
        load_config(preset, overrides)  # every preset and override it names is valid
    if "--dry-run" in argv:
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, f"{where}\n{result.output}"
