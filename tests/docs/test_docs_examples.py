"""Every `lamamba ...` example a user is shown works: in README.md, docs/*.md, the comments of
configs/**/*.yaml and every command's --help text.

Concrete examples are parsed by the real CLI parser; the config files they name must exist and
their key=value overrides must name fields of the job's config. Synopses (with [optional] parts,
a|b alternatives or ...) must name real commands and options. The cheap examples (`lamamba flops`)
are run. The examples are collected when the test runs, so commands and pages added later are
checked too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import types
import typing
from pathlib import Path

import pytest

from launcher.cli import build_parser, main, parse_args
from launcher.jobs import JOBS

ROOT = Path(__file__).resolve().parents[2]
# The config class behind each command's key=value overrides (the jobs, plus the quickstart).
CONFIG_CLASSES = {**{name: spec.config_class for name, spec in JOBS.items()},
                  "quickstart": "launcher.quickstart.config:QuickstartConfig"}
COMMAND_START = re.compile(r"^(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(lamamba\s.*)$")
SYNOPSIS_MARKS = ("[", "]", "...", "|", "{")
# Examples run for real: `lamamba flops` of the small presets (a few seconds each on a busy 2-core
# machine; XL, DiT-XL and the --table take 5-110 s, so those are parsed and checked, not run).
EXPENSIVE_PRESETS = ("XL", "XL-release", "L", "B")


def cheap(argv: list[str]) -> bool:
    preset = argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else "XL"
    return (argv[:1] == ["flops"] and "--table" not in argv and preset not in EXPENSIVE_PRESETS
            and not preset.startswith(("DiT-XL", "DiT-L")))


@dataclasses.dataclass(frozen=True)
class Example:
    where: str
    text: str
    inline: bool = False  # `lamamba encode` in prose may name a command without its arguments

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def logical_lines(lines):
    """Lines with backslash continuations joined."""
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def inline_commands(line: str):
    return [span.strip() for span in re.findall(r"`([^`]+)`", line) if span.strip().startswith("lamamba ")]


def line_command(line: str) -> str | None:
    """The command on a line of a code block or help text, without a trailing "   (a note)"."""
    match = COMMAND_START.match(line.strip())
    return re.split(r"\s{2,}\(", match.group(1))[0] if match else None


def markdown_examples(path: Path):
    fenced = False
    for number, line in enumerate(logical_lines(path.read_text().splitlines()), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ")
        command = line_command(line) if (fenced or indented) else None
        where = f"{path.relative_to(ROOT)} (line ~{number})"
        if command:
            yield Example(where, command)
        elif not fenced:
            yield from (Example(where, t, inline=True) for t in inline_commands(line))


def help_examples(name: str, text: str):
    for line in logical_lines(text.splitlines()):
        where = f"`lamamba {name} --help`".replace("  ", " ")
        command = line_command(line) if line[:1].isspace() else None
        if command:
            yield Example(where, command)
        else:
            yield from (Example(where, t, inline=True) for t in inline_commands(line))


def yaml_examples(path: Path):
    comments = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    for line in logical_lines(comments):
        command = line_command(line)
        if command:
            yield Example(str(path.relative_to(ROOT)), command)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def collect() -> list[Example]:
    parser = build_parser()
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found += markdown_examples(path)
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        found += yaml_examples(path)
    found += help_examples("", parser.format_help())
    for name, sub in subparsers(parser).items():
        found += help_examples(name, sub.format_help())
    return found


def commands_of(example: Example) -> list[list[str]]:
    """The `lamamba` commands of one example, as argv lists (shell comments, redirections and
    chained commands split off)."""
    out = []
    for part in re.split(r"\s*(?:;|&&|\|\|)\s*|\s\|\s", example.text):
        if not part.startswith("lamamba "):
            continue
        tokens = shlex.split(part, comments=True)
        cut = next((i for i, tok in enumerate(tokens) if tok.startswith((">", "2>"))), len(tokens))
        out.append(tokens[1:cut])
    return out


def field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_key(cls, key: str) -> str | None:
    """None if the dotted ``key`` names a field of the dataclass ``cls`` (or a key under a dict
    field), else the part that does not exist."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        known = field_types(cls)
        if part not in known:
            return ".".join(parts[:i + 1])
        tp = known[part]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        candidates = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        nested = next((c for c in candidates if dataclasses.is_dataclass(c)), None)
        if nested is not None:
            cls = nested
            continue
        if any(typing.get_origin(c) is dict or c is dict for c in candidates):
            return None  # free-form mapping (e.g. storage_options)
        return None if i == len(parts) - 1 else ".".join(parts[:i + 2])
    return key if dataclasses.is_dataclass(cls) and parts else None  # a key naming a whole section


def config_class(command: str, args: argparse.Namespace):
    import importlib

    job = getattr(args, "job", None) if command == "submit" else command
    spec = CONFIG_CLASSES.get(job)
    if spec is None:
        return None
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def yaml_paths(tokens: list[str]) -> list[str]:
    values = [tok.split("=", 1)[-1] for tok in tokens]
    return [v for v in values if v.endswith((".yaml", ".yml")) and not v.startswith(("/", "s3://"))
            and not re.search(r"[A-Z]{3,}", v)]  # CONFIG.yaml, YAML: placeholders


