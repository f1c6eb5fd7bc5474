"""Install the "web" environment: onnxruntime-web and ajv into ROOT/env with npm.

    edgetx provision web [--root DIR] [--force]     # or: make provision-web

npm runs with its own cache under ROOT/cache (so the environment is self-contained and a re-run downloads
nothing) and a package.json of its own (so npm never walks up into an enclosing project).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgetx import progress
from edgetx.errors import BackendError
from edgetx.runtimes import install
from edgetx.runtimes.web import NPM_PACKAGES, node_executable, node_version


def _build(work: Path, cache: Path, say: install.Say) -> dict:
    npm, node = shutil.which("npm"), node_executable()
    if npm is None or node is None or node_version(node) is None:
        raise BackendError("npm and Node.js are needed: install Node.js >= 18 with npm (e.g. apt-get install nodejs "
                           "npm) and run this again")
    (work / "package.json").write_text(json.dumps({"name": "edgetx-web-runtime", "private": True}) + "\n")
    packages = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
    with progress.stage(f"npm install {' '.join(packages)}"):
        install.run([npm, "install", "--prefix", str(work), "--cache", str(cache / "npm"), "--no-audit", "--no-fund",
                     "--save-exact", *packages], f"npm install {' '.join(packages)} (is the npm registry reachable?)")
    for name, version in NPM_PACKAGES.items():
        found = json.loads((work / "node_modules" / name / "package.json").read_text()).get("version")
        if found != version:
            raise BackendError(f"npm installed {name} {found}, not {version}; run again with --force")
    return {**NPM_PACKAGES, "node": ".".join(map(str, node_version(node)))}


def provision(root: Path, force: bool = False) -> dict:
    return install.provision(root, dict(NPM_PACKAGES), _build, "web", force)
