"""Shell command lines as people paste them (READMEs, blog posts, notebooks) → flags.

Training commands circulate as multi-line shell text: `export MODEL_NAME=...` lines, then
`accelerate launch script.py \\` with one `--flag=value` per line. We read them the way the
author meant, with `shlex` for quoting, and say where a shell would have read them differently:

* `\\` + newline is a line continuation. Copied commands often have no space before the `\\`
  and none at the start of the next line (`--instance_prompt="a TOK emoji"\\` then
  `--validation_prompt=...`); bash glues those into ONE argument, so the script silently got a
  different prompt and no validation prompt. We split them as intended and warn.
* A `\\` followed by spaces escapes a space and ends the command in a shell: later lines would
  never reach the script. We join them anyway and warn.
* `$VAR` / `${VAR}` are expanded from `VAR=...` / `export VAR=...` lines in the same text.
* The sd-scripts docs write a command one option per line with no `\\` at all
  (`accelerate launch ... train_network.py` then `    --pretrained_model_name_or_path=...`).
  A shell would run every line as its own command; since a line that starts with `--` cannot
  be a command, it is unambiguous: such lines are read as options of the command above, with a
  warning.
* The docs' `<placeholders>` (`--output_dir=<output folder for trained model>`) are set aside
  as such, so they are reported instead of split into stray words.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from lorakiln.config.importers.draft import LAUNCHER, SECRET_KEYS, Draft
from lorakiln.errors import ConfigError

_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_CONTINUATION = re.compile(r"\\[ \t]*\r?\n")
_LAUNCHERS = ("accelerate", "torchrun")
_FLAG_NAME = re.compile(r"--[A-Za-z0-9_.-]+")
_PLACEHOLDER = re.compile(r"--([A-Za-z0-9_.-]+)[= ]\s*(<[^<>\n]*>)")


@dataclass(frozen=True)
class Flag:
    """`--name=value`, `--name v1 v2` or a bare `--name` (no values)."""

    name: str
    values: tuple[str, ...] = ()

    def text(self) -> str:
        """The flag as it would be written on a command line."""
        if self.name in SECRET_KEYS:
            return f"--{self.name}=<redacted>"
        shown = [f'"{v}"' if (not v or any(c.isspace() for c in v)) else v for v in self.values]
        if len(shown) == 1:
            return f"--{self.name}={shown[0]}"
        return " ".join([f"--{self.name}", *shown])


@dataclass
class CommandLine:
    """A parsed training command: the program words, the launcher's flags, the script's flags."""

    program: list[str] = field(default_factory=list)
    launcher: list[Flag] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    #: Words that are no flag's value (argparse would reject them).
    stray: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Flags whose value is a documentation placeholder, as (name, `<text>`).
    placeholders: list[tuple[str, str]] = field(default_factory=list)

    @property
    def script(self) -> str | None:
        """The file name of the Python script run, if the command names one."""
        names = [w.rsplit("/", 1)[-1] for w in self.program if w.endswith(".py")]
        return names[0] if names else None


def _first_flag(line: str) -> str:
    found = _FLAG_NAME.search(line)
    return found.group(0) if found else line.strip()[:20]


def _check_continuations(lines: list[str], warnings: list[str]) -> None:
    chains: list[list[str]] = []
    glued_lines: list[int] = []
    previous_glued = False
    for number, (line, following) in enumerate(zip(lines, lines[1:], strict=False), start=1):
        body = line.rstrip("\r")
        glued = False
        if body.rstrip(" \t").endswith("\\") and body != body.rstrip(" \t"):
            warnings.append(f"line {number} has spaces after its `\\`: a shell ends the command there and "
                            "never passes the lines after it; they were read as part of the command")
        elif body.endswith("\\") and len(body) > 1 and not body[-2].isspace() and following[:1].strip():
            glued = True
            glued_lines.append(number)
            if not previous_glued:
                chains.append([_first_flag(body)])
            chains[-1].append(_first_flag(following))
        previous_glued = glued
    if chains:
        joined = ", ".join("+".join(chain) for chain in chains)
        warnings.append(
            f"as pasted, a shell glues {joined} into single arguments (no space before the `\\` ending "
            f"line(s) {', '.join(map(str, glued_lines))} and none at the start of the next line), so the "
            "script never saw the later options of each chain; they were read here as separate options, "
            "as intended")


def _logical_lines(text: str, warnings: list[str]) -> list[str]:
    raw = [ln for ln in text.replace("\r\n", "\n").split("\n") if not ln.lstrip().startswith("```")]
    _check_continuations(raw, warnings)
    return _CONTINUATION.sub(" ", "\n".join(raw)).split("\n")


def _expand(token: str, env: dict[str, str], missing: set[str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in env:
            return env[name]
        missing.add(name)
        return match.group(0)

    return _VAR.sub(sub, token)


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError as err:
        raise ConfigError(f"cannot read the command line ({err}): check its quotes") from None


def _take_flags(tokens: list[str], start: int, *, launcher: bool) -> tuple[list[Flag], list[str], int]:
    """Flags from `tokens[start:]`; a launcher's flags stop at the script (a `.py` word)."""
    flags: list[Flag] = []
    stray: list[str] = []
    i = start
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            if launcher:
                break
            stray.append(tok)
            i += 1
            continue
        name, eq, value = tok[2:].partition("=")
        values = [value] if eq else []
        i += 1
        while not eq and i < len(tokens) and not tokens[i].startswith("--"):
            if launcher and (tokens[i].endswith(".py") or values):
                break
            values.append(tokens[i])
            i += 1
        flags.append(Flag(name, tuple(values)))
    return flags, stray, i


