"""The README and the pages of docs/ say what the project does: their commands run as written, their links lead
somewhere, and the README keeps its two main commands.

Every command of a code block (indented, or fenced without a language or as bash/sh/console) of README.md and
docs/*.md is collected, its `\\` continuations joined and its comment cut, and sorted by one explicit rule
(`classify`):

- RUN, when it is cheap: a Python entry point of the project (`python`, `.venv/bin/python`: run here with this
  interpreter, in the project's root) asked for `--help`/`-h`, a dry run of a shipped sweep (`--dry-run`, also
  `--show ROW`), a resolved config (`--cfg job`, `--info`), a model inspection (`models.inspect`), an audit of
  presets (`harness.audit`), or a `--switch-table` printed. It must exit 0. A block line `$ COMMAND` followed by
  the lines it prints is a refusal shown as an example: it must exit non-zero and print those lines.
- SKIPPED, with the reason the rule gives: a command that names a file the reader has or makes (a placeholder:
  `...`, `[--option]`, `SWEEP`, a path not in the repository: `/data/...`, `sweeps/my_ablation.yaml`); one that
  trains, submits or samples (a submission, `harness.train` without `--cfg`/`--info`/`--help`, `harness.parity`:
  its own tests run them); one that needs a submitted sweep (its store: `status`, `logs`, `table`, `report`, `ui`,
  `cancel`, `migrate`, `gc`, `eval`) or starts a server (`mlflow-server`); one that needs GPUs, SLURM or root and
  apt, or installs or starts something (`torchrun`, `srun`, `sbatch`, `bash scripts/...`, `scripts/...`, `sudo`,
  `apt-get`, `hf`, `eval`, `cp`, `d=...`, shell chains); pytest itself.

A command no rule knows fails the collection test: a new kind of command gets a rule here, so that nothing is left
unchecked silently. Any command that fails when run is a stale statement of the documentation: fix the page.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAIN_COMMAND = "bash scripts/setup_env.sh && .venv/bin/python run_sweep.py sweeps/tiny_table4.yaml --wait --report"
TEST_COMMAND = "bash scripts/test.sh"
GUIDANCE_COMMAND = ".venv/bin/python run_sweep.py sweeps/tiny_table4_guidance.yaml --wait --report"
# The README's walkthrough writes its own sweep by copying a shipped one (its step 1): its dry runs run on that copy.
WALKTHROUGH_COPY = "cp sweeps/tiny_table4.yaml sweeps/my_ablation.yaml"
WALKTHROUGH = {"sweeps/my_ablation.yaml": "sweeps/tiny_table4.yaml"}
MIN_RUN = 25                    # the commands run; fewer means the collection broke (it cannot pass vacuously)
PYTHONS = ("python", "python3", ".venv/bin/python")
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
# Programs whose commands are never run here, and why.
NOT_RUN = {
    "torchrun": "needs GPUs (several processes of a training run)",
    "srun": "needs a SLURM cluster", "sbatch": "needs a SLURM cluster",
    "bash": "installs, sets up or starts servers (needs root and apt, or minutes)",
    "sudo": "needs root", "apt-get": "needs root and apt", "hf": "downloads from a model hub",
    "eval": "changes the shell's environment (a cluster's)", "cp": "makes the reader's own file",
    "scripts/multinode_slurm.sh": "starts a SLURM cluster (root)", "scripts/local_slurm.sh": "starts SLURM (root)",
    "scripts/local_postgres.sh": "starts PostgreSQL (root)",
}
# run_sweep.py's verbs that need a submitted sweep (its store and manifest), or start a server.
STORE_VERBS = ("status", "logs", "table", "report", "ui", "cancel", "migrate", "gc", "eval", "mlflow-server")
PLACEHOLDER = re.compile(r"\.\.\.|^\[|^[A-Z][A-Z_]+(\.[a-z]+)?$|<\w+>")      # ..., [--opt], SWEEP, REF.npz, <paper>
FILE_LIKE = re.compile(r"\.(ya?ml|npz|pt|pth|ckpt|safetensors|json)$")


@dataclass
class Command:
    text: str                       # as written (continuations joined, comment cut)
    page: str
    line: int
    expected: list[str] = field(default_factory=list)    # a `$ COMMAND` example: the lines it prints

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def code_lines(path: Path):
    """(line number, text) of every line of the page's shell code blocks: indented blocks (after a blank line),
    fenced blocks without a language or in a shell language; YAML and Python blocks left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fence, previous_blank, in_indented = None, True, False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                fence = None
            elif fence in SHELL_LANGUAGES:
                yield number, stripped
            continue
        if stripped.startswith("```"):
            fence, in_indented = stripped[3:].strip(), False
            continue
        indented = line.startswith("    ") and stripped != ""
        in_indented = indented and (in_indented or previous_blank)
        if in_indented:
            yield number, stripped
        elif stripped:
            in_indented = False
        previous_blank = stripped == ""


