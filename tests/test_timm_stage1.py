"""timm's ResNet and RegNetX as stage-1 networks, end to end on CPU (random weights, 32-64 px views).

For each of ``timm:resnet10t`` and ``timm:regnetx_002``: `gpf train stage1` trains, `gpf preprocess
--stage1` writes shards, stage 2 trains a few steps on them with the stored peripheral features, and
`gpf predict` reproduces the crops and the scores of `gpf evaluate`. Independent references: EB
computed directly on the rebuilt stage-1 network for every stored map, and on one image the float64
NumPy EB of tests/helpers/eb_reference.py run on timm's own model (loaded from the checkpoint's keys).
Refusals: a GELU / LayerNorm timm family is named, with the module, before any run folder is made.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from gpf.model.attention import EBUnsupportedError, excitation_backprop
from gpf.model.checkpoint import load_checkpoint, model_from_checkpoint
from gpf.model.gpf import GPFNet, PeripheralNet, check_peripheral_backbone, describe_backbones, imagenet_classifier
from gpf.train.config import Stage1Config

from helpers.eb_reference import reference_mwp, reference_network
from helpers.evaluation import N_IMAGES, TEST_IDS, write_ava
from helpers.training import stage2_config

VIEW = 64          # every test photo's view has a short side >= 32, these networks' minimum input
NETWORKS = {"timm:resnet10t": ("timm_resnet", "features.layer2"), "timm:regnetx_002": ("timm_regnet", "features.s2")}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def run(request, tmp_path_factory):
    """AVA folder -> stage 1 (one epoch, two steps) -> preprocess -> stage 2 (three steps, stored features)."""
    from gpf.pipeline.preprocess import PreprocessConfig, run_preprocess
    from gpf.train.stage1 import train_stage1
    from gpf.train.stage2 import train_stage2

    name = request.param
    base = tmp_path_factory.mktemp(name.replace(":", "_"))
    write_ava(base / "ava")
    stage1 = train_stage1(Stage1Config(out=str(base / "stage1"), dataset="ava", root=str(base / "ava"), backbone=name,
                                       weights="none", view_size=VIEW, epochs=1, limit_train_batches=2, batch_size=4,
                                       lr=0.01, workers=0, dataset_options={"val_size": 2}, progress=False,
                                       tensorboard=False))
    shards = base / "shards"
    run_preprocess(PreprocessConfig(dataset="ava", root=str(base / "ava"), out=str(shards),
                                    stage1=str(base / "stage1" / "last.pt"), view_size=VIEW, samples_per_shard=8,
                                    store_features=True, workers=1, batch_size=8, progress=False,
                                    dataset_options={"val_size": 2}))
    stage2 = train_stage2(stage2_config({"shards": shards}, base / "stage2", epochs=1, limit_train_batches=3,
                                        use_features="auto"))
    log = (base / "stage2" / "train.log").read_text()
    return {"name": name, "base": base, "ava": base / "ava", "stage1": base / "stage1" / "last.pt",
            "stage1_result": stage1, "shards": shards, "stage2": base / "stage2" / "last.pt", "log": log,
            "stage2_result": stage2}


def _samples(shards):
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for info in tar.getmembers():
                key, _, member = info.name.partition(".")
                members.setdefault(key, {})[member] = tar.extractfile(info).read()
        yield from members.items()


def test_stage1_trains_and_its_checkpoint_rebuilds_the_timm_network(run):
    history = run["stage1_result"].history
    assert history and all(np.isfinite(row["train_loss"]) for row in history)
    ckpt = load_checkpoint(run["stage1"], expect="stage1")
    assert ckpt.model_config["backbone"] == run["name"]
    model = model_from_checkpoint(ckpt)
    assert isinstance(model, PeripheralNet) and model.spec.name == run["name"]
    assert model.spec.default_eb_layer == NETWORKS[run["name"]][1]
    # the trunk's keys are timm's with a features. prefix: a stage-2 column of that name takes them as they are
    column = timm.create_model(run["name"][5:], num_classes=0)
    assert {k for k in ckpt.state_dict if k.startswith("features.")} == {f"features.{k}" for k in column.state_dict()}


def _uint8(view: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(view.convert("RGB")).copy()).permute(2, 0, 1)[None]


def _un_encoded_view(run, model, image_id: str) -> Image.Image:
    """The peripheral view preprocess attends (before JPEG), made by the pipeline's own view rule."""
    from gpf.pipeline.attend import AttentionModel
    from gpf.pipeline.images import load_image
    from gpf.pipeline.scoring import attention_view

    att = AttentionModel.from_model(model, device="cpu", eb_layer=NETWORKS[run["name"]][1])
    return attention_view(att, load_image(run["ava"] / "images" / f"{image_id}.jpg"), VIEW).periph


