"""flaxzoo installs as an editable package and as a wheel that works outside the repo."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("layers", "models", "decoding", "train")


def test_editable_install_maps_the_top_level_folders():
    import flaxzoo.decoding
    import flaxzoo.layers
    import flaxzoo.models
    import flaxzoo.train

    for name, module in zip(SUBPACKAGES, (flaxzoo.layers, flaxzoo.models, flaxzoo.decoding,
                                          flaxzoo.train)):
        assert Path(module.__file__).resolve() == REPO / name / "__init__.py"


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory):
    """Builds a wheel from a copy of the sources, so the repo gets no build/ folder."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *SUBPACKAGES):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    wheels = list(out.glob("flaxzoo-*.whl"))
    assert len(wheels) == 1
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheels[0])], check=True, capture_output=True, timeout=300)
    return target


def test_built_wheel_imports_from_outside_the_repo(wheel_dir, tmp_path):
    # -S skips site.py, so the editable install's path hook is not loaded; the
    # wheel's folder comes first and the dependencies come from site-packages.
    site_packages = sysconfig.get_paths()["purelib"]
    code = f"""
import sys
sys.path[:0] = [{str(wheel_dir)!r}, {site_packages!r}]
import flaxzoo.layers, flaxzoo.models, flaxzoo.decoding, flaxzoo.train
for m in (flaxzoo.layers, flaxzoo.models, flaxzoo.decoding, flaxzoo.train):
    assert m.__file__.startswith({str(wheel_dir)!r}), m.__file__
from flaxzoo.train.data import load_plays
plays = load_plays()
assert len(plays) == 38, len(plays)
import jax.numpy as jnp
from flax import nnx
from flaxzoo.models import GPT, GPTConfig
logits, _ = GPT(GPTConfig.tiny(), rngs=nnx.Rngs(0))(jnp.zeros((1, 3), jnp.int32), jnp.arange(3)[None])
print("ok", logits.shape)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ok (1, 3, 32)" in proc.stdout


def test_wheel_declares_the_console_script(wheel_dir):
    entry_points = next(wheel_dir.glob("flaxzoo-*.dist-info")) / "entry_points.txt"
    assert "flaxzoo = flaxzoo.train.cli:main" in entry_points.read_text()
