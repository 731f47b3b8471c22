"""``hodor-run`` (torch backend, CPU) against the official pipeline's masks on parity fixture case-a.

The rule (fixtures/hodor-parity/README.md): on frames without a reference, >= 99.9 % of
pixels equal the official output; on reference frames every annotated pixel carries its
id (this project shows the user's mask exactly) and >= 99 % of pixels agree.
"""

from __future__ import annotations

from hodor.engine import cli
from tests.parity_fixture import parity_check, parity_run_args


def test_hodor_run_matches_the_official_pipeline(parity_case, parity_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        parity_run_args(parity_case, out)
        + ["--model", str(parity_checkpoint), "--backend", "torch", "--device", "cpu"]
    )
    _, err = capsys.readouterr()
    assert code == 0, err

    report, failures = parity_check(parity_case, out)
    with capsys.disabled():
        print("\n" + "\n".join(f"  {line}" for line in report))
    assert not failures, f"frames below the parity rule: {failures}"
