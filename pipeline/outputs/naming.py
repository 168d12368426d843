"""A slide's name without its extension, as QuPath strips it.

The output folder of a slide is named so that QuPath finds it: the shipped import script
(`docs/qupath/wsi_segment_import.groovy`) reads `OUT/<GeneralTools.stripExtension(image
name)>/tissue.geojson`. QuPath's rule (`qupath-core` `GeneralTools.getExtension`, 0.5 and
0.6) differs from Python's `Path.stem` for multi-part extensions: `OS-1-detail.ome.tif` is
`OS-1-detail` there and `OS-1-detail.ome` here. So the rule is written once, here, exactly:

- a name ending in `.gz` loses `.gz` and then the extension of what is left (`a.nii.gz`:
  `a`; `a.ome.tif.gz`: `a`);
- else the multi-part extensions `.ome.tif`, `.ome.tiff`, `.tar.gz`, `.ome.zarr` (any case)
  go whole;
- else the last `.` and what follows, when that is only ASCII letters, digits and `_`
  (`a.svs`: `a`; `a.1-2` keeps its name: `-` is not a word character).

A DICOM whole-slide image is a folder of `.dcm` files, one per level, and QuPath (or
openslide) opens it by any one of them: its output folder is named after the folder, whether
the folder or one of its `.dcm` files is given (`slide_stem`), and the import script reads
`OUT/<the folder holding the .dcm file QuPath opened>/` for such an image.

Versions before this rule named the folder by `Path.stem` (`legacy_output_name`): a rerun
leaves such a folder alone, since it may hold results the user still needs.

A slide path holding a control character or a line break (a newline, a tab, an escape,
U+2028) is refused rather than renamed: it would name the output folder with it and split
the one-line `error:` / `warning:` / `done` messages, and a folder named otherwise is one
QuPath's import script would not find. `one_line` writes such a path on one line for the
refusal.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from pathlib import Path, PurePosixPath

from wsi_segment.wsi.shown_path import is_remote_url, utf8_shown

# GeneralTools.DEFAULT_EXTENSIONS of QuPath 0.6 (0.5 lacks ".ome.zarr", which it cannot open)
MULTIPART_EXTENSIONS: tuple[str, ...] = (".ome.tif", ".ome.tiff", ".tar.gz", ".ome.zarr")
_WORD_EXTENSION = re.compile(r"\.\w+", re.ASCII)  # Java's `\w` is ASCII


def extension(name: str) -> str:
    """The extension QuPath strips from a file name (lower case), '' when none."""
    lower = name.lower()
    if lower.endswith(".gz"):
        return extension(name[:-3]) + ".gz"
    for ext in MULTIPART_EXTENSIONS:
        if lower.endswith(ext):
            return ext
    dot = name.rfind(".")
    if dot >= 0 and _WORD_EXTENSION.fullmatch(name[dot:]):
        return lower[dot:]
    return ""


def strip_extension(name: str) -> str:
    """`name` without its extension (`GeneralTools.stripExtension`); the name itself when
    stripping would leave nothing (a name that is all extension, e.g. '.svs')."""
    stripped = name[: len(name) - len(extension(name))]
    return stripped or name


def slide_file_name(path: str | Path) -> str:
    """The last part of a slide's path or URL (a trailing '/' ignored)."""
    return Path(name_path(path).rstrip("/")).name


def name_path(path: str | Path) -> str:
    """The part of a slide's path or URL its name comes from: a URL's path, %-escapes
    decoded, without its query or fragment (a presigned URL's signature made a new output
    folder each night, named `x.svs?X-Amz-Signature=...`)."""
    text = str(path)
    if not is_remote_url(text):  # a file:// path is read as written
        return text.removeprefix("file://")
    return urllib.parse.unquote(urllib.parse.urlsplit(text).path)


DICOM_SUFFIX = ".dcm"


def slide_stem(path: str | Path) -> str:
    """A slide's name without its extension (`strip_extension` of its file name), except a
    DICOM slide's `.dcm` file: the name of the folder holding it, the slide's own name (any
    of its files opens the same slide)."""
    name = slide_file_name(path)
    if name.lower().endswith(DICOM_SUFFIX):
        folder = PurePosixPath(name_path(path).rstrip("/")).parent.name
        if folder and folder not in (".", ".."):
            return folder
    return strip_extension(name)


def legacy_output_name(path: str | Path) -> str:
    """The folder name versions before this rule gave the slide (Python's stem)."""
    return Path(str(path).rstrip("/")).stem


# Control characters, and the separators Python's str.splitlines() and terminals break at.
_LINE_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def is_control(ch: str) -> bool:
    """True for a control character or a line or paragraph separator."""
    return unicodedata.category(ch) in _LINE_BREAKING_CATEGORIES


def one_line(text: str) -> str:
    """`text` on one line: each control character or separator written as its Python
    escape (`\\n`, `\\t`, `\\x1b`, `\\u2028`), an undecodable byte of a path as `\\xe9`
    (`not_utf8`), everything else as it is."""
    text = utf8_shown(text)
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if is_control(ch) else ch for ch in text
    )
