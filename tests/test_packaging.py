"""Packaging: the top-level folders install as edgetx.* — editable and as a built wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, run_python


def test_editable_install_maps_the_top_level_folders():
    import edgetx.exporters
    import edgetx.models
    import edgetx.runtimes

    for module, folder in ((edgetx.runtimes, "runtimes"), (edgetx.exporters, "exporters"), (edgetx.models, "models")):
        assert Path(module.__file__).parent == REPO / folder


@pytest.mark.slow
def test_built_wheel_installs_and_runs(tmp_path, tiny_bundle_master):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("edgetx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgetx/runtimes/session.py" in names and "edgetx/exporters/causal_lm.py" in names
    assert "edgetx/models/checkpoint/model.safetensors" in names
    assert not any(n.startswith(("runtimes/", "models/", "exporters/", "tests/")) for n in names)
    folders = {"edgetx": "edgetx", "runtimes": "edgetx/runtimes", "exporters": "edgetx/exporters",
               "models": "edgetx/models"}
    for top, installed in folders.items():  # every package of the source tree is in the wheel
        for init in (REPO / top).rglob("__init__.py"):
            assert f"{installed}/{init.parent.relative_to(REPO / top).as_posix()}/__init__.py".replace("/./", "/") \
                in names, init
    for data in ("edgetx/bundle/manifest.schema.json", "edgetx/runtimes/web/edgetx.mjs",
                 "edgetx/runtimes/worker/ort_worker.py", "edgetx/runtimes/worker/protowire.py"):
        assert data in names, data

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    code = f"""
import sys; sys.path.insert(0, {str(target)!r}); sys.modules['torch'] = None
import edgetx.runtimes, edgetx.models
assert edgetx.runtimes.__file__.startswith({str(target)!r}), edgetx.runtimes.__file__
from edgetx.runtimes import GenerationConfig, Generator, Session
print(Generator(Session({str(tiny_bundle_master)!r})).generate("x", GenerationConfig(max_new_tokens=4)) is not None)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
