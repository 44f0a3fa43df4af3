"""Training-data provenance: which backbones are not zero-shot on which dataset, and why."""

from __future__ import annotations

import dataclasses

from ocbench.backbones.cards import get_card, list_cards
from ocbench.backbones.provenance import not_zero_shot_reasons
from ocbench.data.cards import get_dataset_card


def test_opencell_trained_cards_are_not_zero_shot_on_opencell_and_the_demo():
    opencell, demo = get_dataset_card("opencell"), get_dataset_card("demo")
    trained = get_card("opencell-dino-vits8")
    for dataset in (opencell, demo):
        (reason,) = not_zero_shot_reasons(trained, dataset)
        assert "OpenCell" in reason and "own images" in reason
    assert not_zero_shot_reasons(get_card("hpa-fov-vitb8"), opencell) == []
    assert not_zero_shot_reasons(get_card("imagenet-dino-vits8"), opencell) == []


def test_fine_tuned_cards_inherit_and_extend_and_label_supervision_counts():
    opencell = get_dataset_card("opencell")
    parent = get_card("hpa-fov-vitb8")
    tuned = dataclasses.replace(parent, name="hpa-fov-vitb8-ft", training_datasets=parent.training_datasets + ("OpenCell 90% train split",))
    assert len(not_zero_shot_reasons(tuned, opencell)) == 1
    supervised = dataclasses.replace(parent, name="hpa-sup", supervision="protein-label supervised")
    assert not_zero_shot_reasons(supervised, opencell) == [
        "supervised with protein localization labels (possibly of the benchmark's own proteins)"]
    # other image collections leave it zero-shot
    other = dataclasses.replace(parent, name="other", training_datasets=("HPA FOV", "ImageNet-1k"))
    assert not_zero_shot_reasons(other, opencell) == []


def test_every_registered_card_declares_training_data_and_supervision():
    for card in list_cards():
        assert card.supervision, card.name
        if card.source_kind != "builtin":  # trained weights say what they were trained on
            assert card.training_datasets, card.name
