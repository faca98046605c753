"""What an adopted model can be improved with, without a server: the decisions it is offered (form, `answer`), its
module fine-tuned through `ForeignModule` (logits or probabilities), its reference record, and Scanflow's detector
watching its answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from flows.supervise import decision_form, form_answer
from scanflow.adopt import (
    ADOPTED_TAG,
    ALREADY_FILTERED,
    CONTRACT_TAG,
    REFERENCE_TAG,
    AdoptionError,
    ForeignClassifier,
    ForeignModule,
    InputContract,
    ReferenceRecord,
    images_sha256,
    improvable_actions,
    reference_data,
)
from scanflow.data import DatasetInfo, LabeledImages
from scanflow.drift.base import DriftResult
from scanflow.human import ACTIONS, PIXEL_LEVEL_VIEWS, InvalidDecisionError, policy_action
from scanflow.improve.retrain import RetrainConfig, fine_tune
from scanflow.supervision import DecisionRequest

CLASSES = ("dark", "bright")


def contract(output: str = "logits", flavour: str = "pytorch") -> InputContract:
    return InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), output, flavour)


def tags(output: str = "logits", flavour: str = "pytorch", labelled: bool | None = True) -> dict[str, str]:
    found = {ADOPTED_TAG: flavour, CONTRACT_TAG: contract(output, flavour).to_json()}
    if labelled is not None:
        found[REFERENCE_TAG] = ReferenceRecord("/data/reference", "refuse", 100, labelled, "0" * 64).to_json()
    return found


def test_a_scanflow_model_is_offered_every_decision_and_an_adopted_one_only_what_it_can_carry_out():
    assert improvable_actions({"scanflow.dataset": "digits"}) == (ACTIONS, "")
    assert improvable_actions(tags()) == (ACTIONS, "")
    assert improvable_actions(tags("probabilities")) == (ACTIONS, "")
    actions, why = improvable_actions(tags("labels", "pyfunc"))
    assert actions == ("filter", "ignore") and why.startswith("a pyfunc model that answers labels has no module Scanflow can fine-tune")
    actions, why = improvable_actions(tags("probabilities", "pyfunc"))
    assert actions == ("filter", "ignore") and why.startswith("a pyfunc model that answers probabilities has no module")
    actions, why = improvable_actions(tags(labelled=False))
    assert actions == ("ignore",) and "its reference /data/reference has no labels (class sub-folders)" in why
    actions, why = improvable_actions(tags(labelled=None))
    assert actions == ("ignore",) and "adopted without a record of its reference" in why


def test_a_filter_version_is_not_offered_the_same_filter_again():
    actions, why = improvable_actions({"scanflow.dataset": "digits", "scanflow.kind": "filter"})
    assert actions == ("retrain", "ignore") and why == ALREADY_FILTERED
    assert "a new filter would be trained on the same clean images and synthetic corruptions" in why
    assert improvable_actions({"scanflow.dataset": "digits", "scanflow.kind": "retrain"}) == (ACTIONS, "")
    actions, why = improvable_actions({**tags("labels", "pyfunc"), "scanflow.kind": "filter"})
    assert actions == ("ignore",) and why.startswith("a pyfunc model that answers labels has no module") and why.endswith(ALREADY_FILTERED)
    request = DecisionRequest(
        batch_id="b-2", model_version="2", statistic=9.0, threshold=2.0, p_value=0.001, n_critical=10, n=100,
        recommended="retrain", classes=CLASSES, shown=(3,), scores=(4.0,), guesses=(0,), thumbnails_b64=("",),
        actions=actions, actions_note=why,
    )
    with pytest.raises(InvalidDecisionError, match="model v2 cannot filter: a pyfunc model"):
        request.check_offered("filter")


def test_the_form_and_answer_offer_an_adopted_model_only_its_decisions():
    request = DecisionRequest(
        batch_id="b-1", model_version="1", statistic=9.0, threshold=2.0, p_value=0.001, n_critical=10, n=100,
        recommended="retrain", classes=CLASSES, shown=(3,), scores=(4.0,), guesses=(0,), thumbnails_b64=("",),
        actions=("retrain", "ignore"), actions_note="the filter is not built for adopted models yet",
    )
    schema = decision_form(request).model_json_schema()["properties"]["action"]
    assert schema["enum"] == ["retrain", "ignore"] and schema["default"] == "retrain"
    assert "Offered: retrain, ignore, because the filter is not built for adopted models yet." in schema["description"]
    with pytest.raises(ValidationError):
        decision_form(request)(**form_answer(request, "filter", None))
    with pytest.raises(InvalidDecisionError, match=r"^model v1 cannot filter: the filter is not built for adopted models yet; choose retrain or ignore$"):
        request.check_offered("filter")
    assert request.offered_or_ignore("filter") == "ignore" and request.offered_or_ignore("retrain") == "retrain"


def test_the_policy_recommends_only_what_the_model_can_carry_out():
    pixel_damage = DriftResult("autoencoder", True, 9.0, 0.001, 2.0, 0.05, 100, np.zeros(100), 1.0, (),
                               details={"strongest_component_share": {PIXEL_LEVEL_VIEWS[0]: 0.9}})
    assert policy_action(pixel_damage) == "filter"
    assert policy_action(pixel_damage, ("retrain", "ignore")) == "retrain"
    assert policy_action(pixel_damage, ("ignore",)) == "ignore"


class Net(nn.Module):
    def __init__(self, softmax: bool) -> None:
        super().__init__()
        self.softmax = softmax
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return torch.softmax(out, dim=1) if self.softmax else out


def squares(n: int, seed: int, shifted: bool = False) -> LabeledImages:
    """Dark (0) or bright (1) 8x8 images. Shifted: both brightnesses pulled into the middle, crossed over (dark
    images at 150, bright ones at 110), so a model that has not seen the shift gets most of them wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    levels = (150, 110) if shifted else (50, 200)
    level = np.where(labels == 1, levels[1], levels[0])[:, None, None, None] + rng.integers(-15, 15, (n, 1, 8, 8))
    images = np.clip(level, 0, 255).astype(np.uint8)
    info = DatasetInfo("squares", CLASSES, 1, 8, 8, "generated")
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), info, "squares")


