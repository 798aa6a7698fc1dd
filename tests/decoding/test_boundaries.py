"""flaxzoo.decoding depends on jax only: no Flax, no flaxzoo.models (DESIGN.md).

Dimension key: none (no arrays here).
"""

import ast
import pathlib
import sys

import flaxzoo.decoding

_ALLOWED_ROOTS = {"jax", "flaxzoo"} | set(sys.stdlib_module_names)


def test_decoding_imports_only_jax_and_itself():
    package_dir = pathlib.Path(flaxzoo.decoding.__file__).parent
    for path in sorted(package_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in _ALLOWED_ROOTS, f"{path.name} imports {name}"
                if root == "flaxzoo":
                    assert name.startswith("flaxzoo.decoding"), f"{path.name} imports {name}"


def test_public_api():
    assert sorted(flaxzoo.decoding.__all__) == [
        "SamplingState",
        "StepFn",
        "apply_temperature",
        "greedy",
        "make_generate_fn",
        "sample",
        "sample_next_token",
        "top_k_filter",
    ]
    for name in flaxzoo.decoding.__all__:
        assert hasattr(flaxzoo.decoding, name)
