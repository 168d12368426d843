"""`make test`'s first line names the CPU and its features."""

from __future__ import annotations

from tests.cpu_line import FEATURES, cpu_line, cpu_model


def test_the_line_names_the_model_and_every_feature_once(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n")
    assert cpu_model(str(info)) == "AMD EPYC 9R14"
    assert cpu_model(str(tmp_path / "absent")) == "unknown"
    line = cpu_line()
    assert line.startswith("cpu: ") and "cores; has " in line
    assert all(line.count(f" {feature}") == 1 for feature in FEATURES)
