"""prune_core: automatic head-aligned channel pruning for softmax and focused linear attention.

Usable alone (no Ray, Optuna or MLflow): ``make_prunable`` -> ``search_plan`` (``initialize``
-> ``search`` -> ``finalize``, one ``SearchConfig``) -> ``prune`` -> ``train`` (fine-tune) ->
``evaluate``. Importing the package
registers the FLatten models with timm.
"""

from prune_core import (
    models,  # noqa: F401  (registers timm models)
    widths,  # noqa: F401  (pc.widths: learned widths per layer, table + PNG)
)
from prune_core.attention import SoftmaxAttention
from prune_core.calibration import INIT_MODES, initialize, update_similarity
from prune_core.convert import make_prunable
from prune_core.deploy import export_onnx, onnx_opset
from prune_core.digits import digits_datasets
from prune_core.fashion_mnist import fashion_mnist_datasets
from prune_core.finalize import finalize
from prune_core.focused_linear_attention import FocusedLinearAttention
from prune_core.indicator import ChannelGate, GateMode
from prune_core.macs import MacModel, count_macs, count_params, default_input_size
from prune_core.mlp import PrunableMlp
from prune_core.prunable import PrunableModule, check_widths, prunable_modules
from prune_core.pruning_search import SearchConfig, search, search_plan
from prune_core.reweight import Reweight, set_reweight_trainable
from prune_core.surgery import (
    Plan,
    apply_plan,
    current_plan,
    load_pruned,
    magnitude_plan,
    prune,
    random_plan,
    save_pruned,
    uniform_keep,
)
from prune_core.training import TrainConfig, accuracy, evaluate, throughput, train

__all__ = [
    "INIT_MODES",
    "ChannelGate",
    "FocusedLinearAttention",
    "GateMode",
    "PrunableMlp",
    "PrunableModule",
    "MacModel",
    "Plan",
    "Reweight",
    "SearchConfig",
    "SoftmaxAttention",
    "TrainConfig",
    "accuracy",
    "apply_plan",
    "check_widths",
    "count_macs",
    "count_params",
    "current_plan",
    "default_input_size",
    "digits_datasets",
    "evaluate",
    "export_onnx",
    "onnx_opset",
    "fashion_mnist_datasets",
    "finalize",
    "prunable_modules",
    "initialize",
    "load_pruned",
    "magnitude_plan",
    "make_prunable",
    "prune",
    "random_plan",
    "save_pruned",
    "search",
    "search_plan",
    "set_reweight_trainable",
    "throughput",
    "train",
    "uniform_keep",
    "update_similarity",
]
