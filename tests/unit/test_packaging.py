"""The repository's own promises: pins in sync, README's two commands, CI's entry point, clean notebooks."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("ottlab[")]
    pins = {}
    for req in reqs:
        name, sep, version = req.partition("==")
        assert sep, f"pyproject dependency {req!r} is not pinned with =="
        pins[name.lower()] = version
    return pins


def test_environment_yml_pins_equal_pyproject() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {}
    for req in pip_section:
        if req.startswith("-"):
            continue
        name, _, version = req.partition("==")
        conda_pins[name.lower()] = version
    assert conda_pins == _pyproject_pins()


def test_constraints_agree_with_pyproject() -> None:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    constraints = {}
    for line in lines:
        name, sep, version = line.partition("==")
        if sep:
            constraints[re.sub(r"[-_.]+", "-", name).lower()] = version
    for name, version in _pyproject_pins().items():
        name = name.split("[")[0]  # extras do not appear in a freeze
        assert constraints.get(re.sub(r"[-_.]+", "-", name)) == version, f"constraints.txt disagrees on {name}"


def test_readme_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no command block"
    assert blocks[0].split() == ["make", "lab"]
    assert blocks[1].split() == ["make", "test"]


def test_ci_runs_make_test() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        for index, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} cell {index} has outputs"
                assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"


# A notebook orchestrates: longer code, a function, or a question about which target it runs on
# belongs in labkit. The modules of ott a lesson opens on purpose are the ones README lists.
MAX_CELL_LINES = 20
NOTEBOOK_IMPORTS = {"labkit", "pandas", "matplotlib", "IPython"}
OTT_MODULES_OPENED_ON_PURPOSE = {
    "ott.media.probe",     # 02: what the transcoder asks ffprobe about a source
    "ott.media.analysis",  # 02: the transcoder's own measurement of every segment it wrote
    "ott.signing",         # 03: the anatomy of a signed URL, and signing one with the lab's secret
    "ott.cmcd",            # 03: the CMCD a viewer sent, parsed as the edge's exporter parses it
}


def _code_cells(path: Path) -> list[tuple[int, str]]:
    nb = json.loads(path.read_text())
    # IPython's line magics (%matplotlib inline) are not Python: blanked out, keeping the line count.
    return [(i, "".join("\n" if line.startswith(("%", "!")) else line for line in c["source"]))
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def test_notebooks_are_thin_and_never_ask_which_target_they_run_on() -> None:
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        for index, source in _code_cells(path):
            where = f"{path.name} cell {index}"
            assert len(source.splitlines()) <= MAX_CELL_LINES, f"{where}: {len(source.splitlines())} lines"
            tree = ast.parse(source)
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            defined = [n for n in ast.walk(tree) if isinstance(n, kinds)]
            assert not defined, f"{where} defines {ast.unparse(defined[0])[:60]!r}: move it into labkit"
            assert not re.search(r"\.name\b\s*[=!]=|\bLOCAL\b|\.target\s*[=!]=|cfg\.target\b", source), \
                f"{where} asks which target it runs on: make the difference a Target method"


def _imported_modules(source: str) -> list[str]:
    """The modules a cell imports: `from ott import signing` opens ott.signing, `from ott.cmcd import x` ott.cmcd."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = REPO.joinpath(*node.module.split("."), alias.name)
                is_module = submodule.with_suffix(".py").is_file() or submodule.is_dir()
                names.append(f"{node.module}.{alias.name}" if is_module else node.module)
    return names


def test_notebooks_import_labkit_and_the_standard_library_only() -> None:
    import sys

    opened = set()
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        for index, source in _code_cells(path):
            for name in _imported_modules(source):
                top = name.split(".")[0]
                if top == "ott":
                    opened.add(name)
                ok = (top in NOTEBOOK_IMPORTS or top in sys.stdlib_module_names
                      or name in OTT_MODULES_OPENED_ON_PURPOSE)
                assert ok, f"{path.name} cell {index} imports {name}: go through labkit, or list it in README"
    # README lists exactly these: a module no lesson opens any more leaves the list.
    assert opened == OTT_MODULES_OPENED_ON_PURPOSE, OTT_MODULES_OPENED_ON_PURPOSE - opened


def test_notebooks_have_one_literal_parameters_cell() -> None:
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        source = "".join(tagged[0]["source"])
        names = []
        # papermill replaces this cell's assignments: each must be NAME = <a literal>, and nothing else.
        for statement in ast.parse(source).body:
            assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, \
                f"{path.name}: the parameters cell holds more than assignments: {ast.unparse(statement)}"
            target = statement.targets[0]
            assert isinstance(target, ast.Name) and target.id.isupper(), f"{path.name}: {ast.unparse(target)}"
            try:
                ast.literal_eval(statement.value)
            except ValueError:
                raise AssertionError(f"{path.name}: {target.id} is not a literal: {ast.unparse(statement.value)}") \
                    from None
            names.append(target.id)
        assert {"TARGET", "INTERACTIVE"} <= set(names), f"{path.name}: parameters lack TARGET/INTERACTIVE"
        assert nb["metadata"]["kernelspec"]["name"] == "ottlab", f"{path.name} must pin the 'ottlab' kernel"


# What the services must never need: the instruments' own packages (the `lab` extra) and labkit.
LAB_ONLY_DISTRIBUTIONS = {"jupyterlab", "ipykernel", "ipywidgets", "matplotlib", "pandas", "playwright",
                          "prometheus-api-client", "psutil", "supervisor", "aiohttp", "kubernetes"}
LAB_ONLY_MODULES = ("labkit", "jupyterlab", "jupyter_server", "ipykernel", "IPython", "ipywidgets", "matplotlib",
                    "pandas", "playwright", "prometheus_api_client", "psutil", "supervisor", "aiohttp", "yarl",
                    "kubernetes")


def test_the_services_dependency_set_leaves_out_the_lab() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    services = {re.split(r"[\[=]", req)[0].lower() for req in project["dependencies"]}
    lab = {re.split(r"[\[=]", req)[0].lower() for req in project["optional-dependencies"]["lab"]}
    assert not services & LAB_ONLY_DISTRIBUTIONS, services & LAB_ONLY_DISTRIBUTIONS
    assert LAB_ONLY_DISTRIBUTIONS - {"kubernetes"} <= lab
    assert "ottlab[lab,kube]" in project["optional-dependencies"]["dev"]


def test_every_ott_module_imports_without_the_lab_packages() -> None:
    # A fresh interpreter in which importing any lab-only package fails, as in the services image.
    code = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {LAB_ONLY_MODULES!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("lab-only package imported by a service: " + name)
        return None
sys.meta_path.insert(0, Refuse())
import ott
names = [m.name for m in pkgutil.walk_packages(ott.__path__, "ott.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 25, "every ott module was imported"


def test_the_services_image_carries_ott_and_not_labkit() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    copies = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "ott/" in copies
    assert not [c for c in copies if c.startswith("labkit")]
    assert "labkit" in (REPO / ".dockerignore").read_text().splitlines()
