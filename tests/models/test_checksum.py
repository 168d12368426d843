"""wsi_segment.models.checksum: the one file digest of model bundles and run fingerprints."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CMU_SLIDE
from wsi_segment.models.checksum import file_sha256

# NIST FIPS 180-2 example: sha256("abc")
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_file_sha256_is_the_digest_of_the_bytes_whatever_the_block(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == ABC_SHA256
    assert file_sha256(path, block=1) == ABC_SHA256  # one byte a read
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert file_sha256(CMU_SLIDE, block=1 << 16) == file_sha256(CMU_SLIDE)


def test_bundle_and_fingerprint_share_it_without_importing_torch():
    """The slide path hashes the model while torch loads in the background."""
    code = (
        "import sys\n"
        "from wsi_segment.models.checksum import file_sha256\n"
        "from wsi_segment.pipeline.outputs import run_identity\n"
        "assert run_identity.file_sha256 is file_sha256\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
