"""flaxzoo.decoding depends on jax and the standard library only: no numpy, no Flax,
no flaxzoo.models (DESIGN.md); and its public API.

Dimension key: none (no arrays here).
"""

import ast
import pathlib
import sys

import flaxzoo.decoding

_ALLOWED_ROOTS = {"jax", "flaxzoo"} | set(sys.stdlib_module_names)
assert "numpy" not in _ALLOWED_ROOTS


def test_decoding_imports_only_jax_and_itself():
    package_dir = pathlib.Path(flaxzoo.decoding.__file__).parent
    paths = sorted(package_dir.glob("*.py"))
    assert {"__init__.py", "beam.py", "sampling.py", "processors.py"} <= {p.name for p in paths}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom):  # Relative: only within the package.
                assert node.level == 1, f"{path.name} imports from outside decoding/"
                continue
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in _ALLOWED_ROOTS, f"{path.name} imports {name}"
                if root == "flaxzoo":
                    assert name.startswith("flaxzoo.decoding"), f"{path.name} imports {name}"


def test_public_api():
    assert sorted(flaxzoo.decoding.__all__) == [
        "BeamSearchConfig",
        "BeamSearchOutput",
        "BeamState",
        "LENGTH_NORMALIZATIONS",
        "PAD_POSITION",
        "SampleOutput",
        "SamplingConfig",
        "SamplingState",
        "StepFn",
        "add_beam_dim",
        "apply_temperature",
        "beam_search",
        "gather_beams",
        "generate",
        "greedy",
        "left_pad",
        "length_penalty",
        "make_generate_fn",
        "prompt_positions",
        "repetition_penalty",
        "sample",
        "sample_next_token",
        "seen_tokens",
        "suppress_token",
        "top_k_filter",
        "top_p_filter",
    ]
    for name in flaxzoo.decoding.__all__:
        assert hasattr(flaxzoo.decoding, name)
    assert flaxzoo.decoding.PAD_POSITION == -1
    assert flaxzoo.decoding.LENGTH_NORMALIZATIONS == ("power", "gnmt")
