"""The tree's layers hold: core <- libraries <- adapters <- CLI/apps, each importing only downward, and no module
imports a ``_private`` name from another package.

Read from the source (every ``import`` / ``from`` statement, module level or inside functions, and every
string given to ``importlib.import_module``), so a lazy import cannot hide a violation. Deprecated aliases
that point at a module's new home are listed by name, with where they point.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bgm_model", "bgm_integrations", "bgm_cli", "benchmarks")

CORE = {
    "bgm_model", "bgm_model.config", "bgm_model.modeling", "bgm_model.outputs", "bgm_model.protocols",
    "bgm_model.errors", "bgm_model.model_card", "bgm_model.assets", "bgm_model.validation", "bgm_model.version",
    "bgm_model.passages", "bgm_model.selection", "bgm_model.adapter_config",
}  # fmt: skip
LIBRARIES = ("bgm_model.readers", "bgm_model.traces", "bgm_model.training", "bgm_model.evaluation", "bgm_model.data",
             "bgm_model.rewards")  # fmt: skip
UPPER = ("bgm_integrations", "bgm_cli", "bgm_model.cli", "benchmarks")

#: Deprecated aliases: old import paths kept working, each pointing at the module's new, higher home.
DEPRECATED_UPWARD = {
    "bgm_model.readers.langchain": "bgm_integrations.langchain.reader",
    "bgm_model.readers.llama_index": "bgm_integrations.llama_index.reader",
    "bgm_model.cli": "bgm_cli.main",
    "bgm_model.cli.main": "bgm_cli.main",
    "bgm_integrations.demo": "bgm_cli.demo_app",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield _module_name(path), path


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import in ``path``."""
    package = _package_of(module, path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], node.lineno
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):  # fmt: skip
            yield node.args[0].value, [], node.lineno


def _under(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(
    modules: list[tuple[str, Path]] | None = None, allowed_upward: dict[str, str] = DEPRECATED_UPWARD
) -> list[str]:
    found = []
    for module, path in modules if modules is not None else list(_modules()):
        where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        for target, names, line in _imports(module, path):
            if not _under(target, PACKAGES):
                continue
            if allowed_upward.get(module) in {target, *(f"{target}.{n}" for n in names)}:
                continue
            if module in CORE and target not in CORE:
                found.append(f"{where}:{line}: core module imports {target}")
            if _under(module, LIBRARIES) and _under(target, UPPER):
                found.append(f"{where}:{line}: library imports {target} (adapters / CLI are above it)")
            if _under(module, ("bgm_integrations",)) and _under(target, ("bgm_cli", "bgm_model.cli", "benchmarks")):
                found.append(f"{where}:{line}: adapter imports {target}")
            for a, b in (("bgm_integrations.langchain", "bgm_integrations.llama_index"),
                         ("bgm_integrations.llama_index", "bgm_integrations.langchain")):  # fmt: skip
                if _under(module, (a,)) and _under(target, (b,)):
                    found.append(f"{where}:{line}: {a} imports {target}: adapters are independent")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            target_package = target if (ROOT / target.replace(".", "/")).is_dir() else target.rpartition(".")[0]
            if private and target_package != _package_of(module, path):
                found.append(f"{where}:{line}: imports private {private} from another package ({target})")
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
            if private_module and target_package != _package_of(module, path):
                found.append(f"{where}:{line}: imports the private module {target} from another package")
    return found


def test_every_module_imports_only_downward_and_nothing_private_across_packages() -> None:
    assert _violations() == []


def test_the_layer_check_catches_a_violation(tmp_path: Path) -> None:
    """The check above is not vacuous: without its allow-list the deprecated upward aliases are reported, and
    a core module importing a library or a private name of another package is reported."""
    assert any("bgm_model/readers/langchain.py" in v for v in _violations(allowed_upward={}))
    probe = tmp_path / "config.py"
    probe.write_text(
        "from bgm_model.training.sl_trainer import SLTrainer\n"
        "def f():\n    from bgm_model.readers.base import _secret\n"
    )
    found = _violations([("bgm_model.config", probe)])
    assert f"{probe}:1: core module imports bgm_model.training.sl_trainer" in found
    assert any(v.startswith(f"{probe}:3: core module imports bgm_model.readers.base") for v in found)
    assert f"{probe}:3: imports private ['_secret'] from another package (bgm_model.readers.base)" in found


def test_inference_imports_only_the_base_dependencies() -> None:
    """`pip install "bgm-bridge[langchain]"` pulls only inference dependencies: the core and the two rerankers
    import nothing that only the training extras declare."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0].split("=")[0] for d in project["dependencies"]) == [
        "safetensors", "tokenizers", "torch", "transformers"
    ]
    extras_only = ("numpy", "tqdm", "filelock", "accelerate", "matplotlib", "sacrebleu", "scipy")
    inference = [m for m in _modules() if m[0] in CORE or m[0] in (
        "bgm_integrations.langchain.compressor", "bgm_integrations.llama_index.postprocessor")]
    assert len(inference) >= len(CORE)
    found = [f"{path.name}:{line}: {target}" for module, path in inference
             for target, _, line in _imports(module, path) if _under(target, extras_only)]  # fmt: skip
    assert found == []