def page_commands(path: Path) -> list[Command]:
    """The commands of one page: lines whose first word is a program (not the output or YAML shown beside)."""
    page = str(path.relative_to(ROOT))
    commands: list[Command] = []
    pending = None                  # a command continued with `\`
    example = None                  # the `$ COMMAND` whose printed lines follow
    for number, text in code_lines(path):
        if pending is not None:
            pending.text += " " + text.removesuffix("\\").strip()
            if not text.endswith("\\"):
                pending = None
            continue
        if text.startswith("$ "):
            example = Command(text[2:], page, number)
            commands.append(example)
            continue
        words = text.split()
        if not words or text.startswith("#"):
            continue
        if example is not None and not is_command(words[0]):
            example.expected.append(text)
            continue
        example = None
        if not is_command(words[0]):
            continue
        command = Command(text.removesuffix("\\").strip(), page, number)
        commands.append(command)
        if text.endswith("\\"):
            pending = command
    for command in commands:
        command.text = strip_comment(command.text)
    return commands


def is_command(word: str) -> bool:
    return word in PYTHONS or word in NOT_RUN or word.startswith(("scripts/", "d=$("))


def strip_comment(text: str) -> str:
    """The command without its trailing `# comment` (a `#` outside quotes, after a space)."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    return text


def all_commands() -> list[Command]:
    return [command for path in PAGES for command in page_commands(path)]


def classify(command: Command) -> tuple[bool, str]:
    """(run it?, why not) by the rule of the module's docstring."""
    text = command.text
    if any(token in text for token in ("&&", "|", "$(", ";")):
        return False, "a shell chain (setup, or several commands): its parts are documented and run apart"
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise AssertionError(f"{command.id}: the command does not parse as shell words: {text!r} ({err})") from None
    program, args = words[0], words[1:]
    if program in NOT_RUN or program.startswith("scripts/"):
        return False, NOT_RUN.get(program, "a script: installs or starts servers")
    if program.startswith("d=$("):
        return False, "a shell chain (a fresh clone)"
    assert program in PYTHONS, f"{command.id}: no rule for the program {program!r} (add one to tests/test_readme.py)"
    for arg in args:
        if PLACEHOLDER.search(arg):
            return False, f"a placeholder ({arg})"
        value = arg.split("=", 1)[1] if "=" in arg and not arg.startswith("-") else arg
        if (FILE_LIKE.search(value) or value.startswith("/")) and not (ROOT / value).exists() \
                and value not in WALKTHROUGH:
            return False, f"names a file the reader has or makes ({value})"
    if "-h" in args or "--help" in args or command.expected:
        return True, ""
    if args[:1] == ["run_sweep.py"]:
        verb = args[1] if len(args) > 1 and not args[1].endswith((".yaml", ".yml")) else "submit"
        if verb in STORE_VERBS:
            return False, f"`{verb}` needs a submitted sweep (its store), or starts a server"
        if verb == "submit" and "--dry-run" in args:
            return True, ""
        return False, "submits and trains"
    if args[:1] == ["-m"] and len(args) > 1:
        module, rest = args[1], args[2:]
        if module == "models.inspect":
            return ("--write" not in rest), "writes a documentation page"
        if module == "harness.audit":
            return True, ""
        if module == "harness.train":
            if "--switch-table" in rest:
                return ("--write" not in rest), "writes a documentation page"
            if "--info" in rest or "--cfg" in rest:
                return True, ""
            return False, "trains"
        if module == "pytest":
            return False, "runs tests (this is a test)"
        if module in ("harness.parity", "harness.metrics", "harness.packed", "harness.latents", "models.convert"):
            return False, f"{module} computes on fixtures or data (its own tests run it)"
    raise AssertionError(f"{command.id}: no rule for {text!r} (add one to tests/test_readme.py)")


