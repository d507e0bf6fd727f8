"""The repository's Dockerfile read with Docker's own parser, and its build steps replayed without Docker.

No base image can be pulled on the project's machines, so the tests replay what the image build
does: the build context is the repository filtered by `.dockerignore` (Docker's matching rules,
from docker-py), each stage's root is a directory, each stage's Python is a fresh virtualenv, and
the RUN steps that install something run with `/bin/sh -c` as Docker runs them, the stage's ARG
defaults and ENV in their environment and its absolute paths moved under the stage's root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
from docker.utils.build import exclude_paths

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Variables of the test's own environment that would make a fresh virtualenv see other code.
_FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: `keyword` upper-case, `--flags` apart from the arguments."""

    keyword: str
    flags: tuple[str, ...]
    args: tuple[str, ...]
    json: bool
    line: int

    def flag(self, name: str) -> str | None:
        """The value of `--name=value`, or None."""
        prefix = f"--{name}="
        return next((f[len(prefix) :] for f in self.flags if f.startswith(prefix)), None)


@dataclass(frozen=True)
class Stage:
    """A build stage: its FROM line and the instructions up to the next one."""

    index: int
    name: str | None
    base: str
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile."""

    path: Path
    instructions: tuple[Instruction, ...]
    stages: tuple[Stage, ...]

    @classmethod
    def parse(cls, path: Path = DOCKERFILE) -> Dockerfile:
        return cls.from_commands(path, dockerfile.parse_file(str(path)))

    @classmethod
    def parse_string(cls, text: str) -> Dockerfile:
        return cls.from_commands(Path("<string>"), dockerfile.parse_string(text))

    @classmethod
    def from_commands(cls, path: Path, commands: Iterable[Any]) -> Dockerfile:
        instructions = tuple(
            Instruction(
                keyword=str(c.cmd).upper(),
                flags=tuple(str(f) for f in c.flags),
                args=tuple(str(v) for v in c.value),
                json=bool(c.json),
                line=int(c.start_line),
            )
            for c in commands
        )
        stages: list[Stage] = []
        current: list[Instruction] = []
        head: Instruction | None = None
        for instruction in (*instructions, None):
            if instruction is not None and instruction.keyword != "FROM":
                current.append(instruction)
                continue
            if head is not None:
                name = head.args[2] if len(head.args) == 3 and head.args[1].upper() == "AS" else None
                stages.append(Stage(len(stages), name, head.args[0], tuple(current)))
            head, current = instruction, []
        return cls(path, instructions, tuple(stages))

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, ref: str) -> Stage:
        """A stage by name (`COPY --from=builder`) or index."""
        for stage in self.stages:
            if stage.name == ref or str(stage.index) == ref:
                return stage
        raise KeyError(f"{self.path}: no stage {ref!r}")


def build_context(source: Path, dest: Path) -> Path:
    """Copy into `dest` what Docker sends as the build context of `source` (after its .dockerignore)."""
    ignore = source / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()] if ignore.exists() else []
    patterns = [p for p in patterns if p and not p.startswith("#")]
    dest.mkdir(parents=True)
    for relative in sorted(exclude_paths(str(source), patterns)):
        src, dst = source / relative, dest / relative
        if src.is_dir() and not src.is_symlink():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return dest


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without what would leak its Python into another, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(extra)
    return env


@dataclass
class StageRun:
    """One stage replayed: its root directory, its Python (a virtualenv) and its state."""

    stage: Stage
    root: Path
    venv: Path
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    ran: list[Instruction] = field(default_factory=list)
    skipped: list[Instruction] = field(default_factory=list)

    def host(self, path: str) -> Path:
        """Where the container path `path` (relative to WORKDIR when not absolute) lies in the replay."""
        absolute = PurePosixPath(self.workdir) / path
        return self.root.joinpath(*absolute.parts[1:])

    def rewrite(self, text: str) -> str:
        """`text` with each absolute path whose top directory the replay has made moved under the root."""

        def move(match: re.Match[str]) -> str:
            if (self.root / match.group(1)).exists():
                return str(self.root) + match.group(0)
            return match.group(0)

        return re.sub(r"(?<![\w.$}/:-])/([\w.-]+)", move, text)

    def run_env(self) -> dict[str, str]:
        bin_dir = str(self.venv / "bin")
        return clean_env({**self.env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", os.defpath)})

    def command(self, argv: Iterable[str]) -> list[str]:
        """An exec-form command of the image as it runs in the replay: the venv's executable, moved paths."""
        args = [self.rewrite(a) for a in argv]
        executable = self.venv / "bin" / args[0]
        if executable.exists():
            args[0] = str(executable)
        return args


def make_venv(path: Path) -> Path:
    """A fresh virtualenv (with pip) standing in for a stage's base image's Python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=120)
    return path


class ReplayError(Exception):
    """A replayed RUN step failed."""

    def __init__(self, instruction: Instruction, result: subprocess.CompletedProcess[str]) -> None:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        super().__init__(f"Dockerfile line {instruction.line}: exit status {result.returncode}\n{tail}")
        self.instruction = instruction
        self.output = result.stdout + result.stderr


def replay(
    parsed: Dockerfile,
    context: Path,
    workspace: Path,
    runs: Callable[[Instruction], bool],
    timeout_sec: float = 240,
) -> list[StageRun]:
    """Replay every stage of `parsed` in `workspace`; RUN steps for which `runs` is false are skipped."""
    done: list[StageRun] = []
    for stage in parsed.stages:
        state = StageRun(stage, workspace / f"stage{stage.index}", make_venv(workspace / f"venv{stage.index}"))
        state.root.mkdir(parents=True)
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                state.workdir = str(PurePosixPath(state.workdir) / instruction.args[0])
                state.host(".").mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "ARG":
                name, sep, default = instruction.args[0].partition("=")
                if sep:
                    state.env.setdefault(name, default)
            elif instruction.keyword == "ENV":
                pairs = instruction.args
                state.env.update(zip(pairs[0::2], pairs[1::2], strict=True))
            elif instruction.keyword == "COPY":
                origin = instruction.flag("from")
                source_root = context if origin is None else done[parsed.stage(origin).index].root
                _copy(instruction, source_root, state)
            elif instruction.keyword == "RUN":
                if not runs(instruction):
                    state.skipped.append(instruction)
                    continue
                result = subprocess.run(
                    ["/bin/sh", "-c", state.rewrite(instruction.args[0])],
                    cwd=state.host("."),
                    env=state.run_env(),
                    capture_output=True,
                    text=True,
                    timeout=timeout_sec,
                )
                if result.returncode != 0:
                    raise ReplayError(instruction, result)
                state.ran.append(instruction)
        done.append(state)
    return done


def _copy(instruction: Instruction, source_root: Path, state: StageRun) -> None:
    """COPY as Docker does it: a directory's contents into the destination, files into it or onto it."""
    *sources, dest = instruction.args
    target = state.host(dest)
    into = dest.endswith("/") or len(sources) > 1
    for source in sources:
        src = source_root.joinpath(*PurePosixPath(source).parts[1 if source.startswith("/") else 0 :])
        if not src.exists():
            raise FileNotFoundError(f"Dockerfile line {instruction.line}: COPY source {source!r} is not in the context")
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            final = target / src.name if into or target.is_dir() else target
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, final)