def test_stored_eb_maps_equal_eb_on_the_stage1_network_and_the_float64_reference(run):
    from gpf.shards.manifest import read_manifest

    kind, layer = NETWORKS[run["name"]]
    assert read_manifest(run["shards"]).run.eb_layer == layer
    model = model_from_checkpoint(load_checkpoint(run["stage1"], expect="stage1")).eval()
    rows = pd.read_parquet(run["shards"] / "meta").set_index("key")
    checked = 0
    for key, members in _samples(run["shards"]):
        view = _un_encoded_view(run, model, rows.loc[key, "id"])
        assert view.size == Image.open(io.BytesIO(members["periph.jpg"])).size
        x = model.normalize(_uint8(view))
        direct = excitation_backprop(model, x, layer=layer)[0].numpy()
        stored = np.load(io.BytesIO(members["attn.npy"]), allow_pickle=False).astype(np.float32)
        np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=1e-3 * direct.max())
        if checked == 0:   # the float64 reference, on timm's own model holding the checkpoint's weights
            reference = timm.create_model(run["name"][5:], num_classes=2).eval()
            state = {k[len("features."):]: v for k, v in model.state_dict().items() if k.startswith("features.")}
            state.update({("head.fc." if kind == "timm_regnet" else "fc.") + k[len("head.fc."):]: v
                          for k, v in model.state_dict().items() if k.startswith("head.fc.")})
            reference.load_state_dict(state, strict=True)
            chain = reference_network(reference, kind)
            target = int(model(x).argmax(1))
            mwp = reference_mwp(chain, x[0].double(), target, layer).sum(axis=0)
            assert mwp.max() > 0
            np.testing.assert_allclose(direct, mwp, rtol=1e-4, atol=1e-6 * mwp.max())
        checked += 1
    assert checked == N_IMAGES


def test_stage2_uses_the_stored_features_of_the_frozen_timm_peripheral(run):
    from gpf.shards.manifest import read_manifest

    assert "using the stored peripheral features" in run["log"]
    ckpt = load_checkpoint(run["stage2"])
    assert ckpt.model_config["peripheral_backbone"] == run["name"] and ckpt.model_config["backbone"] == "tiny"
    stage1 = load_checkpoint(run["stage1"], expect="stage1").state_dict
    peripheral = {k[len("peripheral."):]: v for k, v in ckpt.state_dict.items() if k.startswith("peripheral.")}
    assert peripheral and all(torch.equal(v, stage1["features." + k]) for k, v in peripheral.items())
    # the stored descriptor is what the stage-2 column computes on the decoded peripheral view
    model = model_from_checkpoint(ckpt).eval()
    key, members = next(_samples(run["shards"]))
    view = Image.open(io.BytesIO(members["periph.jpg"]))          # the JPEG-decoded view the trainer reads
    if getattr(read_manifest(run["shards"]).run, "features_from", "pixels") == "pixels":   # older shard rule
        rows = pd.read_parquet(run["shards"] / "meta").set_index("key")
        view = _un_encoded_view(run, model_from_checkpoint(load_checkpoint(run["stage1"])), rows.loc[key, "id"])
    periph = model.normalize_peripheral(_uint8(view))
    with torch.no_grad():
        computed = model.peripheral_descriptor(periph)[0].numpy()
    stored = np.load(io.BytesIO(members["pfeat.npy"]), allow_pickle=False).astype(np.float32)
    np.testing.assert_allclose(stored, computed, rtol=2e-3, atol=2e-3 * np.abs(computed).max())


