"""What a slide's output folder is called, and the names that are refused.

A name is one folder inside the output folder. Anything else would write where the user
did not ask: a slide named `..svs` has the stem '.', so its outputs would replace the
output folder itself; a URL ending in '/..' has the stem '..', the folder above it; a
manifest name `../x` or `/abs` points anywhere. Both single slides and batches go
through these checks before anything is read or written.
"""

from __future__ import annotations

from pathlib import Path

from wsi_segment.errors import ConfigError

# A typed output name is one portable folder name: no separators (so no "../x" or "a/b"),
# no NUL, and no ':' (a drive prefix on Windows).
_FORBIDDEN_NAME_CHARS = ("/", "\\", "\0", ":")


def default_output_name(path: str | Path) -> str:
    """The output folder name of a slide: its file stem (a URL's: its last part's)."""
    return Path(str(path).rstrip("/")).stem


def leaves_output_folder(name: str) -> bool:
    """True for a name that is not one new, visible folder inside the output folder here:
    empty, '.' (the output folder itself), '..' (its parent), hidden (a leading '.' could
    also hit a sibling's `.<name>.partial` or `.<name>.lock`), or holding a '/' or NUL."""
    return not name or name.startswith(".") or "/" in name or "\0" in name


def check_output_name(name: str, source: str) -> str:
    """Refuse names that are empty, hidden, contain a path, or would leave the output folder.

    Stricter than `leaves_output_folder`: a typed name must also be portable ('\\' and ':'
    are separators on Windows), since manifests travel between machines.
    """
    cleaned = name.strip()
    if (
        leaves_output_folder(cleaned)
        or any(ch in cleaned for ch in _FORBIDDEN_NAME_CHARS)
        or Path(cleaned).is_absolute()
    ):
        raise ConfigError(
            f"{source}: output name {name!r} is not a plain folder name; give a name with no "
            "'/', '\\' or leading '.', so outputs stay inside the output folder"
        )
    return cleaned


def slide_output_name(slide_path: str, output_name: str | None = None) -> str:
    """The output folder name of one slide run: `output_name` if given (checked like a
    manifest name), else the slide's stem, refused if it would not be a folder inside
    --out. Stems keep '\\' and ':', which are plain characters in a POSIX file name."""
    if output_name:
        return check_output_name(output_name, slide_path)
    name = default_output_name(slide_path)
    if leaves_output_folder(name):
        fix = (
            "point the URL at the slide file itself"
            if "://" in slide_path
            else "rename the slide file so its name does not start with '.' (or list it in "
            "a `wsi-segment batch` manifest with an output name in the 'name' column)"
        )
        raise ConfigError(
            f"{slide_path}: its output folder would be named {name!r}, which is not a plain "
            f"folder inside --out; {fix}"
        )
    return name
