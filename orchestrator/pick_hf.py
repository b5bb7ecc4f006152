"""A picked trial of an hf sweep (``model.source: hf``), as read back from MLflow.

The sweep's parent run keeps the checkpoint's transformers config (``hf_config.json``,
``hf_model.CONFIG_ARTIFACT``, logged when the sweep starts); the picked model is rebuilt from
it with ``AutoModelForImageClassification.from_config``: nothing is downloaded and no name
read back (``model.name`` is a folder or hub id of the sweep's machine) becomes a path. The
export folder holds it as ``config.json`` (what ``save_pretrained`` would name it, so
``AutoConfig.from_pretrained(<export folder>)`` reads it too), and ``model.json`` says so.

What MLflow returns is untrusted (as for timm in ``pick_export.check_arch``), so the config
must be a JSON mapping of plain values for an image classifier transformers itself defines:
no ``auto_map`` (remote code), not ``timm_wrapper`` (a timm model named by the config: the
timm path is ``source: timm``), float32 weights (the sweep's), and as many labels as
``model.num_classes``. Each refusal is one line (``report.Refused``) naming the field.
"""

from __future__ import annotations

import json
import re

from orchestrator.report import Refused

CONFIG_FILE = "config.json"  # in the export folder, beside model.json
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")  # model.kwargs.attn_implementation read back
MAX_CONFIG_CHARS = 1_000_000  # a config.json is a few kB; anything this long is not one
# keys that would run code, load other weights or change the weights' type: refused
REFUSED_KEYS = {
    "auto_map": "code from outside transformers (remote code)",
    "quantization_config": "quantized weights (the sweep's are float32)",
    "torch_dtype": "a weight type (the sweep's are float32)",
}
NO_FILE_TYPES = {"timm_wrapper"}  # image classifiers that build another library's model


def _plain(value, depth: int = 0) -> bool:
    """JSON scalars, lists and string-keyed mappings, at most 8 levels deep."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth >= 8:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def check_config(config, num_classes: int) -> dict:
    """The transformers config read back (``hf_config.json``), checked (module doc); returns
    it as a new dict. Refused (one line, ``hf_config.json: <field> ...``) otherwise."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS,
    )

    if not isinstance(config, dict) or not _plain(config):
        raise Refused("hf_config.json: not a JSON mapping of plain values")
    if len(json.dumps(config)) > MAX_CONFIG_CHARS:
        raise Refused(f"hf_config.json: longer than {MAX_CONFIG_CHARS:,} characters")
    kind = config.get("model_type")
    if not isinstance(kind, str) or kind not in CLASSIFIERS or kind in NO_FILE_TYPES:
        raise Refused(
            f"hf_config.json: model_type {str(kind)[:40]!r} is not an image classifier "
            "transformers defines"
        )
    for key, why in REFUSED_KEYS.items():
        if config.get(key) is not None:
            raise Refused(f"hf_config.json: {key} is not accepted: {why}")
    if config.get("dtype") not in (None, "float32"):
        raise Refused(f"hf_config.json: dtype {str(config['dtype'])[:20]!r} is not float32")
    labels = config.get("id2label")
    count = len(labels) if isinstance(labels, dict) else config.get("num_labels")
    if count != num_classes:
        raise Refused(
            f"hf_config.json: {str(count)[:20]} labels, but model.num_classes is {num_classes}"
        )
    channels = config.get("num_channels", 3)
    if type(channels) is not int or not 1 <= channels <= 16:
        raise Refused(f"hf_config.json: num_channels {str(channels)[:20]!r} is out of range")
    return json.loads(json.dumps(config))


def check_kwargs(kwargs) -> dict:
    """``model.kwargs`` of an hf sweep read back: only ``attn_implementation``, eager or sdpa
    (what ``hf_model.ALLOWED_KWARGS`` lets a sweep pass to ``from_config``)."""
    if not isinstance(kwargs, dict):
        raise Refused("config.json: model.kwargs is not a mapping")
    for key, value in kwargs.items():
        if key != "attn_implementation" or value not in ATTN_IMPLEMENTATIONS:
            raise Refused(f"config.json: model.kwargs.{str(key)[:40]} is not accepted")
    return dict(kwargs)


def arch(name, num_classes: int, img_size: int, kwargs) -> dict:
    """model.json of an hf model: ``name`` as text only (the model card's; never opened)."""
    if not isinstance(name, str) or not 0 < len(name) <= 200 or re.search(r"[\r\n`|]", name):
        raise Refused(f"config.json: model.name {str(name)[:40]!r} is not a name")
    return {
        "source": "hf",
        "name": name,
        "num_classes": num_classes,
        "img_size": img_size,
        "kwargs": check_kwargs(kwargs),
        "config": CONFIG_FILE,
    }


def channels(config: dict) -> int:
    """Input channels of the checked config (``num_channels``, transformers' default 3)."""
    return config.get("num_channels", 3)
