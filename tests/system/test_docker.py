"""The Docker image, checked without Docker (CI has none, nor has the development machine).

The Dockerfile is read with a small instruction parser of its own (a Docker library would be one
more dependency for a few dozen lines), and checked against the project itself: the base image is pinned,
the image runs hwnas as a non-root user, installs extras and pins that pyproject.toml agrees
with, copies files that exist and that .dockerignore lets into the build context, and
docs/docker.md documents the mount points the Dockerfile creates and only hwnas commands and
options that exist.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hwnas.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCS = ROOT / "docs" / "docker.md"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
IMAGE = re.compile(r"^hwnas:[\w][\w.-]*$")  # the image as the docs name it: hwnas:latest, hwnas:<tag>
MOUNT_ROOTS = ("latency_tables", "data", "runs", "engines")  # the folders a hwnas command reads or writes


# ----------------------------------------------------------------------------- Dockerfile parser
@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts, 1-based
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined with a space

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (ENTRYPOINT ["hwnas"]), None for shell form."""
        if self.args.startswith("["):
            try:
                value = json.loads(self.args)
            except json.JSONDecodeError:
                return None  # Docker runs a malformed array as a shell command, too
            return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None
        return None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. A line ending in a backslash continues on the next one; comment
    lines (# first) and blank lines are dropped, also inside a continuation, as Docker does.
    Parser directives (# syntax=...) are comments here. Heredocs are not supported (unused)."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        cont = line.endswith("\\")
        parts.append(line[:-1].strip() if cont else line)
        if not cont:
            joined = " ".join(p for p in parts if p)
            keyword, _, args = joined.partition(" ")
            out.append(Instruction(start, keyword.upper(), args.strip()))
            parts = []
    if parts:
        raise ValueError(f"the instruction starting on line {start} ends in a continuation backslash")
    return out


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at &&, || and ; (enough for this Dockerfile)."""
    tokens = shlex.split(run_args, comments=False, posix=True)
    cmds, cur = [], []
    for tok in tokens:
        if tok in ("&&", "||", ";"):
            cmds.append(cur)
            cur = []
        elif tok.endswith(";"):
            cur.append(tok[:-1])
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    return [c for c in cmds if c]


# pip install options that take a value (as a separate word or after "=")
PIP_VALUE_OPTS = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                  "-f", "--find-links", "--only-binary", "--no-binary", "--platform", "--python-version",
                  "--target", "-t", "--prefix", "--root", "--progress-bar", "-e", "--editable"}


@dataclass
class PipInstall:
    line: int
    options: dict[str, list[str]]
    requirements: list[str]
    workdir: str


def pip_installs(instructions: list[Instruction]) -> list[PipInstall]:
    out, workdir = [], "/"
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / ins.args)
        if ins.keyword != "RUN":
            continue
        for cmd in shell_commands(ins.args):
            words = cmd[2:] if cmd[:2] == ["pip", "install"] else cmd[4:] if cmd[1:4] == ["-m", "pip", "install"] else None
            if words is None:
                continue
            opts: dict[str, list[str]] = {}
            reqs: list[str] = []
            it = iter(words)
            for w in it:
                if w.startswith("-"):
                    name, eq, value = w.partition("=")
                    if name in PIP_VALUE_OPTS:
                        opts.setdefault(name, []).append(value if eq else next(it))
                    else:
                        opts.setdefault(name, []).append("")
                else:
                    reqs.append(w)
            out.append(PipInstall(ins.line, opts, reqs, workdir))
    return out


def project_requirement(req: str) -> tuple[str, set[str]] | None:
    """A pip requirement that is a local path (the project), as (path, extras); None otherwise."""
    m = re.fullmatch(r"(?P<path>[./][^\[]*)(\[(?P<extras>[^\]]*)\])?", req)
    if not m:
        return None
    return m["path"], {e.strip() for e in (m["extras"] or "").split(",") if e.strip()}


def option_value(cmd: list[str], name: str) -> str | None:
    """The value of ``name`` in a command's words, given as "NAME VALUE" or "NAME=VALUE"."""
    for k, w in enumerate(cmd):
        if w == name and k + 1 < len(cmd):
            return cmd[k + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def copies(instructions: list[Instruction]) -> list[tuple[Instruction, list[str], str]]:
    """(instruction, sources, destination) of every COPY/ADD from the build context."""
    out = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = ins.exec_form() or shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage or image, not the context
        words = [w for w in words if not w.startswith("--")]
        out.append((ins, words[:-1], words[-1]))
    return out


# ----------------------------------------------------------------------------- .dockerignore
def _glob_to_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax: * within a path segment, ** across segments, ?, [classes]."""
    rx, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            rx, i = rx + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            rx, i = rx + ".*", i + 2
        elif pattern[i] == "*":
            rx, i = rx + "[^/]*", i + 1
        elif pattern[i] == "?":
            rx, i = rx + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.index("]", i)
            body = pattern[i + 1:j]
            rx, i = rx + "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]", j + 1
        else:
            rx, i = rx + re.escape(pattern[i]), i + 1
    return re.compile(rx)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = str(PurePosixPath(pattern.strip("/")))
        rules.append((negate, _glob_to_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether ``path`` (relative, /-separated) stays out of the build context: the last rule that
    matches it or one of its parent folders decides, a ! rule letting it back in."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    out = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            out = not negate
    return out


# ----------------------------------------------------------------------------- docs/docker.md
def doc_commands(text: str) -> list[str]:
    """Every shell command of the page: each line of its code blocks (continuations joined) and
    each inline code span."""
    cmds: list[str] = []
    in_block, pending = False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
            else:
                cmds.append(pending + line)
                pending = ""
        else:
            cmds += re.findall(r"`([^`]+)`", line)
    return cmds


@dataclass
class DocRun:
    command: str  # the line, for messages
    mounts: dict[str, bool]  # container path -> read-only
    args: list[str]  # what follows the image: a hwnas command line


def doc_hwnas_runs(text: str) -> list[DocRun]:
    """The `docker run ... hwnas:TAG ARGS` commands of the page (other images are skipped)."""
    runs = []
    for cmd in doc_commands(text):
        try:
            words = shlex.split(cmd, comments=True)
        except ValueError:
            continue  # prose in backticks that is not a shell line
        for i in range(len(words) - 1):
            if words[i:i + 2] != ["docker", "run"]:
                continue
            image_at = next((j for j in range(i + 2, len(words)) if IMAGE.match(words[j])), None)
            if image_at is None:
                continue
            mounts = {}
            opts = words[i + 2:image_at]
            specs = [opts[k + 1] for k, w in enumerate(opts[:-1]) if w in ("-v", "--volume")]
            specs += [w.split("=", 1)[1] for w in opts if w.startswith("--volume=")]
            for spec in specs:  # HOST:CONTAINER[:OPTIONS]
                fields = spec.split(":")
                mounts[fields[1].rstrip("/")] = len(fields) > 2 and "ro" in fields[2].split(",")
            args = []
            for w in words[image_at + 1:]:
                if w in (";", "&&", "||", "|"):
                    break
                args.append(w)
            runs.append(DocRun(cmd.strip(), mounts, args))
    return runs


def hwnas_command(args: list[str]) -> list[str]:
    """The (sub)command words of a hwnas command line: ["search"], ["data", "synth"]."""
    words = []
    for w in args:
        if w.startswith("-"):
            break
        words.append(w)
        if w != "data":  # the one command group
            break
    return words


def help_text(command: list[str], capsys) -> str:
    rc = main([*command, "--help"])
    out = capsys.readouterr().out
    assert rc == 0, f"hwnas {' '.join(command)} --help exits {rc}: not a hwnas command"
    return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    """docker/constraints.txt as {canonical name: exact version}; anything but name==version is refused."""
    out = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==" and "*" not in spec[0].version, \
            f"{CONSTRAINTS.name}: {line!r} is not an exact pin name==version"
        out[canonicalize_name(req.name)] = spec[0].version
    return out


def one(instructions, keyword) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def base_image(instructions) -> tuple[str, str]:
    words = [w for w in one(instructions, "FROM").args.split() if not w.startswith("--")]
    ref = words[0]
    assert "@" not in ref or ":" in ref.split("@")[0], f"FROM {ref}: a digest without a tag names no version"
    name, _, tag = ref.split("@")[0].rpartition(":")
    assert name and "/" not in tag, f"FROM {ref}: no tag"
    return name, tag


# ----------------------------------------------------------------------------- the tests
def test_parser_joins_continuations_and_drops_comments():
    text = ('# syntax=docker/dockerfile:1\nFROM a:1\nRUN echo one \\\n    # a comment inside\n\n'
            '    && echo two\nENTRYPOINT ["x", "y"]\nCMD echo [\n')
    ins = parse_dockerfile(text)
    assert [(i.line, i.keyword) for i in ins] == [(2, "FROM"), (3, "RUN"), (7, "ENTRYPOINT"), (8, "CMD")]
    assert ins[1].args == "echo one && echo two"
    assert ins[2].exec_form() == ["x", "y"] and ins[3].exec_form() is None
    with pytest.raises(ValueError):
        parse_dockerfile("RUN a \\\n")
    rules = dockerignore_rules("*\n!src\n!docs/keep.md\n**/__pycache__\n")
    assert ignored("runs/x", rules) and not ignored("src/a.py", rules) and ignored("src/__pycache__/a.pyc", rules)
    assert not ignored("docs/keep.md", rules) and ignored("docs/other.md", rules)


def test_base_image_is_pinned_by_a_version_tag_and_matches_the_cuda_of_tensorrt(instructions, pins):
    name, tag = base_image(instructions)
    assert tag != "latest" and re.search(r"\d", tag), f"FROM {name}:{tag}: pin a version, not a moving tag"
    assert "$" not in name + tag, "the base image must not come from a build argument"
    assert name.removeprefix("nvcr.io/") in ("nvidia/cuda", "nvidia/tensorrt"), name
    if name.endswith("nvidia/cuda"):
        # The image's CUDA major is the one the pinned TensorRT wheels (tensorrt-cuNN) are built for.
        version = re.match(r"(\d+)\.\d+(\.\d+)?-", tag)
        assert version, f"FROM {name}:{tag}: the tag does not start with the CUDA version"
        cuda_major = version.group(1)
        trt = {n: v for n, v in pins.items() if re.fullmatch(r"tensorrt-cu\d+(-libs|-bindings)?", n)}
        assert trt and all(n.startswith(f"tensorrt-cu{cuda_major}") for n in trt), (tag, trt)
        assert set(trt.values()) == {pins["tensorrt"]}, f"TensorRT packages at different versions: {trt}"


def test_runs_as_a_fixed_non_root_user_owning_work(instructions):
    entry = one(instructions, "ENTRYPOINT")
    users = [i for i in instructions if i.keyword == "USER" and i.line < entry.line]
    assert users, "no USER before ENTRYPOINT: the container would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].args} is root"
    assert not any(i.keyword == "USER" and i.line > entry.line for i in instructions)
    assert user.isdigit(), "a numeric USER, so Kubernetes' runAsNonRoot can verify it"
    runs = [c for i in instructions if i.keyword == "RUN" for c in shell_commands(i.args)]
    assert any(c[0] == "useradd" and option_value(c, "--uid") == user for c in runs), f"no useradd --uid {user}"
    workdir = one(instructions, "WORKDIR").args
    assert workdir == "/work"
    assert any(c[:2] == ["install", "-d"] and option_value(c, "-o") == user and workdir in c for c in runs), \
        f"{workdir} is not created owned by UID {user}"


def test_entrypoint_is_the_hwnas_console_script_and_cmd_runs(instructions, project, capsys):
    assert one(instructions, "ENTRYPOINT").exec_form() == ["hwnas"]
    target = project["scripts"].get("hwnas")
    assert target, "pyproject.toml declares no hwnas console script"
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is main
    cmd = one(instructions, "CMD").exec_form()
    assert cmd == ["--help"]
    assert main(cmd) == 0 and "Commands:" in capsys.readouterr().out


def test_installs_hwnas_with_existing_extras_including_tensorrt(instructions, project):
    copied_project = {str(PurePosixPath(dest if dest.endswith("/") else str(PurePosixPath(dest).parent)))
                      for _, srcs, dest in copies(instructions) if "pyproject.toml" in srcs}
    extras_installed = set()
    for pip in pip_installs(instructions):
        for req in pip.requirements:
            local = project_requirement(req)
            if local is None:
                continue
            path = str(PurePosixPath(pip.workdir) / local[0])
            assert path.rstrip("/") in copied_project, f"line {pip.line}: installs {path}, where no pyproject.toml was copied"
            assert "-e" not in pip.options and "--editable" not in pip.options, "the image installs hwnas, not a link to a source"
            extras_installed |= local[1]
    declared = set(project["optional-dependencies"])
    assert extras_installed, "hwnas itself is not installed from the build context"
    assert extras_installed <= declared, f"extras not in pyproject: {extras_installed - declared}"
    assert {"tensorrt", "postgres"} <= extras_installed


def test_everything_installed_is_pinned_and_agrees_with_pyproject(instructions, project, pins):
    installed_extras = set()
    targets = {dest for _, srcs, dest in copies(instructions) if "docker/constraints.txt" in srcs}
    for pip in pip_installs(instructions):
        # Every pip install resolves under the constraints file the Dockerfile copied in.
        used = pip.options.get("-c", []) + pip.options.get("--constraint", [])
        assert used and set(used) <= targets, f"line {pip.line}: pip install without -c docker/constraints.txt"
        named = [name for value in pip.options.get("--only-binary", []) for name in value.split(",") if name != ":all:"]
        for req in pip.requirements:
            local = project_requirement(req)
            if local is not None:
                installed_extras |= local[1]
                continue
            r = Requirement(req)
            named.append(r.name)
            inline = [s.version for s in r.specifier if s.operator == "=="]
            if inline:  # pinned on the line itself: must match the constraints file too
                assert pins.get(canonicalize_name(r.name)) in (None, inline[0]), (req, pins.get(r.name))
        unpinned = [n for n in named if canonicalize_name(n) not in pins]
        assert not unpinned, f"line {pip.line}: not pinned in {CONSTRAINTS.name}: {unpinned}"

    # Every requirement hwnas brings in with those extras is pinned, and each pin satisfies it.
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for e in sorted(installed_extras) for r in project["optional-dependencies"][e]]
    for r in reqs:
        version = pins.get(canonicalize_name(r.name))
        assert version is not None, f"{r.name} (required by pyproject) is not pinned in {CONSTRAINTS.name}"
        assert r.specifier.contains(version, prereleases=True), f"{r.name}=={version} does not satisfy pyproject's {r}"
    # Pins of packages named only in extras not installed still must not contradict pyproject.
    for extra in project["optional-dependencies"].values():
        for r in map(Requirement, extra):
            version = pins.get(canonicalize_name(r.name))
            assert version is None or r.specifier.contains(version, prereleases=True), (r, version)


def test_copied_paths_exist_and_reach_the_build_context(instructions):
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    found = copies(instructions)
    assert found
    for ins, srcs, _ in found:
        assert ins.keyword == "COPY", f"line {ins.line}: ADD (URLs, archives unpacked); use COPY"
        for src in srcs:
            path = ROOT / src
            assert path.exists(), f"line {ins.line}: COPY {src}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            assert files, f"line {ins.line}: COPY {src}: an empty folder"
            kept_out = [str(p.relative_to(ROOT)) for p in files if ignored(p.relative_to(ROOT).as_posix(), rules)]
            assert not kept_out, f"line {ins.line}: COPY {src}, but .dockerignore excludes {kept_out[:3]}"


def test_no_downloads_piped_to_a_shell(instructions):
    for ins in instructions:
        if ins.keyword == "RUN":
            assert not re.search(r"\b(curl|wget)\b[^|]*\|\s*(sudo\s+)?(ba|z|da)?sh\b", ins.args), f"line {ins.line}"


def test_dockerignore_keeps_runs_git_engines_caches_and_venvs_out():
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for path in ("runs/search/trials/abc/last.pt", ".git/HEAD", "engines/best.engine", "data/shapes/train.json",
                 "latency_tables/t.json", ".venv/bin/python", "venv/bin/python", "hwnas/cli/__pycache__/app.cpython-311.pyc",
                 ".pytest_cache/README.md", "hwnas.egg-info/PKG-INFO", ".env"):
        assert ignored(path, rules), f"{path} would enter the build context"
    for path in ("pyproject.toml", "README.md", "hwnas/cli/app.py", "docker/constraints.txt"):
        assert not ignored(path, rules), f"{path} is needed by the build but excluded"


def test_docs_mount_points_are_the_folders_the_dockerfile_creates(instructions):
    text = DOCS.read_text()
    workdir = one(instructions, "WORKDIR").args
    created = {w for i in instructions if i.keyword == "RUN" for c in shell_commands(i.args)
               if c[:2] == ["install", "-d"] for w in c if w.startswith(workdir + "/")}
    assert created == {f"{workdir}/{d}" for d in MOUNT_ROOTS}
    runs = doc_hwnas_runs(text)
    mounted = {p for r in runs for p in r.mounts}
    assert mounted == created, f"docs mount {sorted(mounted)}, the Dockerfile creates {sorted(created)}"
    for path in sorted(created | {workdir}):
        assert f"`{path}`" in text, f"docs/docker.md does not name {path}"
    name, tag = base_image(instructions)
    assert f"{name}:{tag}" in text, "docs/docker.md names another base image"


def test_docs_versions_are_the_pinned_ones(pins):
    text = DOCS.read_text()
    quoted = re.findall(r"\b([A-Za-z][\w.-]*)==([\w.+]+)", text)
    for name, version in quoted:
        if canonicalize_name(name) in pins:
            assert pins[canonicalize_name(name)] == version, f"docs say {name}=={version}, pinned {pins[canonicalize_name(name)]}"
    assert any(canonicalize_name(n) == "tensorrt-cu13" for n, _ in quoted)


def test_docs_commands_and_options_exist(capsys):
    text = DOCS.read_text()
    runs = doc_hwnas_runs(text)
    commands = {tuple(hwnas_command(r.args)) for r in runs}
    assert {("profile",), ("search",), ("export",), ("data", "synth")} <= commands
    # `hwnas CMD` in the prose as well
    for span in re.findall(r"`hwnas ([a-z][\w-]*(?: [a-z][\w-]*)?)", text):
        commands.add(tuple(hwnas_command(span.split())))
    helps = {c: help_text(list(c), capsys) for c in sorted(commands)}
    for r in runs:
        cmd = tuple(hwnas_command(r.args))
        for word in r.args[len(cmd):]:
            if word.startswith("--"):
                opt = word.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", helps[cmd]), \
                    f"hwnas {' '.join(cmd)} has no option {opt}: {r.command}"


def test_docs_commands_mount_what_they_read_and_write():
    """A path under latency_tables/, data/, runs/ or engines/ exists in the container only if its
    folder is mounted in that same command, and an --out only if the mount is writable."""
    for r in doc_hwnas_runs(DOCS.read_text()):
        words = r.args
        for k, w in enumerate(words):
            top = w.split("/", 1)[0]
            if top not in MOUNT_ROOTS or "/" not in w:
                continue
            target = f"/work/{top}"
            assert target in r.mounts, f"{w} is used but {target} is not mounted: {r.command}"
            if k and words[k - 1] == "--out":
                assert not r.mounts[target], f"--out {w} on a read-only mount: {r.command}"


def test_the_build_checks_a_usage_error_the_cli_really_prints(instructions, capfd):
    """The image build greps for the exact usage-error line: it must be what hwnas prints today."""
    greps = [c[c.index("grep"):] for i in instructions if i.keyword == "RUN" for c in shell_commands(i.args)
             if c[:2] == ["hwnas", "latency"] and "grep" in c]  # hwnas latency 2>&1 | grep -qx LINE
    assert len(greps) == 1 and greps[0][1] == "-qx", greps
    assert main(["latency"]) == 2
    assert capfd.readouterr().err.strip() == greps[0][2]
