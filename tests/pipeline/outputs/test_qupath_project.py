"""OUT's QuPath project from real runs: every finished slide an image as QuPath adds one, the
classes in QuPath's packed colours, the import script beside them; a rebuild after the next
night adds the new slides and keeps whatever QuPath or the user changed; a folder of that
name we did not make is left alone. Read by QuPath's own `ProjectIO` where its core is at hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.flows.conftest import CLASSES, COLORS, save_tiny_model
from wsi_segment.errors import OutputError
from wsi_segment.models.labels import UNCLASSIFIED_COLOR, UNCLASSIFIED_NAME
from wsi_segment.pipeline.outputs.qupath_project import (
    OUTPUT_KEY,
    PROJECT_FILE,
    PROJECT_FOLDER,
    SCRIPT_MARK,
    SCRIPT_NAME,
    file_uri,
    packed_rgb,
)

DATA = Path(__file__).resolve().parents[2] / "data"
PARAMS = {"precision": "fp32", "runtime": "torch", "device": "cpu"}
# QuPath core's jars (built from a release tag) on a Java class path: the test that loads the
# project with QuPath's own code runs where this is set
QUPATH_CLASSPATH = os.environ.get("WSI_SEGMENT_QUPATH_CLASSPATH", "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with OUT (two real runs of the tiny model: the CMU region and the 16 px slide
    with no tissue) and the tiny model."""
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    tmp = tmp_path_factory.mktemp("qupath")
    model = save_tiny_model(tmp / "model")
    for slide in ("CMU-1-Small-Region.svs", "small.svs"):
        segment_slide(DATA / slide, tmp / "out", SegmentParams(model, **PARAMS))
    return tmp


def built(runs: Path, tmp_path: Path) -> Path:
    """A copy of the runs' OUT with its report (and project) built; returns OUT."""
    from wsi_segment.pipeline.morning_report import build_morning_report

    out = tmp_path / "out"
    shutil.copytree(runs / "out", out)
    report = build_morning_report(out, {})
    assert report.project == out / PROJECT_FOLDER / PROJECT_FILE
    return out


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def java_int(rgb: tuple[int, int, int]) -> int:
    """Java's `ColorTools.packRGB(r, g, b)`: the bytes 255, r, g, b as a signed int."""
    return int.from_bytes(bytes([255, *rgb]), "big", signed=True)


def test_every_finished_slide_is_an_image_as_qupath_adds_it(runs: Path, tmp_path: Path) -> None:
    out = built(runs, tmp_path)
    folder = out / PROJECT_FOLDER
    doc = read(folder / PROJECT_FILE)
    assert doc["version"] == "0.5.0" and doc["lastID"] == 2
    assert doc["uri"] == "file:" + str((folder / PROJECT_FILE).resolve())
    assert isinstance(doc["createTimestamp"], int)
    assert doc["createTimestamp"] <= doc["modifyTimestamp"]
    images = {img["imageName"]: img for img in doc["images"]}
    assert set(images) == {"CMU-1-Small-Region.svs", "small.svs"}
    assert sorted(img["entryID"] for img in doc["images"]) == [1, 2]
    for name, image in images.items():
        slide = read(out / Path(name).stem / "summary.json")["slide"]["path"]
        assert image["serverBuilder"] == {"builderType": "uri", "uri": f"file:{slide}", "args": []}
        assert image["metadata"] == {OUTPUT_KEY: Path(name).stem}
        uuid.UUID(image["randomizedName"])  # QuPath's masked name is a UUID
        # the script's path to the slide's results, from the project's folder
        assert (folder / ".." / image["metadata"][OUTPUT_KEY] / "tissue.geojson").is_file()
    classes = read(folder / "classifiers" / "classes.json")["pathClasses"]
    expected = {
        "Tissue": (128, 128, 128),
        **dict(zip(CLASSES, COLORS, strict=True)),
        UNCLASSIFIED_NAME: UNCLASSIFIED_COLOR,  # tissue the gate left without a class
    }
    assert {c["name"]: c["color"] for c in classes} == {
        name: java_int(rgb) for name, rgb in expected.items()
    }
    script = (folder / "scripts" / SCRIPT_NAME).read_text(encoding="utf-8")
    assert script.startswith(SCRIPT_MARK) and f'getMetadataValue("{OUTPUT_KEY}")' in script
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f'href="{PROJECT_FOLDER}/{PROJECT_FILE}"' in page and "QuPath" in page
    for name in ("CMU-1-Small-Region", "small"):
        assert f'href="{name}/tissue.geojson"' in page and f'href="{name}/"' in page
        assert read(out / name / "summary.json")["slide"]["path"] in page


