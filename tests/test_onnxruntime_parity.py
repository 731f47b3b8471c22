"""``hodor-export`` then ``hodor-run --backend onnxruntime`` against the official masks of case-a.

Both through their command lines (the export is the suite's shared one). The rule
(fixtures/hodor-parity/README.md): on frames without a reference, >= 99.9 % of pixels equal
the official output; on reference frames every annotated pixel carries its id and >= 99 %
of pixels agree.
"""

from __future__ import annotations

import pytest

from tests.parity_fixture import assert_cli_parity
from tests.test_export_shared import ExportRun, shared_export


@pytest.fixture(scope="session")
def exported(tmp_path_factory, parity_checkpoint) -> ExportRun:
    return shared_export(tmp_path_factory, parity_checkpoint)


def test_onnxruntime_matches_the_official_pipeline(exported, parity_case, tmp_path):
    assert_cli_parity(exported.directory, "onnxruntime", parity_case, tmp_path / "out")
