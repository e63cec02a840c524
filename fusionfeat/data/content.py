"""Image identity by content: the SHA-256 of every file, read before any model runs, and the duplicates it shows.

Two files with the same bytes are one image; listed twice they would land on both sides of a split. Hashing
a few thousand files takes about a second (a thread pool hides the file system's latency), so a duplicate is
refused, or dropped with ``--dedupe``, before the extraction computes anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from fusionfeat.data.manifest import Manifest
from fusionfeat.errors import DatasetError
from fusionfeat.fsio import sha256_file

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
HASH_THREADS = 16  # reads and hashlib release the GIL; more threads hide a network file system's latency


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or ``""`` when it cannot be read (the decoder reports why)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def hash_files(paths: Sequence[str | os.PathLike], threads: int = HASH_THREADS) -> list[str]:
    """SHA-256 of every file in ``paths`` order (``""`` for an unreadable one), read on ``threads`` threads."""
    chunk = max(1, min(256, len(paths) // (threads * 4)))
    spans = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(spans)))) as pool:
        return [digest for part in pool.map(lambda span: [file_digest(p) for p in span], spans) for digest in part]


def find_duplicates(manifest: Manifest, digests: Sequence[str], dedupe: bool) -> dict[int, str]:
    """Rows whose image has an earlier row's SHA-256 → that row's path.

    Without ``dedupe`` the first such pair is refused in one line naming both files; the same image listed
    with two labels or two subjects is refused even with ``dedupe``. Unreadable (``""``) and empty files
    are left to the decoder, which says what is wrong with them.
    """
    if len(digests) != len(manifest):
        raise ValueError(f"{len(digests)} digests for {len(manifest)} manifest rows")
    first: dict[str, int] = {}
    duplicate_of: dict[int, str] = {}
    for row, digest in enumerate(digests):
        if not digest or digest == EMPTY_SHA256:
            continue
        if digest not in first:
            first[digest] = row
            continue
        kept, other = manifest.samples[first[digest]], manifest.samples[row]
        if (kept.label, kept.group) != (other.label, other.group):
            raise DatasetError(
                f"{kept.path} and {other.path} are the same image (SHA-256 {digest[:12]}…) but are listed "
                f"with different {'labels' if kept.label != other.label else 'subjects'}; fix the data "
                "(--dedupe keeps one copy only when both say the same)"
            )
        if not dedupe:
            raise DatasetError(
                f"{kept.path} and {other.path} are the same image (SHA-256 {digest[:12]}…); "
                "remove one, or add --dedupe to keep the first and record the others as skipped"
            )
        duplicate_of[row] = kept.path
    return duplicate_of
