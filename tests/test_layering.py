"""Layers import only downward (docs/architecture.md): every import statement of the package, of
kernels/, data_prep/ and launch/ (parsed with ast, lazy imports inside functions included) is
checked against the allowed directions below. A new subpackage must be added to the table."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOLDERS = {"megatron_omni": "megatron_omni", "kernels": "omni_kernels", "launch": "omni_launch",
           "data_prep": "omni_data_prep"}
"""Source folder -> the import name it installs under (setup.py)."""

BASE = {"megatron_omni.contract", "megatron_omni.platform"}
ALLOWED = {
    # the neutral layers: the batch contract and the device/backend decisions import nothing of ours
    "megatron_omni.contract": set(),
    "megatron_omni.platform": set(),
    "omni_kernels": set(),
    "megatron_omni.config": BASE,
    "megatron_omni.parallel": BASE | {"megatron_omni.config"},
    "megatron_omni.plan": BASE | {"megatron_omni.config"},   # the planner builds no model
    "megatron_omni.models": BASE | {"megatron_omni.config", "megatron_omni.parallel", "omni_kernels"},
    "megatron_omni.data": BASE | {"megatron_omni.config", "megatron_omni.parallel"},
    # reinforcement learning: rollouts, rewards, the GRPO loss; the trainer drives it
    "megatron_omni.rl": BASE | {"megatron_omni.config", "megatron_omni.parallel", "megatron_omni.models",
                                "megatron_omni.data", "omni_kernels"},
    "megatron_omni.training": BASE | {"megatron_omni.config", "megatron_omni.parallel",
                                      "megatron_omni.models", "megatron_omni.data", "omni_kernels",
                                      "megatron_omni.plan",   # the planner's FLOP counts
                                      "megatron_omni.rl"},
    "megatron_omni.conversion": BASE | {"megatron_omni.config", "megatron_omni.parallel",
                                        "megatron_omni.models", "megatron_omni.data",
                                        "megatron_omni.rl", "megatron_omni.training"},
    "megatron_omni": set(),   # the package's own __init__
    # the tools above the package
    "omni_data_prep": BASE | {"megatron_omni.config", "megatron_omni.data", "megatron_omni"},
    "omni_launch": {"*"},
}
"""Layer -> the other layers it may import (its own always)."""


def layer_of(module: str) -> str:
    """megatron_omni.<subpackage> for the package, else the top-level name."""
    parts = module.split(".")
    if parts[0] == "megatron_omni" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def module_name(path: Path) -> str:
    folder = path.relative_to(ROOT).parts[0]
    parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[folder]] + parts)


def imported_modules(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `text` (the file at `path`), relative ones
    resolved; `from a import b` counts as a.b as well as a, since b may be a subpackage."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def violations(path: Path, text: str) -> list[str]:
    """'file:line (layer) imports module' for each import of the file that ALLOWED forbids."""
    source = layer_of(module_name(path))
    name = path.relative_to(ROOT)
    if source not in ALLOWED:
        return [f"{name}: layer {source} is not in ALLOWED"]
    found, seen = [], set()
    for line, target in imported_modules(path, text):
        top = layer_of(target)
        if top == source or top not in ALLOWED or top == "megatron_omni" or (line, top) in seen:
            continue  # own layer, a name imported from a module, the package root, or reported
        if "*" not in ALLOWED[source] and top not in ALLOWED[source]:
            seen.add((line, top))
            found.append(f"{name}:{line} ({source}) imports {target}")
    return found


def test_layers_import_only_downward():
    files = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 50
    assert [v for path in files for v in violations(path, path.read_text())] == []


@pytest.mark.parametrize("source, statement, target", [
    ("megatron_omni/config/extra.py", "from megatron_omni.models.llm import spec",
     "megatron_omni.models.llm"),
    ("megatron_omni/models/extra.py", "import os\nfrom megatron_omni.data import tokenizer",
     "megatron_omni.data"),
    ("megatron_omni/models/omni/extra.py", "from ...training import step", "megatron_omni.training"),
    ("megatron_omni/data/extra.py", "import megatron_omni.training.step", "megatron_omni.training.step"),
    ("megatron_omni/contract/extra.py", "from megatron_omni import config", "megatron_omni.config"),
    ("megatron_omni/training/extra.py", "def f():\n    from omni_data_prep import demo_data",
     "omni_data_prep"),
    ("megatron_omni/data/multimodal/extra.py", "from omni_launch.pretrain_omni import main",
     "omni_launch.pretrain_omni"),
])
def test_an_upward_import_is_caught(source, statement, target):
    """The checker itself: one planted upward import (absolute, relative, lazy, or `from pkg
    import subpackage`) is reported once, with its file, line and target."""
    path = ROOT / source
    line = statement.count("\n") + 1
    assert violations(path, statement) == [f"{source}:{line} ({layer_of(module_name(path))}) "
                                           f"imports {target}"]


def test_allowed_imports_pass():
    assert violations(ROOT / "megatron_omni/training/extra.py",
                      "from megatron_omni.models.omni import model\nfrom . import step") == []