def mention_problems(argv: list[str], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """A synopsis or a mention in prose: its commands, options and config files must exist."""
    names = argv[0].split("|")
    bad = [f"no command {n!r}" for n in names if n not in parsers]
    flags = {re.split(r"[=\]]", tok.lstrip("["))[0] for tok in argv if tok.lstrip("[").startswith("--")}
    for n in (n for n in names if n in parsers):
        bad += [f"`lamamba {n}` has no option {f}" for f in sorted(flags - set(parsers[n]._option_string_actions))]
    return bad + [f"names {p}, which does not exist" for p in yaml_paths(argv) if not (ROOT / p).is_file()]


def problems_of(argv: list[str], parsers: dict[str, argparse.ArgumentParser], inline: bool = False) -> list[str]:
    if not argv or argv[0].endswith(":"):
        return []  # `lamamba submit: config error: ...` is the output of an example, not a command
    if all(n.isupper() for n in argv[0].split("|")):
        return []  # "lamamba JOB CONFIG ...", "lamamba COMMAND --help": the general form
    if any(mark in tok for tok in argv for mark in SYNOPSIS_MARKS):
        return mention_problems(argv, parsers)
    if argv[0] not in parsers and not argv[0].startswith("-"):
        return [f"no command {argv[0]!r}"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parse_args(argv)
    except SystemExit as exit:
        if exit.code == 0:  # --help
            return []
        message = err.getvalue().strip().splitlines()[-1]
        if inline:  # `lamamba export`, `lamamba logs --rank R` named in a sentence
            return mention_problems(argv, parsers)
        return [f"does not parse: {message}"]
    bad = [f"names {p}, which does not exist" for p in yaml_paths(argv) if not (ROOT / p).is_file()]
    cls = config_class(argv[0], args)
    overrides = list(getattr(args, "overrides", []) or [])
    config = getattr(args, "config", None)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # `lamamba sample key=value ...`: no config file
    if argv[0] == "flops":  # --set KEY=VALUE names a ModelConfig field
        from lamamba.models import ModelConfig

        bad += [f"--set {kv}: ModelConfig has no key {k!r}" for kv in args.set
                if (k := unknown_key(ModelConfig, kv.split("=", 1)[0]))]
    for override in overrides:
        if "=" not in override:
            bad.append(f"{override!r} is not a key=value override")
        elif cls is not None and (missing := unknown_key(cls, override.split("=", 1)[0])):
            bad.append(f"override {override.split('=', 1)[0]!r}: {cls.__name__} has no key {missing!r}")
    return bad


EXAMPLES = collect()


def test_the_examples_are_found():
    where = {e.where.split(" (line")[0] for e in EXAMPLES}
    assert len(EXAMPLES) > 40
    assert {"README.md", "docs/launcher.md", "`lamamba submit --help`", "`lamamba flops --help`"} <= where


def test_every_example_names_real_commands_options_configs_and_keys():
    parsers = subparsers(build_parser())
    bad = [f"{example}\n    -> {problem}" for example in EXAMPLES for argv in commands_of(example)
           for problem in problems_of(argv, parsers, example.inline)]
    assert not bad, "examples that do not work:\n" + "\n".join(bad)


def test_the_checker_catches_broken_examples():
    parsers = subparsers(build_parser())
    assert problems_of(["submit", "train", "configs/train/tiny.yaml", "--backend", "local"], parsers) == [
        "names configs/train/tiny.yaml, which does not exist"]
    assert problems_of(["sample", "configs/sample/imagenet_256.yaml", "ckpt=x.safetensors"], parsers) == [
        "override 'ckpt': SampleConfig has no key 'ckpt'"]
    assert problems_of(["train", "configs/train/tiny_digits.yaml", "optim.lrr=1"], parsers) == [
        "override 'optim.lrr': TrainConfig has no key 'optim.lrr'"]
    assert problems_of(["train", "configs/train/tiny_digits.yaml", "data.manifest=x", "data.storage_options.key=k"],
                       parsers) == []
    assert problems_of(["flops", "--presett", "XL"], parsers)[0].startswith("does not parse")
    assert problems_of(["status|logz", "RUN_ID"], parsers) == ["no command 'logz'"]
    assert problems_of(["submit", "JOB", "[--nodez]"], parsers) == ["`lamamba submit` has no option --nodez"]
    assert problems_of(["flops", "--preset", "S", "--set", "atention=none"], parsers) == [
        "--set atention=none: ModelConfig has no key 'atention'"]
    assert problems_of(["export"], parsers, inline=True) == []  # named in a sentence
    assert problems_of(["export"], parsers)[0].startswith("does not parse")  # shown as a command to run


def test_overrides_may_follow_the_options():
    args = parse_args(["submit", "train", "configs/train/xl_256.yaml", "optim.lr=1e-4", "--backend", "slurm",
                       "--nodes", "4", "data.manifest=s3://b/latents"])
    assert args.overrides == ["optim.lr=1e-4", "data.manifest=s3://b/latents"] and args.nodes == 4
    with pytest.raises(SystemExit):
        parse_args(["train", "configs/train/tiny_digits.yaml", "--no-such-option"])
    with pytest.raises(SystemExit):
        parse_args(["flops", "preset=XL"])  # flops takes no overrides


def test_paths_to_configs_mentioned_anywhere_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = [(str(p.relative_to(ROOT)), p.read_text()) for p in pages]
    parser = build_parser()
    texts += [(f"`lamamba {n} --help`", s.format_help()) for n, s in subparsers(parser).items()]
    missing = sorted({f"{where}: {path}" for where, text in texts
                      for path in re.findall(r"\bconfigs/[\w/.-]+\.ya?ml\b", text)
                      if "*" not in path and not (ROOT / path).is_file()})
    assert not missing, f"configs that do not exist: {missing}"


@pytest.mark.parametrize("argv", sorted({tuple(argv) for e in EXAMPLES for argv in commands_of(e)
                                         if cheap(argv) and not any(m in t for t in argv for m in SYNOPSIS_MARKS)}),
                         ids=" ".join)
def test_cheap_examples_run(argv, capsys):
    assert main(list(argv)) == 0
    assert capsys.readouterr().out.strip()