@pytest.mark.parametrize("output", ["logits", "probabilities"])
def test_an_adopted_module_is_fine_tuned_on_the_persons_labels_and_the_original_is_untouched(output):
    torch.manual_seed(0)
    clean, shifted = squares(400, 0), squares(60, 1, shifted=True)
    trained = fine_tune(ForeignModule(ForeignClassifier(Net(softmax=output == "probabilities"), contract(output))), clean, clean,
                        RetrainConfig(steps=150, batch_size=32, pseudo_share=0.0))
    classifier = trained.classifier.as_classifier()  # the team's model: right on clean images, wrong on the shift
    before = {k: v.clone() for k, v in classifier.model.state_dict().items()}
    labelled = LabeledImages(shifted.images[:30], shifted.labels[:30], shifted.info, "labelled by a person")
    result = fine_tune(ForeignModule(classifier), labelled, clean,
                       RetrainConfig(steps=300, batch_size=32, learning_rate=1e-2, labelled_share=0.5, pseudo_share=0.0))
    assert all(torch.equal(before[k], v) for k, v in classifier.model.state_dict().items()), "the adopted model was modified"
    tuned = result.classifier.as_classifier()
    assert isinstance(tuned, ForeignClassifier) and tuned.contract == classifier.contract

    def accuracy(model: ForeignClassifier, data: LabeledImages) -> float:
        return float((model.predict(data.images) == data.labels).float().mean())

    unseen, clean_again = squares(200, 2, shifted=True), squares(200, 4)
    assert accuracy(classifier, unseen) < 0.2 and accuracy(classifier, clean_again) > 0.95
    assert accuracy(tuned, unseen) > 0.9 and accuracy(tuned, clean_again) > 0.95


def test_a_model_that_answers_labels_has_no_module_to_fine_tune():
    with pytest.raises(AdoptionError, match="a pyfunc model that answers labels has no module to fine-tune"):
        ForeignModule(ForeignClassifier(object(), contract("labels", "pyfunc")))


def test_the_reference_is_read_again_only_as_it_was_at_adoption(tmp_path):
    data = squares(60, 3)
    np.savez(tmp_path / "reference.npz", images=data.images.numpy(), labels=data.labels.numpy())
    record = ReferenceRecord(str(tmp_path / "reference.npz"), "refuse", 60, True, images_sha256(data.images, data.labels))
    fit, calibration = reference_data(record, contract(), data.info)
    assert len(fit) == 48 and len(calibration) == 12
    changed = data.images.clone()
    changed[0] = 0
    np.savez(tmp_path / "reference.npz", images=changed.numpy(), labels=data.labels.numpy())
    with pytest.raises(AdoptionError, match=r"is not what the model was adopted with \(60 images now, 60 then; their sha256 differs\)"):
        reference_data(record, contract(), data.info)
    with pytest.raises(AdoptionError, match="has no labels"):
        reference_data(ReferenceRecord(record.source, "refuse", 60, False, record.sha256), contract(), data.info)


