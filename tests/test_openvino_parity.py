"""``hodor-export`` then ``hodor-run --backend openvino`` (fp32) against the official masks of case-a.

Both through their command lines (the export is the suite's shared one), by the rule of
tests/test_onnxruntime_parity.py: on frames without a reference, >= 99.9 % of pixels equal the
official output; on reference frames every annotated pixel carries its id and >= 99 % agree.
"""

from __future__ import annotations

import pytest

from tests.parity_fixture import assert_cli_parity
from tests.test_export_shared import ExportRun, shared_export

pytest.importorskip("openvino", reason="the openvino backend needs the openvino package")


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def test_openvino_matches_the_official_pipeline(exported, parity_case, tmp_path):
    assert_cli_parity(exported.directory, "openvino", parity_case, tmp_path / "out")
