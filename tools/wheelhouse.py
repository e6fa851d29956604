"""Fill a wheelhouse: every pinned package, as wheels, for the machines learners bring.

    make wheelhouse                                   # all platforms below, into ./wheelhouse
    .venv/bin/python tools/wheelhouse.py --this-machine --dest /tmp/wh   # this machine only

An instructor runs it once on a machine with network and copies the folder to a USB stick or a
local file server; learners then run `ZDLAB_WHEELHOUSE=/path/to/wheelhouse make lab` (or put the
folder at ./wheelhouse) and pip installs from it with --no-index: no package index is contacted.

Platforms: Linux x86_64 and aarch64 (Windows users run the kit under WSL, which is Linux) with
glibc 2.28 or newer, macOS 11 or newer on Intel and Apple silicon; CPython 3.11, 3.12 and 3.13.
pip picks, per package, the best wheel for each target (pip download --platform
--python-version --only-binary=:all:), and resolves each target's own dependencies, so a
package only one platform needs (appnope on macOS) is fetched too.

Packages published only as a source archive (no wheel at all) cannot be fetched for another
platform with --only-binary. They are built here into wheels first (pip wheel), which is right
only for pure-Python packages: a built wheel tagged for one platform stops the run with a
message, rather than leaving a wheelhouse that fails on a learner's laptop.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PLATFORMS = {  # name -> the oldest platform tag accepted (pip also accepts the older ones below it)
    "linux-x86_64": "manylinux_2_28_x86_64",
    "linux-aarch64": "manylinux_2_28_aarch64",
    "macos-x86_64": "macosx_11_0_x86_64",
    "macos-arm64": "macosx_11_0_arm64",
}
PYTHONS = ("3.11", "3.12", "3.13")
# What pyproject.toml's build-system needs for `pip install -e .` (pip builds the kit in an
# isolated environment, which must also come from the wheelhouse when offline).
BUILD_PINS = ("setuptools==84.2.1",)


def pip(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("  $ pip " + " ".join(args), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def fail(what: str, result: subprocess.CompletedProcess) -> None:
    tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
    sys.exit(f"wheelhouse: {what} failed:\n{tail}")


def pinned_file(requirements: Path, tmp: Path) -> Path:
    """The requirements plus the build pins, as one file pip reads."""
    path = tmp / "all-requirements.txt"
    path.write_text(f"-r {requirements.resolve()}\n" + "".join(f"{p}\n" for p in BUILD_PINS))
    return path


def build_source_only(requirements: Path, dest: Path, tmp: Path) -> list[str]:
    """Wheels for the pins that exist only as source archives; their names."""
    probe = tmp / "probe"
    result = pip("download", "--no-deps", "-r", str(requirements), "--dest", str(probe), "--quiet")
    if result.returncode != 0:
        fail("downloading the pinned packages for this machine", result)
    sources = sorted(p for p in probe.iterdir() if p.name.endswith((".tar.gz", ".zip")))
    for wheel in probe.glob("*.whl"):  # this machine's wheels: kept, so no target downloads them twice
        wheel.replace(dest / wheel.name)
    built_dir = tmp / "built"
    for sdist in sources:
        result = pip("wheel", "--no-deps", "--wheel-dir", str(built_dir), str(sdist), "--quiet")
        if result.returncode != 0:
            fail(f"building a wheel of {sdist.name}", result)
    built = sorted(built_dir.glob("*.whl")) if sources else []
    for wheel in built:
        if not wheel.name.endswith("-none-any.whl"):
            sys.exit(f"wheelhouse: {wheel.name} was built from source for this machine only (it is not pure "
                     f"Python): download that package's wheels by hand for each platform, or drop the platform.")
        wheel.replace(dest / wheel.name)
    return [w.name for w in built]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO / "wheelhouse"))
    parser.add_argument("--requirements", default=str(REPO / "requirements-dev.txt"),
                        help="default: requirements-dev.txt (it includes requirements.txt)")
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                        help="repeatable; default: all four")
    parser.add_argument("--python", action="append", help=f"repeatable; default: {' '.join(PYTHONS)}")
    parser.add_argument("--this-machine", action="store_true",
                        help="only this machine's platform and Python (what a test needs)")
    args = parser.parse_args(argv)
    dest = Path(args.dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    requirements = Path(args.requirements)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        everything = pinned_file(requirements, tmp)
        built = build_source_only(everything, dest, tmp)
        if built:
            print(f"built from source (pure Python, fit every platform): {', '.join(built)}")
        common = ["download", "-r", str(everything), "--dest", str(dest), "--find-links", str(dest),
                  "--only-binary=:all:", "--quiet"]
        if args.this_machine:
            targets = [("this machine", [])]
        else:
            targets = [(f"{name}, Python {py}", ["--platform", PLATFORMS[name], "--python-version", py,
                                                 "--implementation", "cp"])
                       for name in (args.platform or sorted(PLATFORMS)) for py in (args.python or PYTHONS)]
        for label, options in targets:
            print(f"{label}:", flush=True)
            result = pip(*common, *options)
            if result.returncode != 0:
                fail(f"the download for {label}", result)
    files = list(dest.iterdir())
    size = sum(f.stat().st_size for f in files)
    print(f"wheelhouse {dest}: {len(files)} files, {size / 1e6:.0f} MB. Learners: "
          f"ZDLAB_WHEELHOUSE={dest} make lab (or copy the folder to ./wheelhouse in the kit).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