def _set_aside_placeholders(line: str, found: list[tuple[str, str]]) -> str:
    """`line` without its `--flag=<placeholder>` options, which are added to `found`."""
    for match in _PLACEHOLDER.finditer(line):
        found.append((match[1], match[2]))
    return _PLACEHOLDER.sub("", line).strip()


def parse_command(text: str) -> CommandLine:
    """Parse pasted command text (see the module docstring) into a `CommandLine`."""
    cmd = CommandLine()
    env: dict[str, str] = {}
    commands: list[list[str]] = []
    bare: list[int] = []
    for number, line in enumerate(_logical_lines(text, cmd.warnings), start=1):
        stripped = line.strip().lstrip("!")
        if not stripped or stripped.startswith("#"):
            continue
        assign = _ASSIGN.match(stripped)
        if assign and " --" not in stripped:
            words = _split(assign.group(2)) or [""]
            env[assign.group(1)] = words[0]
            continue
        option_line = stripped.startswith("--") and bool(commands)
        if option_line:
            bare.append(number)  # an option line after a line without `\`: part of the command above
        stripped = _set_aside_placeholders(stripped, cmd.placeholders)
        if not stripped:
            continue
        if option_line:
            commands[-1] += _split(stripped)
        else:
            commands.append(_split(stripped))
    if bare:
        cmd.warnings.append(f"{len(bare)} line(s) starting with `--` (from line {bare[0]}) follow a line that does "
                            "not end with `\\`, as the sd-scripts docs write commands: a shell would run each "
                            "as a separate command; they were read as options of the command above them")
    with_flags = [c for c in commands if any(t.startswith("--") for t in c)]
    if not with_flags:
        raise ConfigError("found no `--flag` options in the command text")
    for other in commands:
        if other is not with_flags[0]:
            cmd.warnings.append(f"ignored the other command `{' '.join(other)[:60]}`")
    missing: set[str] = set()
    tokens = [_expand(t, env, missing) for t in with_flags[0]]
    for name in sorted(missing):
        cmd.warnings.append(f"${name} is not set in the text; kept as written")
    i = 0
    if tokens and tokens[0].rsplit("/", 1)[-1] in _LAUNCHERS:
        i = 2 if tokens[1:2] == ["launch"] else 1
        cmd.program = tokens[:i]
        cmd.launcher, _, i = _take_flags(tokens, i, launcher=True)
    while i < len(tokens) and not tokens[i].startswith("--"):
        cmd.program.append(tokens[i])
        i += 1
    cmd.flags, cmd.stray, _ = _take_flags(tokens, i, launcher=False)
    return cmd


def map_launcher(cmd: CommandLine, draft: Draft) -> None:
    """`accelerate launch --mixed_precision=bf16` sets the precision unless the script's own flag
    does; the launcher's other flags (processes, threads, GPUs) do not change the weights."""
    script_sets = {f.name for f in cmd.flags}
    for flag in cmd.launcher:
        if flag.name == "mixed_precision" and "mixed_precision" not in script_sets and flag.values:
            draft.put("train.mixed_precision", flag.values[0], f"accelerate launch {flag.text()}")
        else:
            draft.note(f"accelerate launch {flag.text()}", LAUNCHER)
