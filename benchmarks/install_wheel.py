"""Benchmark: the package a user installs: wheel and sdist size, and installing it.

Builds the sdist and the wheel (`python -m build --no-isolation`), creates a fresh virtualenv
outside the checkout and installs the wheel into it with --no-deps --no-index (nothing can be
downloaded here), then times `llmops --version` there with the project's libraries reachable
through one .pth file. The dependencies themselves cannot be installed offline, so their
weight is reported as what they occupy installed in this virtualenv: the closure of llmops'
requirements (no extras), torch and its nvidia-* / triton libraries apart.
Usage: python benchmarks/install_wheel.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-.*)$")


def installed_bytes(dist: Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def closure(name: str) -> dict[str, Distribution]:
    """Every distribution `name` requires (markers evaluated, no extras), itself excluded."""
    from packaging.requirements import Requirement

    seen: dict[str, Distribution] = {}
    todo = [name]
    while todo:
        dist = distribution(todo.pop())
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            key = re.sub(r"[-_.]+", "-", requirement.name).lower()
            if key in seen:
                continue
            try:
                seen[key] = distribution(requirement.name)
            except PackageNotFoundError:
                continue
            todo.append(requirement.name)
    return seen


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        started = time.monotonic()
        subprocess.run(
            [
                *(sys.executable, "-m", "build", "--no-isolation"),
                *("--outdir", str(work / "dist"), str(ROOT)),
            ],
            check=True,
            capture_output=True,
        )
        built = time.monotonic() - started
        (wheel,) = (work / "dist").glob("*.whl")
        (sdist,) = (work / "dist").glob("*.tar.gz")
        print(f"build (sdist, then the wheel from it): {built:.1f} s")
        print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e3:.0f} kB")
        print(f"sdist {sdist.name}: {sdist.stat().st_size / 1e3:.0f} kB")

        venv = work / "venv"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        created = time.monotonic() - started
        python = venv / "bin" / "python"
        started = time.monotonic()
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"),
                *("--no-index", "--disable-pip-version-check", "-q", str(wheel)),
            ],
            check=True,
        )
        installed = time.monotonic() - started
        print(f"fresh virtualenv: {created:.1f} s; the wheel into it (no deps): {installed:.1f} s")
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (Path(purelib) / "project_libraries.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n"
        )
        started = time.monotonic()
        shown = subprocess.run(
            [str(venv / "bin" / "llmops"), "--version"],
            check=True,
            capture_output=True,
            text=True,
            cwd=work,
        )
        seconds = time.monotonic() - started
        print(f"llmops --version from it: {shown.stdout.strip()} in {seconds:.1f} s")

    deps = closure("llmops-gitops")
    torch = {k: d for k, d in deps.items() if TORCH_STACK.match(k)}
    rest = {k: d for k, d in deps.items() if k not in torch}
    torch_mb = sum(installed_bytes(d) for d in torch.values()) / 1e6
    rest_sizes = sorted(((installed_bytes(d) / 1e6, k) for k, d in rest.items()), reverse=True)
    print(f"dependencies (closure, no extras): {len(deps)} distributions")
    print(f"  torch stack ({len(torch)}): {torch_mb:.0f} MB installed")
    print(f"  the rest ({len(rest)}): {sum(s for s, _ in rest_sizes):.0f} MB installed; largest:")
    for size, key in rest_sizes[:10]:
        print(f"    {key}: {size:.0f} MB")


if __name__ == "__main__":
    main()
