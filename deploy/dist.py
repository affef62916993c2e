"""Build what a cluster submission ships, from a checkout.

    python deploy/dist.py                      # dist/reclake-<version>-py3-none-any.whl + dist/reclake-pyfiles.zip
    python deploy/dist.py --pyfiles-only OUT   # only the zip, at OUT (deploy/spark/submit.sh does this)

The zip holds the ``common``, ``jobs`` and ``raytrain`` packages (no tests, no bytecode) for
``spark-submit --py-files`` and Ray's ``py_modules``: executors import the code from it and need
only a Python with the dependencies. The wheel is the project (``pip install dist/*.whl``, as the
Dockerfiles do), built without build isolation so that no index is needed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "jobs", "raytrain")
PYFILES = "reclake-pyfiles.zip"


def build_pyfiles(root: Path, out: Path) -> list[str]:
    """Zip the packages under ``root`` that exist into ``out`` (written atomically). Returns the
    packages zipped."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    done = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for pkg in PACKAGES:
            if not (root / pkg).is_dir():
                continue
            done.append(pkg)
            for d, dirs, files in os.walk(root / pkg):
                dirs[:] = sorted(x for x in dirs if x != "__pycache__")
                # explicit directory entries: zipimport needs them for packages without __init__.py
                zf.write(d, os.path.relpath(d, root))
                for f in sorted(files):
                    if not f.endswith((".pyc", ".pyo")):
                        p = os.path.join(d, f)
                        zf.write(p, os.path.relpath(p, root))
    os.replace(tmp, out)
    return done


def build_wheel(root: Path, dist: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of the project into ``dist``."""
    dist.mkdir(parents=True, exist_ok=True)
    before = set(dist.glob("reclake-*.whl"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(root)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"dist: pip wheel failed:\n{r.stderr.strip()}")
    wheels = sorted(dist.glob("reclake-*.whl"), key=lambda p: p.stat().st_mtime)
    new = [w for w in wheels if w not in before] or wheels[-1:]
    return new[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy/dist.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dist", default=str(ROOT / "dist"), help="output folder (default dist/)")
    p.add_argument("--pyfiles-only", metavar="OUT", help="build only the zip, at OUT")
    a = p.parse_args(argv)
    if a.pyfiles_only:
        build_pyfiles(ROOT, Path(a.pyfiles_only).absolute())
        return 0
    dist = Path(a.dist).absolute()
    zipped = build_pyfiles(ROOT, dist / PYFILES)
    wheel = build_wheel(ROOT, dist)
    print(f"{wheel}\n{dist / PYFILES} ({', '.join(zipped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
