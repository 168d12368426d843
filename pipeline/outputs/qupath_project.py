"""A QuPath project for an output folder: `OUT/qupath-project/`, rebuilt with the report.

Every finished slide of OUT (done or up to date, read from a local file) is an image of the
project, as QuPath itself writes one: its `file:` URI and its file name (what QuPath's
OpenSlide reader names an image). QuPath keeps each image's objects in `data.qpdata`, a Java
serialisation only QuPath writes, so the results come in through one project script,
`scripts/import-wsi-segment-results.groovy` (*Automate > Project scripts*, then *Run for
project*): it replaces, on each image, the objects an earlier import added (those QuPath read
with our `wsi_segment` metadata) by the slide's `tissue.geojson`, and keeps the user's own.

The project is the user's once QuPath opened it, so a rebuild adds and never removes: an
image already there (the same URI) keeps its entry whole (its id, the data QuPath keeps under
that id, anything QuPath or the user added), and only new slides are appended, so a project
rebuilt after the next night holds each slide once. Classes likewise: the model's classes
are added to `classifiers/classes.json` where missing, never changed. A rebuild with nothing
new writes neither file (QuPath's own copy, and its timestamps, stay as they are). A folder of that name
that we did not make (no `.wsi-segment-project` mark) is left alone and refused.

The formats are QuPath's (0.5 and 0.6 read them alike): `DefaultProject.writeProject` and
`loadProject` (project.qpproj), `DefaultImageServerBuilder` (an image's `serverBuilder`
without a provider: QuPath picks the reader that opens it), `writePathClasses`
(classes.json: colours packed as Java's signed ARGB int, `ColorTools.packRGB`).
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from wsi_segment.errors import OutputError
from wsi_segment.models.labels import TISSUE_NAME
from wsi_segment.pipeline.outputs.cohort import write_atomically
from wsi_segment.pipeline.outputs.geojson import TISSUE_COLOR
from wsi_segment.pipeline.outputs.slide_entries import FALLBACK_COLOR
from wsi_segment.pipeline.outputs.slide_entry import SlideEntry
from wsi_segment.pipeline.outputs.slide_status import DONE, UP_TO_DATE
from wsi_segment.wsi.shown_path import is_remote_url

PROJECT_FOLDER = "qupath-project"
PROJECT_FILE = "project.qpproj"
OWNER_MARK = ".wsi-segment-project"  # a project folder we made (QuPath leaves it alone)
SCRIPT_NAME = "import-wsi-segment-results.groovy"
OUTPUT_KEY = "wsi-segment output"  # an image's metadata: its output folder under OUT
PROJECT_VERSION = "0.5.0"  # the oldest QuPath that reads the project as written here
# what a project script begins with; a script of that name without it is not replaced
SCRIPT_MARK = "// wsi-segment: imports each image's results"


def write_qupath_project(out_root: Path, entries: Sequence[SlideEntry]) -> Path | None:
    """Write or extend OUT's QuPath project with the finished slides of `entries`; its
    project.qpproj, or None when no slide is finished yet (nothing is made then)."""
    folder = out_root / PROJECT_FOLDER
    shown = [e for e in entries if e.status in (DONE, UP_TO_DATE) and _local_file(e.slide_path)]
    if not shown and not (folder / OWNER_MARK).is_file():
        return None
    refuse_foreign_project(out_root)
    try:
        (folder / "classifiers").mkdir(parents=True, exist_ok=True)
        (folder / "scripts").mkdir(exist_ok=True)
        (folder / OWNER_MARK).touch()
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot be written ({exc}); check the folder's rights"
        ) from exc
    project = folder / PROJECT_FILE
    before = _read_json(project)
    after = _project(project, before, shown)
    if after != before:  # a rebuild with nothing new leaves QuPath's file as it is
        after["modifyTimestamp"] = _now_ms()
        write_atomically(project, json.dumps(after, indent=2) + "\n")
    classes = folder / "classifiers" / "classes.json"
    listed = _read_json(classes)
    if (added := _classes(listed, shown)) != listed:
        write_atomically(classes, json.dumps(added, indent=2) + "\n")
    script = folder / "scripts" / SCRIPT_NAME
    if not script.exists() or script.read_text(encoding="utf-8").startswith(SCRIPT_MARK):
        write_atomically(script, IMPORT_SCRIPT)
    return project


def refuse_foreign_project(out_root: Path) -> None:
    """OutputError when OUT holds a `qupath-project` that wsi-segment did not make (checked
    before the report writes anything, and again before the project is written)."""
    folder = out_root / PROJECT_FOLDER
    if os.path.lexists(folder) and not (folder / OWNER_MARK).is_file():
        raise OutputError(
            f"{folder} is in the way (a folder wsi-segment did not make); it is left as it "
            "is: move it away and rebuild the report with `wsi-segment report`"
        )


def _local_file(slide_path: str) -> bool:
    """A slide QuPath opens by its path: summary.json records a local one absolute
    (`absolute_slide_path`); a URL's slide is read through fsspec, not QuPath."""
    return bool(slide_path) and not is_remote_url(slide_path)


def _now_ms() -> int:
    return int(time.time() * 1000)  # QuPath's timestamps: ms since the epoch


