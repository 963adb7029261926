"""Writing a file so that readers see the old file or the whole new one, never a part of it."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file next to `path`, which is then renamed onto `path`.

    The temp name starts with a dot (parquet readers skip it) and is unique to this call, so
    processes and threads writing the same file never share one. Whatever stops the write (an
    error, a full disk, SIGTERM) removes the temp file before the exception goes on.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
