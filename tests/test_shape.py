"""The shape of the code: layers import only downwards, no import cycles (function-local and
TYPE_CHECKING imports included), every module imports on its own, modules stay small, the
planner and `edgeshard status` never load torch, and the design is documented inside the repo."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"solver": "edgeshard.solver", "discovery": "edgeshard.discovery", "peer": "edgeshard.peer"}
MAX_LINES = 400
MAX_PEER_TOP_MODULES = 4  # __init__, errors, wire and room for one more

# What each layer may import of EdgeShard (by module-name prefix); cli may import anything.
ALLOWED: dict[str, tuple[str, ...]] = {
    "edgeshard.solver": ("edgeshard.solver",),
    "edgeshard.discovery": ("edgeshard.discovery",),
    "edgeshard.peer.errors": (),
    "edgeshard.peer.wire": ("edgeshard.peer.errors", "edgeshard.peer.wire"),
    "edgeshard.peer.model": (
        "edgeshard.solver",
        "edgeshard.peer.errors",
        "edgeshard.peer.wire",
        "edgeshard.peer.model",
    ),
    "edgeshard.peer.pipeline": (
        "edgeshard.peer.errors",
        "edgeshard.peer.wire",
        "edgeshard.peer.model",
        "edgeshard.peer.pipeline",
    ),
    "edgeshard.peer.api": (
        "edgeshard.peer.errors",
        "edgeshard.peer.wire",
        "edgeshard.peer.model",
        "edgeshard.peer.pipeline",
        "edgeshard.peer.api",
    ),
    "edgeshard.peer.daemon": (
        "edgeshard.solver",
        "edgeshard.discovery",
        "edgeshard.peer.errors",
        "edgeshard.peer.wire",
        "edgeshard.peer.model",
        "edgeshard.peer.pipeline",
        "edgeshard.peer.api",
        "edgeshard.peer.daemon",
    ),
    "edgeshard.peer.cli": ("edgeshard",),
    "edgeshard.peer": (),  # the package's __init__
}


def modules() -> dict[str, Path]:
    """Every project module by its installed name."""
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path, known: Collection[str]) -> Iterator[str]:
    """The modules of `known` that `name` imports anywhere in its source (module level, in
    functions, under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import name` imports the submodule pkg.name when there is one.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: sorted(set(imports_of(name, path, MODULES))) for name, path in MODULES.items()}


def layer(name: str) -> str:
    """The most specific key of ALLOWED that `name` belongs to."""
    return max((key for key in ALLOWED if name == key or name.startswith(key + ".")), key=len)


def test_the_module_list_is_complete() -> None:
    assert "edgeshard.peer.daemon.lifecycle" in MODULES and "edgeshard.solver.planner" in MODULES
    assert GRAPH["edgeshard.peer.daemon.node"], "the import scanner finds nothing"


def test_layers_import_only_downwards() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if not any(target == p or target.startswith(p + ".") for p in ALLOWED[layer(name)])
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in GRAPH[name]:
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in GRAPH:
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(" → ".join(cycle) for cycle in cycles)


def test_the_cycle_check_sees_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\ndef f():\n    from . import c\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {"edgeshard.peer.a", "edgeshard.peer.b", "edgeshard.peer.c"}
    assert set(imports_of("edgeshard.peer.a", path, known)) == {"edgeshard.peer.b", "edgeshard.peer.c"}


def test_modules_stay_small() -> None:
    big = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_peer_keeps_few_modules_at_its_top_level() -> None:
    top = sorted(p.name for p in (ROOT / "peer").glob("*.py"))
    assert len(top) <= MAX_PEER_TOP_MODULES, top


# Each project module is imported in a child forked from one interpreter that has imported only
# the third-party and standard modules the project names: the project's own modules start fresh in
# every child, so a module that works only after another was imported still fails, and the ~1.5 s
# of torch and transformers per module is paid once (this test took 87 s as one process each).
FORKED_IMPORTS = """
import importlib, json, os, sys, traceback
names, warm = json.loads(sys.stdin.read())
for module in warm:
    try:
        importlib.import_module(module)
    except Exception:
        pass  # optional or type-checking only: the child's own import decides
assert not [m for m in sys.modules if m.startswith("edgeshard")], "the warm-up imported the project"
failures = {}
for name in names:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            code = 1
            os.write(write, traceback.format_exc()[-2000:].encode())
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failures[name] = error or f"wait status {status}"
print(json.dumps(failures))
"""


def import_each_alone(names: list[str], warm: list[str], cwd: Path | None = None) -> dict[str, str]:
    """Each of `names` imported in its own fork of an interpreter warmed with `warm`: the failures."""
    run = subprocess.run(
        [sys.executable, "-c", FORKED_IMPORTS],
        cwd=cwd,
        input=json.dumps([names, warm]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    failures: dict[str, str] = json.loads(run.stdout.splitlines()[-1])
    return failures


def third_party_imports() -> list[str]:
    """Every module outside the project that a project module imports by absolute name."""
    found: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return sorted(m for m in found if m.split(".")[0] not in ("edgeshard", "__future__"))


def test_the_import_check_reports_a_module_that_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "leans.py").write_text("import helper_first\nhelper_first.VALUE\n")
    (tmp_path / "helper_first.py").write_text("VALUE = 1\n")
    (tmp_path / "needs_order.py").write_text("import sys\nsys.modules['helper_first'].VALUE\n")
    failures = import_each_alone(["leans", "needs_order", "json"], ["json"], cwd=tmp_path)
    assert set(failures) == {"needs_order"} and "KeyError" in failures["needs_order"]


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    names = [n for n in MODULES if not n.endswith("__main__")]
    failures = import_each_alone(names, third_party_imports())
    assert not failures, "\n\n".join(f"{n}:\n{err}" for n, err in failures.items())


HEAVY = ("torch", "transformers", "aiohttp", "numpy")
PROBE = """
import json, sys
from edgeshard.peer.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--cluster", "paper:llama2-7b", "--json"],
        ["compare", "--cluster", "paper:llama2-7b-small", "--json"],
        ["status", "--api", "http://127.0.0.1:9"],  # nobody listens: the error path counts too
        ["generate", "--help"],
    ],
)
def test_light_commands_never_import_torch(args: list[str]) -> None:
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=120
    )
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`edgeshard {' '.join(args)}` imported {loaded}"


def test_the_design_is_documented_inside_the_repository() -> None:
    architecture = ROOT / "docs" / "ARCHITECTURE.md"
    assert architecture.is_file() and (ROOT / "CONTRIBUTING.md").is_file() and (ROOT / "LICENSE").is_file()
    skip = {".venv", ".git", "build", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
    texts = [p for p in ROOT.rglob("*") if p.suffix in {".py", ".md", ".toml"} and not skip & set(p.parts)]
    texts += [p for p in (ROOT / "scripts").iterdir() if p.is_file()]
    old_sketch, shared = "DESIGN" + ".md", "../" + "shared"  # spelt apart so this file does not match
    outside = [str(p.relative_to(ROOT)) for p in texts if old_sketch in p.read_text() or shared in p.read_text()]
    assert not outside, f"references outside the repository: {outside}"
    for folder in PACKAGES:
        assert (ROOT / folder / "py.typed").is_file()
