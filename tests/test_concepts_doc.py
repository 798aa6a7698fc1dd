"""docs/concepts.md stays true: every API it names exists, every test it cites is defined."""

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("layers", "models", "decoding", "train")


def _rows():
    text = (REPO / "docs" / "concepts.md").read_text()
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 6 and cells[1].isdigit():
            yield cells[1], cells[3], cells[4]


def _resolve(dotted: str):
    """flaxzoo.<dotted> as an attribute chain, importing submodules as needed."""
    parts = dotted.split(".")
    obj = importlib.import_module(f"flaxzoo.{parts[0]}")
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(obj, part):
            obj = importlib.import_module("flaxzoo." + ".".join(parts[: i + 1]))
        else:
            obj = getattr(obj, part)
    return obj


def test_every_named_api_exists():
    names = 0
    for number, api, _ in _rows():
        for code in re.findall(r"`([^`]+)`", api):
            match = re.match(r"((?:%s)(?:\.\w+)+)" % "|".join(PACKAGES), code)
            if match:
                _resolve(match.group(1))  # raises if the row names something missing
                names += 1
    assert names > 40


def test_every_cited_test_is_defined():
    cited = 0
    for number, _, tests in _rows():
        current = None
        for code in re.findall(r"`([^`]+)`", tests):
            path_part, _, name = code.partition("::")
            current = path_part or current
            path = REPO / "tests" / current
            assert path.exists(), f"concept {number} cites missing {path}"
            if name:
                assert re.search(rf"^def {name}\(", path.read_text(), re.M), (
                    f"concept {number} cites {current}::{name}, which is not defined")
                cited += 1
    assert cited > 40