class LabelsOnly:
    """A pyfunc-like model without gradients that answers labels: bright (mean input > 0) or dark."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1).mean(axis=1) > 0).astype(np.int64)


@pytest.mark.parametrize("flavour", ["pytorch", "pyfunc"])
def test_a_filter_in_front_of_an_adopted_model_is_a_drop_in_for_it(tmp_path, flavour):
    """The filtered version takes and gives what the adopted model does (normalised floats in, its own output out),
    loads with plain MLflow code, and answers clean images the gate passes exactly as the model alone; a model
    without gradients gets a denoiser trained on pixel error alone."""
    import mlflow.pyfunc
    from mlflow import pytorch as mlflow_pytorch

    from scanflow.improve.filter import DenoiserConfig, FilteredClassifier, calibrate_gate, train_denoiser
    from scanflow.serving import CONFIG_ARTIFACT, DENOISER_ARTIFACT, FOREIGN_MODEL_ARTIFACT, PYFUNC_CODE, FilteredForeignModel

    torch.manual_seed(0)
    clean = squares(300, 0)
    if flavour == "pytorch":
        model = fine_tune(ForeignModule(ForeignClassifier(Net(softmax=False), contract())), clean, clean,
                          RetrainConfig(steps=150, batch_size=32, pseudo_share=0.0)).classifier.net.eval()
        mlflow_pytorch.save_model(model, str(tmp_path / "team-model"), serialization_format="pickle", pip_requirements=["torch"])
        adopted = ForeignClassifier(model, contract())
        guide = ForeignModule(adopted)
    else:
        adopted = ForeignClassifier(LabelsOnly(), contract("labels", "pyfunc"))
        guide = None

    result = train_denoiser(guide, clean, DenoiserConfig(training_images=300, steps=30, batch_size=16, width_multiplier=4))
    gate = calibrate_gate(result.denoiser, clean.images, 0.9)
    filtered = FilteredClassifier(adopted, result.denoiser, gate_threshold=gate)
    wrapper = FilteredForeignModel(adopted.contract, gate)
    (tmp_path / "config.json").write_text(__import__("json").dumps(wrapper.model_config()))
    result.denoiser.save(tmp_path / "denoiser.pt")
    if flavour == "pyfunc":  # a plain pyfunc of the team's: LabelsOnly behind mlflow's own wrapper
        class TeamPyfunc(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                return LabelsOnly().predict(np.asarray(model_input))

        mlflow.pyfunc.save_model(str(tmp_path / "team-model"), python_model=TeamPyfunc(), pip_requirements=["numpy"])
    mlflow.pyfunc.save_model(
        str(tmp_path / "filtered"), python_model=str(PYFUNC_CODE), pip_requirements=["torch"],
        artifacts={CONFIG_ARTIFACT: str(tmp_path / "config.json"), DENOISER_ARTIFACT: str(tmp_path / "denoiser.pt"),
                   FOREIGN_MODEL_ARTIFACT: str(tmp_path / "team-model")},
    )
    served = mlflow.pyfunc.load_model(str(tmp_path / "filtered"))
    x = adopted.contract.to_float(clean.images[:50])
    answer = np.asarray(served.predict(x.numpy()))
    passed = (filtered.clean(clean.images[:50]) == clean.images[:50]).flatten(1).all(dim=1).numpy()
    assert passed.mean() >= 0.7  # the gate passes most clean images untouched
    if flavour == "pytorch":
        with torch.no_grad():
            alone = model(x).numpy()
        assert answer.shape == (50, 2) and answer.dtype == np.float32  # logits, as the team's model gives
        assert np.allclose(answer[passed], alone[passed], atol=1e-5)
    else:
        alone = LabelsOnly().predict(x.numpy())
        assert answer.shape == (50,) and np.array_equal(answer[passed], alone[passed])
    assert np.array_equal(np.asarray(served.predict(x.numpy())).argmax(1) if flavour == "pytorch" else answer,
                          filtered.predict(clean.images[:50]).numpy())
    with pytest.raises(ValueError, match=r"expected float32 images \[N, 1, 8, 8\] normalised as the model's input, got shape \[50, 64\]"):
        served.predict(x.flatten(1).numpy())


def test_an_embedding_layer_is_the_hidden_features_the_detector_watches():
    from scanflow.adopt import detector_components

    net = Net(softmax=False)
    with_layer = InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), "logits", "pytorch", embedding="body.2")
    classifier = ForeignClassifier(net, with_layer)
    hidden, probabilities = classifier.embed_and_predict_proba(squares(5, 0).images)
    assert hidden.shape == (5, 16) and probabilities.shape == (5, 2) and bool((hidden >= 0).all())  # the ReLU's output
    assert classifier.evidence == "probabilities and the embedding of layer 'body.2'"
    assert detector_components(with_layer)[-1] == "embedding" and "embedding" not in detector_components(contract())
    assert InputContract.from_json(with_layer.to_json()) == with_layer
    with pytest.raises(AdoptionError, match=r"^the model has no layer 'body.9' for --embedding-layer; its layers: body, body.0, body.1, body.2, body.3$"):
        ForeignClassifier(net, InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), "logits", "pytorch", embedding="body.9"))
    with pytest.raises(AdoptionError, match=r"^--embedding-layer names a layer of a pytorch module, and a pyfunc model has none"):
        InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), "probabilities", "pyfunc", embedding="body.2")


class _Pyfunc:
    """A loaded pyfunc stand-in: `predict` of float images [N, 1, 8, 8] through `answer`."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def predict(self, x):
        return self.answer(torch.as_tensor(x))