COMMANDS = all_commands()
RUN: list[Command] = []
for _command in COMMANDS:
    if classify(_command)[0] and all(_command.text != other.text for other in RUN):
        RUN.append(_command)                         # each once, where it is first shown


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict[str, str]:
    """The README's own sweep, as its step 1 makes it: a copy of a shipped sweep, in a folder of its own (its
    `output: ../runs` then lies beside it; a dry run creates nothing there anyway)."""
    copies = {}
    for name, source in WALKTHROUGH.items():
        copy = tmp_path_factory.mktemp("walkthrough") / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((ROOT / source).read_text())
        copies[name] = str(copy)
    return copies


def python_argv(command: Command, copies: dict[str, str]) -> list[str]:
    """The command with this interpreter for `python`/`.venv/bin/python`, the README's own sweep for its copy."""
    words = shlex.split(command.text)
    return [sys.executable, *(copies.get(word, word) for word in words[1:])]


@pytest.mark.parametrize("command", RUN, ids=lambda c: f"{c.id} {c.text[:100]}")
def test_documented_command_runs(command: Command, walkthrough):
    result = subprocess.run(python_argv(command, walkthrough), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    if command.expected:
        assert result.returncode != 0, f"{command.id}: `{command.text}` was shown refused, but it exited 0"
        printed = [line.strip() for line in output.splitlines()]
        for line in command.expected:
            assert line in printed, f"{command.id}: `{command.text}` no longer prints {line!r}; it printed:\n{output}"
    else:
        assert result.returncode == 0, f"{command.id}: `{command.text}` exited {result.returncode}:\n{output[-3000:]}"


def test_every_command_has_a_rule_and_enough_run():
    """Every command is classified (a command without a rule raises), and enough of them are run."""
    skipped = {}
    for command in COMMANDS:
        run, reason = classify(command)
        if not run:
            skipped.setdefault(reason.split(" (")[0], []).append(command.id)
    assert len(RUN) >= MIN_RUN, f"only {len(RUN)} documented commands run (expected {MIN_RUN} or more); " \
                                f"skipped: {skipped}"
    assert any(c.page.startswith("docs/") for c in RUN) and any(c.page == "README.md" for c in RUN)


def test_the_readme_keeps_its_main_commands():
    """The quick start's commands, verbatim, in code blocks; CI runs the test command."""
    readme = [c.text for c in page_commands(ROOT / "README.md")]
    for command in (MAIN_COMMAND, TEST_COMMAND, GUIDANCE_COMMAND):
        assert command in readme, f"README.md lost its command: {command}"
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
    assert f"`{WALKTHROUGH_COPY}`" in (ROOT / "README.md").read_text(), "the walkthrough's step 1 changed: update " \
                                                                       "WALKTHROUGH here"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"[`*]", "", heading.strip().lstrip("#").strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line) for line in text.splitlines() if line.startswith("#")}


LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")
# Pictures referred to before they are committed: skipped (named) until they exist; remove each when it lands.
PENDING_PICTURES: set[str] = set()


def test_every_link_leads_somewhere():
    """Every relative link of the README and the pages names a file of the repository and, with `#anchor`, one of
    its headings; every picture exists (or is pending, named by the skip)."""
    broken, pending = [], []
    for path in PAGES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for picture, target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            name = str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)
            if not resolved.exists():
                (pending if picture and name in PENDING_PICTURES else broken).append(f"{path.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)
    if pending:
        pytest.skip(f"pictures not committed yet: {pending}")