def file_uri(path: str) -> str:
    """`path` as QuPath's project writes it: Java's `File.toURI()` (`file:/a/b%20c.svs`),
    non-ASCII characters as UTF-8 escapes (Gson writes a URI's ASCII form)."""
    return "file:" + quote(path, safe="/!$&'()*+,;=:@-._~")


def _project(
    project: Path, before: Mapping[str, Any] | None, entries: Sequence[SlideEntry]
) -> dict[str, Any]:
    """project.qpproj's document: the existing one (`before`, left unchanged) with its
    images kept whole and new slides added; its timestamps as they were."""
    now = _now_ms()
    doc: dict[str, Any] = copy.deepcopy(dict(before)) if before else {"createTimestamp": now}
    images: list[dict[str, Any]] = list(doc.get("images") or [])
    by_uri = {str(img.get("serverBuilder", {}).get("uri")): img for img in images}
    last_id = max([int(doc.get("lastID") or 0), *(int(i.get("entryID", 0)) for i in images)])
    for entry in entries:
        uri = file_uri(entry.slide_path)
        image = by_uri.get(uri)
        if image is None:
            last_id += 1
            image = _image(last_id, uri, Path(entry.slide_path).name)
            images.append(image)
            by_uri[uri] = image
        image.setdefault("metadata", {})[OUTPUT_KEY] = entry.name
    return {
        "version": doc.get("version") or PROJECT_VERSION,
        "createTimestamp": doc.get("createTimestamp", now),
        "modifyTimestamp": doc.get("modifyTimestamp", now),
        "uri": file_uri(str(project.resolve())),
        "lastID": last_id,
        "images": images,
    }


def _image(entry_id: int, uri: str, name: str) -> dict[str, Any]:
    """A new image entry, as QuPath adds one for a file (`DefaultProjectImageEntry`)."""
    return {
        "serverBuilder": {"builderType": "uri", "uri": uri, "args": []},
        "entryID": entry_id,
        "randomizedName": str(uuid.uuid4()),  # QuPath's name for the image when names are masked
        "imageName": name,
        "metadata": {},
    }


def _classes(doc: Mapping[str, Any] | None, entries: Iterable[SlideEntry]) -> dict[str, Any]:
    """classes.json: the classes already there (`doc`), then the slides' classes where
    missing."""
    listed: list[dict[str, Any]] = list((doc or {}).get("pathClasses") or [])
    names = {str(c.get("name")) for c in listed}
    for name, rgb in _slide_classes(entries).items():
        if name not in names:
            listed.append({"name": name, "color": packed_rgb(rgb)})
            names.add(name)
    return {"pathClasses": listed}


def _slide_classes(entries: Iterable[SlideEntry]) -> Mapping[str, tuple[int, int, int]]:
    found: dict[str, tuple[int, int, int]] = {TISSUE_NAME: TISSUE_COLOR}  # the whole tissue
    for entry in entries:
        for name in [c.name for c in entry.classes]:
            found.setdefault(name, entry.colors.get(name, FALLBACK_COLOR))
    return found


def packed_rgb(rgb: tuple[int, int, int]) -> int:
    """An opaque colour as QuPath keeps it: `ColorTools.packRGB`, a signed 32-bit ARGB."""
    r, g, b = (int(c) & 0xFF for c in rgb)
    packed = (0xFF << 24) | (r << 16) | (g << 8) | b
    return packed - (1 << 32)  # alpha 255 sets the sign bit of Java's int


def _read_json(path: Path) -> dict[str, Any] | None:
    """A file of the project as QuPath or an earlier build left it; None when absent. One
    that is not JSON is the user's to mend (QuPath keeps `project.qpproj.backup`)."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(
            f"{path} cannot be read as QuPath wrote it ({exc}); it is left as it is: restore "
            f"it (QuPath keeps {path.name}.backup) or move the folder away and rebuild the "
            "report with `wsi-segment report`"
        ) from exc
    if not isinstance(doc, dict):
        raise OutputError(f"{path} is not a QuPath project file; move the folder away")
    return doc


IMPORT_SCRIPT = f"""{SCRIPT_MARK} (tissue.geojson) into this QuPath project.
// Run it once after each night: Automate > Project scripts > {SCRIPT_NAME.removesuffix(".groovy")},
// then Run > Run for project (select every image). On each image, the objects an earlier run
// of this script imported (their metadata has `wsi_segment`) are replaced by the slide's
// results; your own objects are kept. Written by wsi-segment; edit a copy, not this file.
def entry = getProjectEntry()
def output = entry.getMetadataValue("{OUTPUT_KEY}")
if (output == null) {{
    println "${{entry.getImageName()}}: not a slide wsi-segment added; left as it is"
    return
}}
def file = new File(buildFilePath(PROJECT_BASE_DIR, "..", output, "tissue.geojson"))
if (!file.isFile()) {{
    println "${{entry.getImageName()}}: ${{file}} is missing; rerun the slide, then `wsi-segment report`"
    return
}}
def earlier = getAllObjects(false).findAll {{ it.getMetadata().get("wsi_segment") != null }}
removeObjects(earlier, true)
importObjectsFromFile(file.getPath())
println "${{entry.getImageName()}}: results of ${{output}} imported"
"""
