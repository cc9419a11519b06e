"""A replica pod's init container: ``python -m cormorant.fleet.kubernetes.fetch URL DIR``.

It copies the version's code archive from the blob store (any fsspec URL; ``s3://`` with the
credentials of ``CORMORANT_FLEET_K8S_ARCHIVES_SECRET`` in its environment) and extracts it
into the pod's ``emptyDir``, which the worker then mounts read-only. Entries that would land
outside the directory (absolute paths, ``..``, links out) are refused by tarfile's ``data``
filter.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path

import fsspec  # type: ignore[import-untyped]


def fetch(url: str, directory: Path) -> int:
    """Extract the tar.gz archive at ``url`` into ``directory``; how many entries it held."""
    directory.mkdir(parents=True, exist_ok=True)
    with fsspec.open(url, "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        members = tar.getmembers()
        tar.extractall(directory, members=members, filter="data")
    return len(members)


def main(argv: list[str] | None = None) -> int:
    """Fetch and extract; exit 1 naming the archive when it cannot."""
    parser = argparse.ArgumentParser(prog="python -m " + __spec__.name if __spec__ else None)
    parser.add_argument("url", help="the version's archive (placement.archive_url)")
    parser.add_argument("directory", type=Path, help="where to extract it")
    args = parser.parse_args(argv)
    try:
        count = fetch(args.url, args.directory)
    except (OSError, tarfile.TarError) as exc:
        print(f"error: cannot fetch the code archive {args.url}: {exc}", file=sys.stderr)
        return 1
    print(f"extracted {count} entries of {args.url} into {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
