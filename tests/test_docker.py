"""docker/: what can be checked without a Docker engine (none runs here, so the images are
unverified until built): every COPY source exists and survives the .dockerignore, every
version an image installs is one pyproject.toml allows, images run as a non-root user, and
the GPU/Jetson entry point really builds (warms) the model and hands over to edge-smw.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="Python 3.10 needs tomli to read TOML")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.jetson")
# Packages that replace a pinned one and must honour its pin (see pyproject's [gpu] note).
REPLACES = {"onnxruntime-gpu": "onnxruntime"}
# pip options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {"--extra-index-url", "--index-url", "-i", "-r", "--requirement", "-c",
                     "--constraint", "--find-links", "-f", "--target", "-t", "--prefix",
                     "--root", "--wheel-dir", "-w", "--cache-dir", "--platform",
                     "--python-version", "--only-binary", "--no-binary"}


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Dockerfile -> instructions, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out, stage = [], -1
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    values = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            values.setdefault(name.strip(), value.strip().strip('"'))
    return values


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def stage_names(instructions: list[Instruction]) -> dict[str, int]:
    names = {}
    for ins in instructions:
        parts = ins.args.split()
        if ins.keyword == "FROM" and len(parts) == 3 and parts[1].upper() == "AS":
            names[parts[2]] = ins.stage
    return names


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Build-context paths that COPY/ADD read (copies from other stages excluded)."""
    sources = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        parts = shlex.split(ins.args)
        if any(p.startswith("--from=") for p in parts):
            continue
        paths = [p for p in parts if not p.startswith("--")]
        sources += paths[:-1]
    return sources


def pip_installs(instructions: list[Instruction]) -> list[tuple[list[str], list[str]]]:
    """Per `pip install` command: (options, arguments) with ARG defaults substituted."""
    values = arg_defaults(instructions)
    commands = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        lexer = shlex.shlex(expand(ins.args, values), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands_tokens, current = [], []
        for token in lexer:
            if token in ("&&", ";", "||", "|"):
                commands_tokens.append(current)
                current = []
            else:
                current.append(token)
        commands_tokens.append(current)
        for tokens in commands_tokens:
            if "pip" not in tokens or "install" not in tokens:
                continue
            tokens = tokens[tokens.index("install") + 1 :]
            options, arguments, takes_value = [], [], False
            for token in tokens:
                if takes_value:
                    options[-1] += f" {token}"  # e.g. "-c /tmp/constraints.txt"
                    takes_value = False
                elif token.startswith("-"):
                    options.append(token)
                    takes_value = token in PIP_VALUE_OPTIONS
                else:
                    arguments.append(token)
            commands.append((options, arguments))
    return commands


def is_local(argument: str) -> bool:
    return argument.startswith(("/", ".", "$(")) or ".whl" in argument


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def pins() -> dict[str, SpecifierSet]:
    meta = project()
    requirements = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        requirements += extra
    out = {}
    for text in requirements:
        req = Requirement(text)
        out[canonicalize_name(req.name)] = req.specifier
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore(name: str) -> list[str]:
    path = DOCKER / f"{name}.dockerignore"
    if not path.is_file():
        path = REPO / ".dockerignore"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_reach_the_build(name: str) -> None:
    instructions = parse(DOCKER / name)
    sources = copy_sources(instructions)
    assert sources, f"{name} copies nothing from the repository"
    patterns = dockerignore(name)
    for source in sources:
        assert (REPO / source).exists(), f"{name}: COPY source {source} does not exist"
        assert not ignored(source, patterns), f"{name}: {source} is excluded by .dockerignore"
    # A stage named in COPY --from must exist.
    names = stage_names(instructions)
    for ins in instructions:
        for ref in re.findall(r"--from=(\S+)", ins.args):
            assert ref in names, f"{name}: COPY --from={ref} names no stage"


def test_dockerignore_rule_itself() -> None:
    patterns = ["*", "!edge_smw", "!docker/gpu-entrypoint.sh", "**/__pycache__"]
    assert ignored(".venv/bin/python", patterns)
    assert not ignored("edge_smw/runtime/runtime.py", patterns)
    assert ignored("edge_smw/__pycache__", patterns)
    assert ignored("docker/Dockerfile.cpu", patterns)
    assert not ignored("docker/gpu-entrypoint.sh", patterns)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_installed_versions_match_pyproject_pins(name: str) -> None:
    allowed = pins()
    extras = set(project().get("optional-dependencies", {}))
    installs = pip_installs(parse(DOCKER / name))
    assert installs, f"{name} installs nothing with pip"
    for _, arguments in installs:
        for argument in arguments:
            wanted = set(re.findall(r"\[([\w,\s-]+)\]$", argument)[0].split(",")) \
                if argument.endswith("]") else set()
            assert wanted <= extras, f"{name}: extras {wanted - extras} are not in pyproject"
            if is_local(argument):
                continue
            req = Requirement(argument)
            package = canonicalize_name(req.name)
            pinned = REPLACES.get(package, package)
            assert pinned in allowed, f"{name} installs {req.name}, which pyproject does not pin"
            exact = [s for s in req.specifier if s.operator == "=="]
            if exact:
                version = exact[0].version
                assert allowed[pinned].contains(version, prereleases=True), (
                    f"{name}: {req.name}=={version} is outside pyproject's "
                    f"{pinned}{allowed[pinned]}")
            else:
                assert set(map(str, req.specifier)) == set(map(str, allowed[pinned])), (
                    f"{name}: {req.name}{req.specifier} differs from pyproject's "
                    f"{pinned}{allowed[pinned]}")


def test_lock_used_by_images_fits_pyproject() -> None:
    """Images installing with -c constraints.txt get the lock's versions: each must be one
    pyproject allows, and the lock must be the file the image copies."""
    users = []
    for name in DOCKERFILES:
        instructions = parse(DOCKER / name)
        if any(o.split(" ")[0] in ("-c", "--constraint")
               for options, _ in pip_installs(instructions) for o in options):
            assert "constraints.txt" in copy_sources(instructions), name
            users.append(name)
    assert "Dockerfile.cpu" in users  # the CPU image installs exactly what CI tests
    allowed = pins()
    locked = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            package, version = line.split("==", 1)
            locked[canonicalize_name(package)] = version.strip()
    meta = project()
    needed = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["serve"]]
    for req in needed:
        package = canonicalize_name(req.name)
        assert package in locked, f"constraints.txt does not lock {req.name}"
        assert allowed[package].contains(locked[package], prereleases=True), (
            f"constraints.txt has {req.name}=={locked[package]}, outside pyproject's "
            f"{req.name}{allowed[package]}")


