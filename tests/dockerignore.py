"""Which files of a build context a `.dockerignore` keeps, by the rules Docker documents.

Source: Docker's reference, "Dockerignore files" (docs.docker.com/build/concepts/context/
#dockerignore-files; the same text is the dockerignore(5) manual page of containers-common):
- a line whose first column is "#" is a comment; each other line is trimmed and cleaned like
  Go's filepath.Clean (so "/a", "./a" and "a/" all mean "a"); blank lines are skipped;
- the context's root is both the working and the root directory: a pattern names a path from it,
  and excluding a directory excludes what is below it;
- matching is Go's filepath.Match ("*" and "?" never match "/") plus "**", which matches any
  number of directories, none included;
- a line starting with "!" makes an exception; the last line that matches a file decides.
Character classes are not used by this project's file and are not modelled.
"""

from __future__ import annotations

import posixpath
from fnmatch import fnmatchcase
from pathlib import Path

Rule = tuple[bool, list[str]]  # (an exception, the pattern's "/"-separated parts)


def read_patterns(text: str) -> list[Rule]:
    rules: list[Rule] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pattern = line.strip()
        exception = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip()
        cleaned = posixpath.normpath(pattern).lstrip("/") if pattern else ""
        rules.append((exception, [p for p in cleaned.split("/") if p]))
    return rules


def _match(parts: list[str], names: list[str]) -> bool:
    """Whether the pattern's parts match exactly the path's names, "**" standing for any run of them."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_match(parts[1:], names[i:]) for i in range(len(names) + 1))
    return bool(names) and fnmatchcase(names[0], parts[0]) and _match(parts[1:], names[1:])


def excluded(path: str, rules: list[Rule]) -> bool:
    """Whether `path` (relative to the context, "/"-separated) is left out of the build context."""
    names = path.split("/")
    verdict = False
    for exception, parts in rules:
        # The path itself or one of the directories above it.
        if any(_match(parts, names[:n]) for n in range(1, len(names) + 1)):
            verdict = not exception
    return verdict


def context_files(root: Path, under: str, dockerignore: str) -> list[str]:
    """The files below `under` (a directory of the context `root`) that the build context holds."""
    rules = read_patterns(dockerignore)
    files = sorted(p.relative_to(root).as_posix() for p in (root / under).rglob("*") if p.is_file())
    return [f for f in files if not excluded(f, rules)]
