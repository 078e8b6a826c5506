"""Optional cross-check of the Hill/KS fit against weightwatcher on real weights (stories260K).

weightwatcher's default fit scans every xmin candidate for the minimum KS distance: ``pl_alpha_hill(W,
xmin="scan")``. (With powerlaw 2.x its ``fix_fingers='xmin_peak'`` silently returns -1, so the peak variant is
checked against the float64 reference in test_allocation.py instead.) Skipped unless weightwatcher is installed.
"""

import pytest
from conftest import STORIES260K, require_shared

from hf_layerif.allocation.alpha_hill import pl_alpha_hill

ww = pytest.importorskip("weightwatcher", reason="weightwatcher is not installed (optional cross-check)")

pytestmark = pytest.mark.optional


def test_scan_fit_matches_weightwatcher_on_stories260k():
    require_shared()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(STORIES260K)
    details = ww.WeightWatcher(model=model).analyze(min_evals=5)
    modules = dict(model.named_modules())
    checked = 0
    for longname, alpha in zip(details["longname"], details["alpha"]):
        if ".layers." not in longname:
            continue
        assert pl_alpha_hill(modules[longname].weight, xmin="scan") == pytest.approx(alpha, abs=1e-3), longname
        checked += 1
    assert checked == 5 * 7
