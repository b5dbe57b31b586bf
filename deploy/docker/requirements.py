"""Print the project's runtime requirements (pyproject.toml [project.dependencies]) for one image.

Each service image installs only what its service imports: the Dockerfiles call

    python deploy/docker/requirements.py --only torch --without "$WITHOUT"   # torch, from its CPU index
    python deploy/docker/requirements.py --without "$WITHOUT" > requirements.txt

(``WITHOUT`` is the image's list, e.g. ``torch,numpy,scikit-learn,rich``: a build argument of
deploy/docker/service.Dockerfile, which docker-compose.yml sets per service) and then install the
WaFL package itself with ``--no-deps``. ``--only`` prints nothing for a name ``--without`` leaves
out. Names are compared after PEP 503 normalisation; an unknown name is an error, so a renamed
dependency cannot silently slip back into an image. tests/unit/test_deploy_images.py imports each
service with its image's exclusions blocked, so a service that starts importing an excluded package
fails the tests, not the image.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Set
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if match is None:
        raise ValueError(f"cannot read a requirement name from {spec!r}")
    return normalise(match.group(1))


def requirements(without: Set[str] = frozenset(), only: Set[str] | None = None,
                 pyproject: Path = PYPROJECT) -> list[str]:
    """The dependency specifiers of ``pyproject``, less ``without`` (and, given ``only``, just those)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs: list[str] = list(project["dependencies"])
    names = {requirement_name(s) for s in specs}
    asked = {normalise(n) for n in (set(without) | set(only or ()))}
    unknown = asked - names
    if unknown:
        raise SystemExit(f"not a dependency in {pyproject.name}: {', '.join(sorted(unknown))}")
    excluded = {normalise(n) for n in without}
    keep = names if only is None else {normalise(n) for n in only}
    return [s for s in specs if requirement_name(s) in keep - excluded]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", default="", help="comma-separated distributions to leave out")
    parser.add_argument("--only", help="comma-separated distributions to print alone, less --without "
                        "(e.g. torch, for its own index)")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    without = {n.strip() for n in args.without.split(",") if n.strip()}
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    for spec in requirements(without, only, args.pyproject):
        print(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
