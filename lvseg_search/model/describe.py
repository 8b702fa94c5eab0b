"""A network in words, from its hyperparameter values: one description shared by the
search's console table, the report and the model card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What each decoder is, in words.
DECODERS = {"unet": "U-Net (skip connections)", "transposed": "transposed-conv decoder",
            "fcn": "FCN up-score"}


def network_words(values: Mapping[str, Any]) -> str:
    """A trial's network in full words (the report's, the model card's).

    Args:
        values: Its hyperparameter values (a table row or ``hp.values``).
    """
    row = values
    if row.get("architecture") == "lab_fcn":
        return "the lab's FCN (strided convs, one transposed-conv up-score)"
    norm = {"batch": "batch norm", "group": "group norm", "instance": "instance norm",
            "none": "no norm"}.get(str(row.get("normalization")),
                                   f"{row.get('normalization')} norm")
    words = (f"{DECODERS.get(str(row.get('decoder')), row.get('decoder'))}, "
             f"{row.get('depth')} level{'' if str(row.get('depth')) == '1' else 's'}, "
             f"{row.get('base_filters')} base filters, "
             f"{row.get('kernel_size')}x{row.get('kernel_size')} convs "
             f"({row.get('convs_per_stage')} per level"
             f"{', residual' if row.get('block') == 'residual' else ''}), "
             f"{str(row.get('downsampling')).replace('_', ' ')} down, {norm}, "
             f"{row.get('activation')}")
    if float(row.get("dropout") or 0) > 0:
        words += f", dropout {row.get('dropout')}"
    if row.get("deep_supervision") == "on":
        words += ", deep supervision"
    lr = row.get("learning_rate")
    optimizer = {"sgd_nesterov": "SGD (Nesterov 0.99)"}.get(str(row.get("optimizer")),
                                                            row.get("optimizer"))
    words += (f"; {str(row.get('loss')).replace('_', ' + ')} loss, {optimizer} "
              f"lr {float(lr):.1e}" if lr is not None else "")
    if row.get("lr_schedule") in ("cosine", "poly"):
        words += f" ({row.get('lr_schedule')})"
    return words


def network_brief(values: Mapping[str, Any]) -> str:
    """A trial's network in one short line (the search's console table)."""
    hp = values
    if hp.get("architecture") == "lab_fcn":
        return "lab FCN"
    return (f"depth {hp['depth']} x{hp['base_filters']} k{hp['kernel_size']} "
            f"{hp['decoder']} {hp['downsampling']} {hp['loss']} lr {hp['learning_rate']:.1e}"
            + (f" {hp['lr_schedule']}" if hp.get("lr_schedule") in ("cosine", "poly") else ""))


def chip_text(name: str, value: Any) -> str:
    """One hyperparameter's value, as short as the report's table shows it."""
    short = {"depth": "depth", "base_filters": "x", "kernel_size": "k",
             "convs_per_stage": "convs", "learning_rate": "lr", "dropout": "drop"}
    if name == "learning_rate":
        return f"lr {float(value):.1e}"
    if name == "base_filters":
        return f"x{value}"
    if name == "kernel_size":
        return f"k{value}"
    if name in short:
        return f"{short[name]} {value}"
    return str(value).replace("_", " ")
