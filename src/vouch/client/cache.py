"""The client's local copy of a repository's metadata: ``tuf/<gun>/metadata/``.

Files are kept byte-for-byte as downloaded or signed (hashes cover exact
bytes), written atomically with private modes. The GUN becomes a directory
path, so it is validated first: no absolute paths, no ``..`` (Cure53
TUF-01-004).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from vouch.client.config import InvalidGunError, check_gun
from vouch.tuf import roles

# One GUN rule for every client path (see vouch.client.config.check_gun).
BadGunError = InvalidGunError
check_client_gun = check_gun

_sequence = itertools.count()
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class MetadataCache:
    """Cached metadata of one GUN under a trust directory."""

    def __init__(self, trust_dir: Path, gun: str) -> None:
        self.gun = check_client_gun(gun)
        self.dir = Path(trust_dir) / "tuf" / gun / "metadata"
        self._made: set[Path] = set()  # directories this object has created or seen

    def path(self, role: str) -> Path:
        roles.check_role_name(role)
        return self.dir / f"{role}.json"

    def read(self, role: str) -> bytes | None:
        try:
            return self.path(role).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, role: str, data: bytes) -> None:
        """Replace ``role``'s file atomically: a private temporary file beside it
        (created exclusively, mode 0600 from the start), then a rename.

        A cold refresh writes every file of the repository (100s for a tree of
        delegations), so this avoids :func:`tempfile.mkstemp`'s extra work and
        a separate ``chmod``: about 0.2 ms a file.
        """
        path = self.path(role)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._made.add(path.parent)
        while True:
            tmp = path.parent / f".tmp-{os.getpid()}-{next(_sequence)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
                break
            except FileExistsError:  # left over by an earlier process with our PID
                continue
            except FileNotFoundError:  # the directory went away since we made it
                if path.parent not in self._made:
                    raise
                self._made.discard(path.parent)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self, role: str) -> None:
        self.path(role).unlink(missing_ok=True)

    def clear(self) -> None:
        if self.dir.exists():
            for p in sorted(self.dir.rglob("*.json"), reverse=True):
                p.unlink()