def test_a_rebuild_after_the_next_night_adds_and_keeps_what_qupath_changed(
    runs: Path, tmp_path: Path
) -> None:
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import segment_slide

    out = built(runs, tmp_path)
    folder = out / PROJECT_FOLDER
    project, classes = folder / PROJECT_FILE, folder / "classifiers" / "classes.json"
    # what QuPath and a user do to it: rename an image, describe and tag it, add metadata,
    # keep data under its id, add a class and recolour one of ours
    doc = read(project)
    first = doc["images"][0]
    first |= {"imageName": "renamed", "description": "re-cut", "tags": ["review"]}
    first["metadata"]["stain"] = "H&E"
    doc["version"] = "0.6.0"
    project.write_text(json.dumps(doc))
    data = folder / "data" / str(first["entryID"]) / "data.qpdata"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"QuPath's objects")
    listed = read(classes)
    listed["pathClasses"][0]["color"] = java_int((1, 2, 3))
    listed["pathClasses"].append({"name": "Mine", "color": java_int((9, 9, 9))})
    classes.write_text(json.dumps(listed))
    # the next night: a third slide
    segment_slide(DATA / "OS-1-detail.ome.tif", out, SegmentParams(runs / "model", **PARAMS))
    build_morning_report(out, {})
    again = read(project)
    assert again["images"][:2] == doc["images"]  # kept whole
    assert again["createTimestamp"] == doc["createTimestamp"] and again["version"] == "0.6.0"
    [new] = again["images"][2:]
    assert new["entryID"] == 3 == again["lastID"] and new["imageName"] == "OS-1-detail.ome.tif"
    assert data.read_bytes() == b"QuPath's objects"
    assert read(classes)["pathClasses"] == listed["pathClasses"]  # nothing new to add
    kept = project.read_bytes(), classes.read_bytes()
    build_morning_report(out, {})  # and once more: nothing new, so nothing is written
    assert (project.read_bytes(), classes.read_bytes()) == kept


def test_a_folder_we_did_not_make_is_refused_and_left_alone(runs: Path, tmp_path: Path) -> None:
    from wsi_segment.pipeline.morning_report import build_morning_report

    out = tmp_path / "out"
    shutil.copytree(runs / "out", out)
    theirs = out / PROJECT_FOLDER / PROJECT_FILE
    theirs.parent.mkdir()
    theirs.write_text("{}")
    with pytest.raises(OutputError, match=f"{PROJECT_FOLDER} is in the way .*move it away"):
        build_morning_report(out, {})
    assert sorted(p.name for p in theirs.parent.iterdir()) == [PROJECT_FILE]
    assert theirs.read_text() == "{}"
    # refused before anything was written: no table, no page
    assert not (out / "cohort.csv").exists() and not (out / "report.html").exists()


def test_uris_and_colours_are_javas() -> None:
    # `new File("/a b/ü;.svs").toURI()`, written by Gson as its ASCII string
    assert file_uri("/a b/\u00fc;.svs") == "file:/a%20b/%C3%BC;.svs"
    assert packed_rgb((205, 51, 51)) == -3329229 == java_int((205, 51, 51))
    assert packed_rgb((0, 0, 0)) == -16777216 and packed_rgb((255, 255, 255)) == -1


READ_PROJECT = """
import java.awt.image.BufferedImage;
import java.io.File;
import qupath.lib.projects.ProjectIO;

public class ReadProject {
    public static void main(String[] args) throws Exception {
        var project = ProjectIO.loadProject(new File(args[0]), BufferedImage.class);
        for (var entry : project.getImageList()) {
            System.out.println(String.join("\\t", entry.getID(), entry.getImageName(),
                entry.getURIs().iterator().next().toString(),
                entry.getMetadataValue("%s")));
        }
        for (var c : project.getPathClasses())
            System.out.println("class\\t" + c + "\\t" + c.getColor());
    }
}
"""


@pytest.mark.skipif(
    not QUPATH_CLASSPATH or shutil.which("java") is None,
    reason="QuPath's core is not at hand: its build downloads its dependencies from Maven "
    "Central, which this machine cannot reach; set WSI_SEGMENT_QUPATH_CLASSPATH to the jars "
    "of qupath-core (and its dependencies) built from a release tag, and install Java",
)
def test_qupath_reads_the_project_with_its_own_code(runs: Path, tmp_path: Path) -> None:
    out = built(runs, tmp_path)
    source = tmp_path / "ReadProject.java"
    source.write_text(READ_PROJECT % OUTPUT_KEY)
    project = out / PROJECT_FOLDER / PROJECT_FILE
    argv = ["java", "-cp", QUPATH_CLASSPATH, str(source), str(project)]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    rows = [line.split("\t") for line in lines.splitlines() if line.strip()]
    doc = read(project)
    images = [
        [str(i["entryID"]), i["imageName"], i["serverBuilder"]["uri"], i["metadata"][OUTPUT_KEY]]
        for i in doc["images"]
    ]
    assert [r for r in rows if r[0] != "class"] == images
    classes = read(out / PROJECT_FOLDER / "classifiers" / "classes.json")["pathClasses"]
    assert [r[1:] for r in rows if r[0] == "class"] == [
        [c["name"], str(c["color"])] for c in classes
    ]