def test_predict_reproduces_the_crops_and_the_scores_of_evaluate(run):
    from gpf.pipeline.evaluation import evaluate_checkpoint
    from gpf.pipeline.scoring import Scorer

    scorer = Scorer.from_checkpoint(run["stage2"], device="cpu", workers=1)
    rows = pd.read_parquet(run["shards"] / "meta").set_index("id")
    results = {r.id: r for r in scorer.score_many([run["ava"] / "images" / f"{i}.jpg" for i in TEST_IDS])}
    evaluation = evaluate_checkpoint(run["stage2"], run["shards"], workers=0, device="cpu")
    for image_id, mean in zip(evaluation.ids, evaluation.pred_mean):
        row = rows.loc[image_id]
        assert results[image_id].box == (row.x0, row.y0, row.x1, row.y1), image_id
        assert results[image_id].mean == pytest.approx(mean, abs=0.05), image_id   # tests/test_scoring.py's
    assert sorted(evaluation.ids) == sorted(TEST_IDS)


@pytest.mark.parametrize("name, module", [("timm:convnext_atto", r"'stem.1' \(timm.layers.norm.LayerNorm2d\)"),
                                          ("timm:deit_tiny_patch16_224", r"'blocks.0.norm1' \(timm.layers.norm.LayerNorm\)")])
def test_a_timm_family_eb_cannot_walk_is_refused_before_the_run_folder(tmp_path, name, module):
    from gpf.train.stage1 import Stage1Error, train_stage1

    write_ava(tmp_path / "ava")
    cfg = Stage1Config(out=str(tmp_path / "run"), dataset="ava", root=str(tmp_path / "ava"), backbone=name,
                       weights="imagenet", view_size=VIEW, epochs=1, workers=0, progress=False, tensorboard=False)
    with pytest.raises(Stage1Error, match=rf"--backbone {name} cannot be a stage-1 network.*{module}: it normalises"):
        train_stage1(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(EBUnsupportedError, match="EB walks timm's ResNet .* and RegNetX"):
        imagenet_classifier(name, weights="imagenet")     # refused before timm would fetch weights


def test_timm_imagenet_classifier_keeps_timms_logits_and_rebuilds_from_its_config(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t").eval()
    torch.save(model.state_dict(), tmp_path / "resnet10t.pt")
    classifier = imagenet_classifier("timm:resnet10t", weights=str(tmp_path / "resnet10t.pt")).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(classifier(x), model(x))
    assert classifier.spec.default_eb_layer == "features.layer2" and classifier.num_classes == 1000
    from gpf.model.gpf import build_model

    rebuilt = build_model(classifier.config())
    rebuilt.load_state_dict(classifier.state_dict(), strict=True)


def test_stage1_lists_and_the_column_loads_the_stage1_trunk():
    check_peripheral_backbone("timm:resnet26d")      # a deep-stem, avg-down ResNet passes the meta check
    rows = {r["backbone"]: r for r in describe_backbones(names=["timm:resnet10t", "timm:convnext_atto"])}
    assert rows["timm:resnet10t"]["eb_layer"] == "features.layer2" and rows["timm:resnet10t"]["stage1_params"] > 0
    assert rows["timm:convnext_atto"]["eb_layer"] is None and rows["timm:convnext_atto"]["stage1_params"] is None
    torch.manual_seed(0)
    stage1 = PeripheralNet("timm:regnetx_002").eval()
    model = GPFNet("tiny", "gpf", 10, peripheral_backbone="timm:regnetx_002", branch_width=8, fusion_width=8).eval()
    model.load_peripheral_from_stage1(stage1.state_dict())
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model.peripheral_descriptor(x), stage1.features(x).mean(dim=(2, 3)))


def test_stage1_weights_from_a_timm_state_dict_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t").eval()           # with timm's fc, which the stage-1 trunk lacks
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    stage1 = PeripheralNet("timm:resnet10t", weights=str(tmp_path / "resnet10t.pth")).eval()
    trunk = {k[len("features."):]: v for k, v in stage1.state_dict().items() if k.startswith("features.")}
    assert trunk.keys() == {k for k in source.state_dict() if not k.startswith("fc.")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in trunk.items())
