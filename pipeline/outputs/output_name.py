"""A slide's output folder name: one plain folder inside the output folder.

Anything else would write where the user did not ask: a slide named `..svs` has the stem '.',
so its outputs would replace the output folder itself; a URL ending in '/..' has the stem
'..', the folder above it; a manifest name `../x` or `/abs` points anywhere. Both single
slides and batches go through these checks before anything is read or written.
"""

from __future__ import annotations

import os
from pathlib import Path

from wsi_segment.errors import ConfigError
from wsi_segment.pipeline.outputs.naming import (
    is_control,
    one_line,
    slide_file_name,
    slide_stem,
)
from wsi_segment.wsi.shown_path import not_utf8, shown_slide_path
from wsi_segment.wsi.slide_path import refuse_url_password

# A typed output name is one portable folder name: no separators (so no "../x" or "a/b"),
# no NUL, and no ':' (a drive prefix on Windows).
_FORBIDDEN_NAME_CHARS = ("/", "\\", "\0", ":")


def default_output_name(path: str | Path) -> str:
    """The output folder name of a slide: its file name (a URL's: its last part) without
    the extension, as QuPath strips it (`naming.slide_stem`: `a.ome.tif` -> `a`; a DICOM
    slide's `.dcm` file -> its folder's name, as the DICOM slide folder itself)."""
    return slide_stem(path)


def leaves_output_folder(name: str) -> bool:
    """True for a name that is not one new, visible folder inside the output folder here:
    empty, '.' (the output folder itself), '..' (its parent), hidden (a leading '.' could
    also hit a sibling's `.<name>.partial` or `.<name>.lock`), or holding a '/' or NUL."""
    return not name or name.startswith(".") or "/" in name or "\0" in name


def check_output_name(name: str, source: str) -> str:
    """Refuse names that are empty, hidden, contain a path, or would leave the output folder.

    Stricter than `leaves_output_folder`: a typed name must also be portable ('\\' and ':'
    are separators on Windows), since manifests travel between machines, and hold no control
    character (a tab or newline would split the lines that name it).
    """
    cleaned = name.strip()
    if (
        leaves_output_folder(cleaned)
        or any(ch in _FORBIDDEN_NAME_CHARS or is_control(ch) for ch in cleaned)
        or Path(cleaned).is_absolute()
    ):
        raise ConfigError(
            f"{one_line(source)}: output name {name!r} is not a plain folder name; give a name "
            "with no '/', '\\', control character or leading '.', so outputs stay inside the "
            "output folder"
        )
    return cleaned


def slide_output_name(slide_path: str, output_name: str | None = None) -> str:
    """The output folder name of one slide run: `output_name` if given (checked like a
    manifest name), else `default_output_name`, refused if it would not be a folder inside
    --out. Stems keep '\\' and ':', which are plain characters in a POSIX file name."""
    refuse_control_characters(slide_path)
    refuse_url_password(slide_path)
    if output_name:
        return refuse_long_name(check_output_name(output_name, slide_path), slide_path)
    name = refuse_long_name(default_output_name(slide_path), slide_path)
    if leaves_output_folder(name):
        fix = (
            "point the URL at the slide file itself"
            if "://" in slide_path
            else "rename the slide file so its name does not start with '.' (or list it in "
            "a `wsi-segment batch` manifest with an output name in the 'name' column)"
        )
        raise ConfigError(
            f"{shown_slide_path(slide_path)}: its output folder would be named {name!r}, which "
            f"is not a plain folder inside --out; {fix}"
        )
    return name


# a file name holds 255 bytes on Linux file systems; the longest we make of an output name
# is its work folder `.<name>.partial` (`output_dir.OutputDir`)
MAX_NAME_BYTES = 255 - len("..partial")


def refuse_long_name(name: str, slide_path: str) -> str:
    """`name`, or ConfigError when its work folder's name would not fit the file system (a
    legal slide file name of 247-255 bytes failed mid-way with 'File name too long')."""
    size = len(os.fsencode(name))
    if len(os.fsencode(slide_file_name(slide_path))) > 255:
        return name  # no file has such a name: opening the slide says so, with its fix
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"{one_line(shown_slide_path(slide_path))}: its output folder name is {size} "
            "bytes, and the work folder beside it (.<name>.partial) must fit the file system's "
            f"255: rename the file to at most {MAX_NAME_BYTES} bytes, or list it in a "
            "`wsi-segment batch` manifest with a shorter output name in the 'name' column"
        )
    return name


def refuse_control_characters(slide_path: str) -> None:
    """ConfigError, on one line, for a slide path holding a control character or a line
    break (`naming.is_control`): its output folder would carry it, and every message that
    names the slide would break across lines. Also for a path that is not UTF-8 (`not_utf8`):
    the run would end, after its work, unable to write the name into summary.json."""
    if not_utf8(slide_path):
        raise ConfigError(
            f"{one_line(shown_slide_path(slide_path))}: the slide's path is not valid UTF-8 (its name was "
            "written in another encoding, such as Latin-1), so summary.json, cohort.csv and "
            "QuPath could not name it; rename the file (or its folder) in UTF-8, e.g. "
            "`convmv -f latin1 -t utf-8 --notest FILE`, and rerun"
        )
    found = sorted({one_line(ch) for ch in slide_path if is_control(ch)})
    if found:
        raise ConfigError(
            f"{one_line(shown_slide_path(slide_path))}: the slide's path holds control characters "
            f"({', '.join(found)}), which would break wsi-segment's one-line messages and its "
            "output folder's name; rename the file (or its folder) without them and rerun"
        )


def check_distinct_names(named: list[tuple[str, str]], source: str, fix: str) -> None:
    """Refuse two slides of one run that would write to the same output folder (`named`:
    (slide, output name) pairs), naming both: the second would replace the first's results
    (or be refused as "other parameters"), and the run would still look finished. Names are
    compared case-free, since case-insensitive file systems would merge them."""
    seen: dict[str, str] = {}
    for slide, name in named:
        key = name.casefold()
        if key in seen:
            first, second = shown_slide_path(seen[key]), shown_slide_path(slide)
            raise ConfigError(
                f"{source}{first} and {second} would both write to the output folder "
                f"{name!r}; {fix}"
            )
        seen[key] = slide
