"""One run per folder, and nothing written outside it.

    with claim_run_folder("runs/dpo"):          # offline train, train-online, train-rm, compare
        ...                                      # the run; the lock goes when the block ends

A run holds an exclusive, non-blocking `flock` on `<output_dir>/.lock` for its whole lifetime, so a
second run pointed at the same folder stops at once instead of interleaving its metrics lines and
checkpoints with the first one's. The kernel drops the lock when the process ends, however it ends
(kill -9 included), so the lock file left behind never blocks a resume; it holds the pid of the last
holder, which the refusal names. A run that ends having written nothing else (it stopped on bad data,
say) removes the lock file and the folders it created, leaving no trace. A lock counts only while its
file is still the one at `<output_dir>/.lock` (checked after locking), so that removal never lets two
runs hold the folder.

Symbolic links: prefopt appends to `metrics.jsonl` and deletes old checkpoints and `final/` in place, so
a link planted there would make it write or delete outside the run folder. Those entries of a run folder
must be real files and folders; `metrics.jsonl` and `.lock` are also opened with O_NOFOLLOW. The run
folder itself may be a link (a run on a scratch disk).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second run
    fcntl = None  # type: ignore[assignment]

from prefopt.errors import RunFolderError

__all__ = [
    "LOCK_FILE",
    "RUN_ENTRIES",
    "RunFolderError",
    "RunFolderLock",
    "check_no_links",
    "claim_run_folder",
    "open_no_follow",
]

LOCK_FILE = ".lock"
# The entries of a run folder that prefopt writes, appends to or deletes.
RUN_ENTRIES = (
    "metrics.jsonl",
    "config.json",
    "result.json",
    "checkpoints",
    "final",
    "ref_cache",
    "tensorboard",
    LOCK_FILE,
)


def _link_error(path: Path) -> RunFolderError:
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return RunFolderError(
        f"{path} is a symbolic link{target}; prefopt writes only real files and folders inside "
        "a run folder, so that nothing outside it is changed: remove the link, or pass another --out"
    )


def check_no_links(folder: str | Path, names: tuple[str, ...] = RUN_ENTRIES) -> None:
    """Refuse a run folder where one of `names` is a symbolic link (writing through it could leave the folder).

    Raises:
        RunFolderError: naming the link and its target.
    """
    for name in names:
        path = Path(folder) / name
        if path.is_symlink():
            raise _link_error(path)


def open_no_follow(path: str | Path, flags: int) -> int:
    """`os.open(path, flags)` that refuses a symbolic link as the last component (mode 0644 when created).

    Raises:
        RunFolderError: `path` is a link.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _link_error(Path(path)) from None
        raise


class RunFolderLock:
    """The held lock of a run folder; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, folder: Path, fd: int | None, created: Path | None = None) -> None:
        self.folder = folder
        self._fd = fd
        self._created = created  # the outermost folder the claim created, if any

    def release(self) -> None:
        """Give the folder up (closing the file drops the flock); a second call does nothing. A folder that
        holds nothing but the lock file loses it, and the folders the claim created go if left empty."""
        if self._fd is None:
            return
        try:
            if [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                (self.folder / LOCK_FILE).unlink()  # still locked: a claim that opened it sees another inode
        except OSError:  # the folder went away under the run: nothing to tidy
            pass
        os.close(self._fd)
        self._fd = None
        folder = self.folder
        while self._created is not None and folder.is_relative_to(self._created):
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
            folder = folder.parent

    def __enter__(self) -> RunFolderLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def claim_run_folder(output_dir: str | Path) -> RunFolderLock:
    """Create `output_dir` if needed, check its entries are no links and lock it for this process.

    Returns:
        the held `RunFolderLock` (a context manager).
    Raises:
        RunFolderError: another process holds the folder (its pid is named), an entry is a symbolic link,
            or the folder cannot be created.
    """
    folder = Path(output_dir)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot use {folder} as a run folder ({err.strerror}); pass another --out") from None
    created = missing[-1] if missing else None
    check_no_links(folder)
    if fcntl is None:
        return RunFolderLock(folder, None)
    while True:
        fd = open_no_follow(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"{folder} is in use by another prefopt run (pid {pid}); wait for it or pass another --out"
            ) from None
        try:
            current = os.stat(folder / LOCK_FILE, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # its holder removed that file while releasing the folder: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return RunFolderLock(folder, fd, created)