def test_an_embedding_model_gives_a_pyfuncs_hidden_features_and_only_when_asked():
    """A pyfunc's embedding comes from a second model of its own (pinned; its sha256 in the contract): the detector's
    hidden features, never computed for a prediction; an embedder that gives anything but one finite vector per image
    is refused, and without it loaded, hidden features are refused rather than replaced by probabilities."""
    from scanflow.adopt import detector_components

    net = Net(softmax=True)
    calls = []
    embedder = _Pyfunc(lambda x: calls.append(len(x)) or net.body[:3](x).detach().numpy())
    pinned = InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), "probabilities", "pyfunc", embedding_model="models:/team-embedder/3",
                           embedding_model_sha256='{"MLmodel": "00"}')
    classifier = ForeignClassifier(_Pyfunc(lambda x: net(x).detach().numpy()), pinned, embedder)
    images = squares(5, 0).images
    hidden, probabilities = classifier.embed_and_predict_proba(images)
    assert hidden.shape == (5, 16) and probabilities.shape == (5, 2) and calls == [5]
    assert classifier.predict(images).shape == (5,) and calls == [5]  # predictions need no embedding
    assert classifier.evidence == "probabilities and the embedding of models:/team-embedder/3"
    assert detector_components(pinned)[-1] == "embedding" and InputContract.from_json(pinned.to_json()) == pinned
    with pytest.raises(AdoptionError, match=r"^the embedding model models:/team-embedder/3 returned shape \[5\] for 5 images, "
                                            r"expected \[5, D\] of finite numbers"):
        ForeignClassifier(classifier.model, pinned, _Pyfunc(lambda x: np.zeros(len(x)))).embed_and_predict_proba(images)
    with pytest.raises(AdoptionError, match=r"^the embedding model models:/team-embedder/3 is not loaded"):
        ForeignClassifier(classifier.model, pinned).embed_and_predict_proba(images)
    with pytest.raises(AdoptionError, match=r"^--embedding-layer and --embedding-model both name the model's embedding"):
        InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), "logits", "pytorch", embedding="body.2", embedding_model="models:/e/1")
    with pytest.raises(AdoptionError, match=r"^the embedding model must be a registered version, models:/NAME/VERSION, got 'models:/e@prod'"):
        InputContract(1, 8, 8, CLASSES, (0.5,), (0.5,), "logits", "pytorch", embedding_model="models:/e@prod")


@pytest.mark.parametrize("output", ["logits", "labels"])
def test_the_detector_watches_an_adopted_models_answers(output):
    """Scanflow's detector around a model it did not train (no ImageSpec, maybe labels only): the prediction shift
    takes the class count from the model's answers, so clean images that the model answers as if all were bright
    are flagged, and a clean batch it answers as usual is not."""
    from scanflow.drift.autoencoder import AutoencoderDetector
    from scanflow.models import Autoencoder

    torch.manual_seed(0)
    trained = fine_tune(ForeignModule(ForeignClassifier(Net(softmax=False), contract())), squares(400, 0), squares(400, 0),
                        RetrainConfig(steps=150, batch_size=32, pseudo_share=0.0)).classifier.as_classifier()
    classifier = ForeignClassifier(trained.model, contract()) if output == "logits" else ForeignClassifier(
        _Pyfunc(lambda x: trained.model(x).argmax(dim=1)), contract("labels", "pyfunc"))
    reference, calibration = squares(400, 5), squares(400, 6)
    detector = AutoencoderDetector(classifier, Autoencoder(1, 8, 8, latent_dim=4), calibration_windows=100, seed=0)
    detector.fit(reference.images, calibration=calibration.images, info=reference.info)
    batch = squares(40, 7).images
    assert detector._features(batch)["prediction"].shape == (40, 2)
    assert not detector.predict(batch).is_drift
    others = squares(200, 8)
    all_bright = classifier.predict_proba(others.images[others.labels == 1][:40]).numpy()
    assert detector.predict(batch, all_bright).is_drift
