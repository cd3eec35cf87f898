"""The repository layout and the library boundary: ``peelscan`` never imports dagster."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_layout_exists():
    for p in ["pyproject.toml", "pipelines", "assets", "resources", "tests", "workspace.yaml",
              "README.md", "peelscan", "benchmarks", "Makefile", ".ci/run",
              "pipelines/definitions.py", "pipelines/partitions.py"]:
        assert (ROOT / p).exists(), p


def test_peelscan_source_has_no_dagster_import():
    """No module of the library imports dagster, even lazily. The one driver of Dagster, the
    ``run``/``backfill`` commands of ``peelscan/cli.py``, reaches the code location
    (``pipelines``) through a function-level import only when those commands are used."""
    offenders = []
    for path in (ROOT / "peelscan").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                root = n.split(".")[0]
                if root.startswith("dagster"):
                    offenders.append(f"{path.name}:{node.lineno} {n}")
                elif root in ("pipelines", "assets", "resources"):
                    if path.name != "cli.py" or id(node) in top_level:
                        offenders.append(f"{path.name}:{node.lineno} {n}")
    assert not offenders, offenders


def test_importing_every_peelscan_module_loads_no_dagster():
    modules = sorted(p.stem for p in (ROOT / "peelscan").glob("*.py") if p.stem != "__main__")
    code = ("import sys\n" + "".join(f"import peelscan.{m}\n" for m in modules if m != "__init__")
            + "bad = [m for m in sys.modules if m.split('.')[0] in ('dagster', 'pipelines', 'assets', 'resources')]\n"
            + "assert not bad, bad\nprint('ok', len(sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