def test_no_deps_images_list_every_core_dependency() -> None:
    """An image that installs edge-smw with --no-deps must install each dependency itself."""
    meta = project()
    needed = {canonicalize_name(Requirement(r).name)
              for r in meta["dependencies"] + meta["optional-dependencies"]["serve"]}
    checked = []
    for name in DOCKERFILES:
        installs = pip_installs(parse(DOCKER / name))
        if not any("--no-deps" in options and any("edge_smw" in a for a in arguments)
                   for options, arguments in installs):
            continue
        listed = {REPLACES.get(canonicalize_name(Requirement(a).name),
                               canonicalize_name(Requirement(a).name))
                  for _, arguments in installs for a in arguments if not is_local(a)}
        assert needed <= listed, f"{name} misses {sorted(needed - listed)}"
        checked.append(name)
    assert "Dockerfile.jetson" in checked  # it must skip PyPI's OpenCV and onnxruntime


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root_with_an_entrypoint(name: str) -> None:
    instructions = parse(DOCKER / name)
    last = max(ins.stage for ins in instructions)
    final = [ins for ins in instructions if ins.stage == last]
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name} runs as root"
    entry = [ins.args for ins in final if ins.keyword == "ENTRYPOINT"]
    assert entry, f"{name} has no ENTRYPOINT"
    if name == "Dockerfile.cpu":
        assert entry[-1] == '["edge-smw", "serve"]'


def test_python_base_image_meets_requires_python() -> None:
    floor = SpecifierSet(project()["requires-python"])
    checked = 0
    for name in DOCKERFILES:
        instructions = parse(DOCKER / name)
        values = arg_defaults(instructions)
        for ins in instructions:
            match = re.match(r"python:(\d+\.\d+)", expand(ins.args, values))
            if ins.keyword == "FROM" and match:
                assert floor.contains(match.group(1) + ".0"), f"{name}: {ins.args}"
                checked += 1
    assert checked, "no Dockerfile starts FROM a python:X.Y image: nothing was checked"


# -- the GPU/Jetson entry point, run for real on CPU ------------------------------------------
ENTRYPOINT = DOCKER / "gpu-entrypoint.sh"


def entry_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def test_entrypoint_is_valid_and_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)


def test_entrypoint_refuses_an_unwritable_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = subprocess.run(["sh", str(ENTRYPOINT), "--version"], capture_output=True, text=True,
                          check=False, env=entry_env(EDGE_SMW_CACHE=str(blocker)), timeout=60)
    assert proc.returncode == 2
    assert "not writable" in proc.stderr and "mount a volume" in proc.stderr


def test_entrypoint_warms_the_model_then_runs_edge_smw(smiles_onnx: Path, tmp_path: Path) -> None:
    proc = subprocess.run(["sh", str(ENTRYPOINT), "--version"], capture_output=True, text=True,
                          check=False, timeout=300,
                          env=entry_env(EDGE_SMW_CACHE=str(tmp_path / "cache"),
                                        EDGE_SMW_MODEL=str(smiles_onnx),
                                        EDGE_SMW_BACKEND="onnxruntime-cpu"))
    assert proc.returncode == 0, proc.stderr
    assert "first start" in proc.stderr
    assert "engine ready (onnxruntime-cpu" in proc.stderr
    assert proc.stdout.startswith("edge-smw ")
    assert (tmp_path / "cache" / "ort-trt").is_dir()
    # A model that does not load stops the container with the reason, before serving.
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    proc = subprocess.run(["sh", str(ENTRYPOINT), "--version"], capture_output=True, text=True,
                          check=False, timeout=300,
                          env=entry_env(EDGE_SMW_CACHE=str(tmp_path / "cache2"),
                                        EDGE_SMW_MODEL=str(bad),
                                        EDGE_SMW_BACKEND="onnxruntime-cpu"))
    assert proc.returncode == 1 and "cannot build the engine" in proc.stderr
