"""evaluate.json as the bundle README runs it, on a real case with one member of the shipped ensemble: the member
that did not see the case (its cross-validation fold) reproduces the out-of-fold score the model card states."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ..utils import BUNDLE, REAL_CASE, ROOT, check, run_bundle, write_json

pytestmark = pytest.mark.slow  # runs the bundle on a full-size case


def test_the_readme_evaluation_of_a_shipped_member_reproduces_its_out_of_fold_score(tmp_path):
    if not REAL_CASE.is_dir():
        pytest.skip("../shared/data not present")
    case = REAL_CASE.name
    folds = json.loads((ROOT / "configs" / "splits" / "brats_real_folds.json").read_text())["folds"]
    (fold,) = [k for k, cases in enumerate(folds) if case in cases]
    recorded = json.loads((ROOT / "docs" / "benchmarks" / "brats_real.json").read_text())["final"]["cases"][case]
    # the shipped bundle with only the member of that fold: the model that scored this case out-of-fold
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    prefix = f"members.{fold}."
    torch.save({"members.0." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
               bundle / "models" / "model.pt")
    datalist = write_json(tmp_path / "datalist.json", {"validation": [{
        "image": [f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")], "label": f"{case}_seg.nii.gz"}]})
    out = tmp_path / "eval"
    # the README's command, from the bundle folder
    check(run_bundle(["configs/inference.json", "configs/evaluate.json"], cwd=bundle, dataset_dir=REAL_CASE,
                     data_list_file_path=datalist, num_members=1, output_dir=out, timeout=1800))
    scores = json.loads((out / "metrics.json").read_text())["cases"][case]
    for region in ("WT", "TC", "ET"):  # the shipped member is the fold's final weights at half precision
        assert scores[region]["dice"] == pytest.approx(recorded[region]["dice"], abs=0.02), region
