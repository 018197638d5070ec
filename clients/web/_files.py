"""The files ``databus web --files DIR`` lets pages download: regular files under DIR only.
A path is resolved (``..`` and symbolic links followed) before it is checked, so nothing
named relative to DIR, absolute, or through a link leads out of it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

#: The URL path the downloads are served under (relative to the page).
PREFIX = "files/"


class FileRoot:
    """The directory whose files the pages may download: ``link`` gives the URL path of a
    file a writer noted, ``find`` checks the file a request names."""

    def __init__(self, directory: str | Path) -> None:
        root = Path(directory).resolve()
        if not root.is_dir():
            raise ValueError(f"--files {directory}: not a directory (give the writer's --root)")
        self.root = root
        self._links: dict[str, str | None] = {}

    def link(self, path: str | None) -> str | None:
        """``files/<path under the root>`` (URL-quoted) for a file under the root; None
        for no file or one elsewhere."""
        if path is None:
            return None
        if path not in self._links:
            inside = self._inside(path)
            self._links[path] = None if inside is None else PREFIX + quote(inside.as_posix())
        return self._links[path]

    def find(self, relative: str) -> Path:
        """The file the URL path ``relative`` (below ``files/``) names. PermissionError if
        it lies outside the root, FileNotFoundError if it is no regular file there."""
        try:
            real = (self.root / relative).resolve()
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{relative!r}: no such file ({exc})") from None
        if not real.is_relative_to(self.root):
            raise PermissionError(f"{relative!r} is outside the directory served")
        if not real.is_file():
            raise FileNotFoundError(f"{relative!r}: no such file")
        return real

    def _inside(self, path: str) -> Path | None:
        """``path`` relative to the root once resolved; None if it lies elsewhere."""
        try:
            return Path(path).resolve().relative_to(self.root)
        except (OSError, ValueError):
            return None
