"""Can this model use these shards? (gpf.pipeline.compat)

Stage-2 checkpoints with random weights (tests/helpers/evaluation.py) are
checked against the run fields of the shards that would fit them, written here
field by field from what made them: the number of buckets (N), the view size
and, for the variants whose second view is the attention crop (Table I's GPF-
and PF-CNN), the attention model's digest, tau, EB layer and contrastive flag
(paper Eq. 4: the crop is a function of all four).
"""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from helpers.evaluation import VIEW as EVAL_VIEW
from helpers.evaluation import make_stage2, save_stage1
from helpers.training import VIEW, stage1_checkpoint, stage2_config, write_shards
from gpf.model.checkpoint import load_checkpoint
from gpf.pipeline.compat import FitError, attention_differences, check_fit, check_self_consistent, trained_on
from gpf.shards.manifest import MANIFEST_FORMAT, RunFields

EB_LAYER = "features.pool2"
SCORES = tuple(float(s) for s in range(1, 11))
#: Whether each variant's second view is the attention crop: the paper's Table I.
NEEDS_ATTENTION = {"gpf": True, "pf": True, "random-frozen": False, "single-frozen": False}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A stage-1 checkpoint, one stage-2 checkpoint per variant, and the run fields of shards they fit."""
    root = tmp_path_factory.mktemp("compat")
    stage1 = save_stage1(root / "stage1.pt")
    digest = load_checkpoint(stage1).digest
    ckpts = {variant: load_checkpoint(make_stage2(root / f"{variant}.pt", stage1, variant, eb_layer=EB_LAYER))
             for variant in NEEDS_ATTENTION}
    run = RunFields(dataset="ava", scores=SCORES, threshold=5.0, view_size=EVAL_VIEW, tau=0.7, eb_layer=EB_LAYER,
                    contrastive=False, stage1_digest=digest,
                    attention_model={"kind": "stage1", "path": str(stage1), "digest": digest})
    return {"root": root, "stage1": stage1, "ckpt": ckpts, "run": run}


def fit_of(made, variant, run=None, **kw):
    return check_fit(made["ckpt"][variant], run or made["run"], model="model.pt", data="the shards in S",
                     **{"random_crops": 2, **kw})


# ----------------------------------------------------------------------------- fits

@pytest.mark.parametrize("variant", list(NEEDS_ATTENTION))
def test_a_model_fits_the_shards_it_was_made_for_without_warnings(made, variant):
    assert fit_of(made, variant).warnings == []
    assert attention_differences(made["ckpt"][variant], made["run"]) == []


@pytest.mark.parametrize("variant", list(NEEDS_ATTENTION))
def test_another_number_of_buckets_is_refused_naming_both(made, variant):
    run = replace(made["run"], scores=tuple(range(1, 8)))
    with pytest.raises(FitError) as info:
        fit_of(made, variant, run)
    message = str(info.value)
    assert "model.pt predicts N = 10 score buckets, but the shards in S has N = 7" in message
    assert "train a new model on these shards" in message


@pytest.mark.parametrize("variant", list(NEEDS_ATTENTION))
def test_another_view_size_is_refused_saying_which_to_preprocess_with(made, variant):
    with pytest.raises(FitError, match=rf"views of {EVAL_VIEW} px, but the shards in S was made with --view-size 96; "
                                       rf"preprocess with --view-size {EVAL_VIEW}"):
        fit_of(made, variant, replace(made["run"], view_size=96))


ATTENTION_CHANGES = [
    ({"tau": 0.5}, "tau 0.7 vs 0.5"),
    ({"eb_layer": "features.pool3"}, "EB layer 'features.pool2' vs 'features.pool3'"),
    ({"contrastive": True}, "contrastive False vs True"),
    ({"stage1_digest": "f" * 64, "attention_model": {"kind": "stage1", "digest": "f" * 64}},
     "vs the shards' ffffffffffff..."),
]


@pytest.mark.parametrize("change, diff", ATTENTION_CHANGES)
@pytest.mark.parametrize("variant", list(NEEDS_ATTENTION))
def test_another_attention_model_is_refused_only_where_the_crop_is_the_second_view(made, variant, change, diff):
    run = replace(made["run"], **change)
    if not NEEDS_ATTENTION[variant]:
        assert fit_of(made, variant, run).warnings == []
        return
    with pytest.raises(FitError) as info:
        fit_of(made, variant, run)
    message = str(info.value)
    assert "the attention model embedded in model.pt did not make the crops of the shards in S" in message
    assert diff in message and "pass --allow-attention-mismatch to go on anyway" in message


@pytest.mark.parametrize("variant", ["gpf", "pf"])
def test_allow_attention_mismatch_turns_the_refusal_into_a_warning(made, variant):
    run = replace(made["run"], tau=0.5, eb_layer="features.pool3")
    warnings = fit_of(made, variant, run, allow_attention_mismatch=True).warnings
    assert len(warnings) == 1 and "tau 0.7 vs 0.5; EB layer 'features.pool2' vs 'features.pool3'" in warnings[0]


def test_without_a_mismatch_option_the_refusal_names_none(made):
    run = replace(made["run"], tau=0.5)
    with pytest.raises(FitError) as info:
        fit_of(made, "gpf", run, mismatch_option=None)
    message = str(info.value)
    assert "tau 0.7 vs 0.5" in message and "pass" not in message and "--allow" not in message
    with pytest.raises(FitError, match="pass --ignore-crops to go on anyway"):
        fit_of(made, "gpf", run, mismatch_option="--ignore-crops")


@pytest.mark.parametrize("variant", list(NEEDS_ATTENTION))
def test_other_bucket_scores_or_threshold_with_the_same_n_are_warnings(made, variant):
    run = replace(made["run"], scores=tuple(s / 2 for s in SCORES), threshold=6.0)
    warnings = fit_of(made, variant, run).warnings
    assert len(warnings) == 2
    assert "bucket scores [1.0, 2.0" in warnings[0] and "[0.5, 1.0" in warnings[0] and "the data's are used" in warnings[0]
    assert "threshold 5 differs from 6 of the shards in S; the data's is used" in warnings[1]


def test_the_random_variant_needs_stored_random_crops(made):
    with pytest.raises(FitError, match=r"'random-frozen' variant needs the random crops .* none are stored in the shards in S; make them with .*--random-crops K"):
        fit_of(made, "random-frozen", random_crops=0)
    assert fit_of(made, "random-frozen", random_crops=None).warnings == []         # not known: not checked
    for variant in ("gpf", "pf", "single-frozen"):
        assert fit_of(made, variant, random_crops=0).warnings == []


@pytest.mark.parametrize("field", ["scores", "threshold", "view_size"])
def test_shards_without_their_scale_are_refused(made, field):
    with pytest.raises(FitError, match=rf"the shards in S: the manifest lacks {field}, so nothing can be trained "
                                       r"or evaluated .* re-run `gpf preprocess`"):
        fit_of(made, "gpf", replace(made["run"], **{field: None}))


def test_a_checkpoint_without_an_embedded_attention_model_differs(made):
    stage1 = load_checkpoint(made["stage1"])
    assert attention_differences(stage1, made["run"]) == ["no embedded attention model"]


# ----------------------------------------------------------------------------- the checkpoint's own record

def test_the_record_of_the_shards_a_checkpoint_was_trained_on(made):
    ckpt = dataclasses.replace(made["ckpt"]["gpf"])
    assert trained_on(ckpt) is None and check_self_consistent(ckpt, "m.pt") is None
    ckpt.shards = {"run": made["run"].to_dict(), "random_crops": 2, "run_format": MANIFEST_FORMAT}
    assert trained_on(ckpt) == made["run"]
    assert check_self_consistent(ckpt, "m.pt") is None
    # a record without its format predates it: read as format 2, as the shards were made then
    del ckpt.shards["run_format"]
    legacy = trained_on(ckpt)
    assert legacy.view_round is None and legacy.jpeg_subsampling == "4:2:0"
    assert dataclasses.replace(legacy, jpeg_subsampling=None) == made["run"]


def test_a_checkpoint_whose_crops_came_from_another_attention_setting_is_refused(made):
    for variant in ("gpf", "pf"):
        ckpt = dataclasses.replace(made["ckpt"][variant], shards={"run": replace(made["run"], tau=0.5).to_dict()})
        assert trained_on(ckpt).tau == 0.5
        with pytest.raises(FitError) as info:
            check_self_consistent(ckpt, "m.pt")
        message = str(info.value)
        assert "m.pt: the attention model it embeds did not make the crops it was trained on" in message
        assert "tau 0.7 vs 0.5" in message and "damaged or was edited" in message
        assert "--allow-attention-mismatch" not in message          # no such option where this is checked
    single = dataclasses.replace(made["ckpt"]["single-frozen"], shards={"run": replace(made["run"], tau=0.5).to_dict()})
    assert check_self_consistent(single, "m.pt") is None             # its crops are never used


def test_a_record_without_the_scale_still_has_its_attention_checked(made):
    ckpt = dataclasses.replace(made["ckpt"]["gpf"], shards={"run": replace(made["run"], scores=None, tau=0.5).to_dict()})
    with pytest.raises(FitError, match="tau 0.7 vs 0.5"):
        check_self_consistent(ckpt, "m.pt")


def test_shards_that_do_not_record_the_attention_settings_get_a_warning(made):
    fit = fit_of(made, "gpf", replace(made["run"], eb_layer=None, contrastive=None))
    assert any("does not record the attention model's eb_layer, contrastive" in w for w in fit.warnings)


# ----------------------------------------------------------------------------- a checkpoint train_stage2 wrote

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    ckpt = stage1_checkpoint(root / "stage1.pt")
    write_shards(root / "shards", ckpt, random_crops=2, features=True)
    return {"root": root, "stage1": ckpt, "shards": root / "shards"}


def test_checkpoint_with_other_buckets_or_view_size_is_refused(data, tmp_path):
    from gpf.shards.manifest import read_manifest
    from gpf.train.stage2 import train_stage2

    train_stage2(stage2_config(data, tmp_path / "run", epochs=1))
    run = read_manifest(data["shards"]).run
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert check_fit(ckpt, run, model="ckpt", data="shards").warnings == []
    with pytest.raises(FitError, match=r"ckpt predicts N = 10 score buckets.*N = 7"):
        check_fit(ckpt, replace(run, scores=tuple(range(1, 8))), model="ckpt", data="shards")
    with pytest.raises(FitError, match=rf"views of {VIEW} px.*--view-size 224"):
        check_fit(ckpt, replace(run, view_size=224), model="ckpt", data="shards")
    with pytest.raises(FitError, match="tau 0.7 vs 0.5"):
        check_fit(ckpt, replace(run, tau=0.5), model="ckpt", data="shards")


# ----------------------------------------------------------------------------- how shards made their views

def test_the_view_rule_jpeg_and_fit_are_read_from_the_record_as_the_shards_were_made(made):
    from gpf.model.backbones import get_spec
    from gpf.model.geometry import ViewGeometry
    from gpf.pipeline.compat import attention_fit, shard_geometry, shard_jpeg

    vgg16 = get_spec("vgg16")                       # stride 32, minimum input 32
    old = RunFields.from_dict({**made["run"].to_dict(), "config": {"jpeg_quality": 90}}, "old manifest", version=2)
    assert shard_geometry(old, 224, vgg16) == ViewGeometry(224, 32, 32)        # format 2: the backbone's stride
    assert shard_geometry(old, 224, vgg16).size(3000, 2000) == (224, 160)
    assert shard_jpeg(old) == (90, "4:2:0") and attention_fit(old) == "pad"
    new = replace(made["run"], view_round=8, view_min_side=1, view_fit="enlarge", jpeg_quality=80,
                  jpeg_subsampling="4:4:4")
    assert shard_geometry(new, 224, vgg16) == ViewGeometry(224, 8, 1)
    assert shard_geometry(new, 224, vgg16).size(3000, 2000) == (224, 152)
    assert shard_jpeg(new) == (80, "4:4:4") and attention_fit(new) == "enlarge"
    assert shard_geometry(None, 96, vgg16) == ViewGeometry(96, 8, 1)            # no record: today's rule
    assert shard_jpeg(None) == (95, "4:2:0")


# ----------------------------------------------------------------------------- the two subnets

def test_subnets_this_installation_builds_otherwise_are_refused_and_another_timm_version_warned(made):
    import timm

    from gpf.model.gpf import GPFNet
    from gpf.model.checkpoint import stage2_checkpoint
    from gpf.pipeline.compat import subnet_differences

    ckpt = made["ckpt"]["gpf"]
    assert subnet_differences(ckpt) == ([], [])
    model = GPFNet("timm:resnet10t", "gpf", 10, peripheral_backbone="tiny", branch_width=4, fusion_width=4)
    two = stage2_checkpoint(model, ckpt.attention, view_size=EVAL_VIEW, threshold=5.0, scores=list(SCORES))
    assert fit_of_checkpoint(two, made).warnings == []
    two.model_config["subnets"]["foveal"]["timm_version"] = "0.0.1"
    warnings = fit_of_checkpoint(two, made).warnings
    assert warnings == [f"its foveal subnet timm:resnet10t was made with timm 0.0.1, this is timm {timm.__version__} "
                        "(it builds the same C, mean/std and minimum input)"]
    two.model_config["subnets"]["foveal"]["mean"] = [0.5, 0.5, 0.5]
    with pytest.raises(FitError, match=r"model.pt: its foveal subnet timm:resnet10t was saved as mean \[0.5, 0.5, 0.5\] "
                                       r"\(here \[0.485, 0.456, 0.406\]\) \(made with timm 0.0.1: install timm==0.0.1\)"):
        fit_of_checkpoint(two, made)
    two.model_config["subnets"]["peripheral"]["backbone"] = "timm:no_such_net"
    with pytest.raises(FitError, match="its peripheral subnet timm:no_such_net cannot be built here"):
        check_self_consistent(two, "model.pt")


def fit_of_checkpoint(checkpoint, made):
    return check_fit(checkpoint, made["run"], model="model.pt", data="the shards in S", random_crops=2)
