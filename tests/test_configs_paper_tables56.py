"""The paper manifest's runs of Table 5 (semi-supervised) and Table 6 (domain adaptation) instantiate at the
paper's size (on the meta device; see test_configs.py for the scheme and the checks)."""

import pytest
from test_configs import BUILT_RUNS, check_paper_run, no_data, tiny_ddpm  # noqa: F401

RUNS = [r for r in BUILT_RUNS if r.key.startswith(("table5/", "table6/"))]


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.key)
def test_paper_run_instantiates_at_the_papers_size(run, tiny_ddpm):  # noqa: F811
    check_paper_run(run, tiny_ddpm)
