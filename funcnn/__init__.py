"""funcnn: a JIT-compiled functional CNN library on JAX with hand-written backward
rules for convolution, pooling and dense layers.

The package is layered: `funcnn.ops` (the ops and their backward rules) ->
`funcnn.rules` (which rule each layer uses) -> `funcnn.nn` (layers, combinators,
models) -> `funcnn.training` (steps, optimizers, losses, checkpoints, `fit`) ->
`funcnn.inspect` (gradient checks, the backward trace, plots). `funcnn.data` loads
data sets and `funcnn.distributed` scales out on JAX's own runtime. The names below
are the public API; the checkpoint and scale-out ones load safetensors and
jax.distributed only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from funcnn import data as data
from funcnn import nn as nn
from funcnn import ops as ops
from funcnn import rules as rules
from funcnn.inspect.align import LayerAlignment as LayerAlignment
from funcnn.inspect.align import alignment as alignment
from funcnn.inspect.gradcheck import GradcheckReport as GradcheckReport
from funcnn.inspect.gradcheck import LeafCheck as LeafCheck
from funcnn.inspect.gradcheck import gradcheck as gradcheck
from funcnn.inspect.trace import BackwardTrace as BackwardTrace
from funcnn.inspect.trace import LayerTrace as LayerTrace
from funcnn.inspect.trace import backward_trace as backward_trace
from funcnn.nn import models as models
from funcnn.nn.basic import Dense as Dense
from funcnn.nn.basic import Dropout as Dropout
from funcnn.nn.basic import Flatten as Flatten
from funcnn.nn.basic import LeakyRelu as LeakyRelu
from funcnn.nn.basic import Relu as Relu
from funcnn.nn.basic import Sigmoid as Sigmoid
from funcnn.nn.basic import Softmax as Softmax
from funcnn.nn.basic import Tanh as Tanh
from funcnn.nn.combinators import Add as Add
from funcnn.nn.combinators import Concat as Concat
from funcnn.nn.combinators import FanOut as FanOut
from funcnn.nn.combinators import Identity as Identity
from funcnn.nn.combinators import Split as Split
from funcnn.nn.combinators import branches as branches
from funcnn.nn.combinators import parallel as parallel
from funcnn.nn.combinators import residual as residual
from funcnn.nn.combinators import serial as serial
from funcnn.nn.conv import Conv2D as Conv2D
from funcnn.nn.conv import ConvTranspose2D as ConvTranspose2D
from funcnn.nn.core import Layer as Layer
from funcnn.nn.core import leaf_paths as leaf_paths
from funcnn.nn.models import lenet as lenet
from funcnn.nn.models import lenet5 as lenet5
from funcnn.nn.models import lenet5_layers as lenet5_layers
from funcnn.nn.models import lenet_layers as lenet_layers
from funcnn.nn.models import mobilenet_v1 as mobilenet_v1
from funcnn.nn.models import resnet18 as resnet18
from funcnn.nn.models import resnet20 as resnet20
from funcnn.nn.models import unet_small as unet_small
from funcnn.nn.models import vgg_small as vgg_small
from funcnn.nn.models import vgg_small_layers as vgg_small_layers
from funcnn.nn.norm import BatchNorm as BatchNorm
from funcnn.nn.physical import Physical as Physical
from funcnn.nn.pool import AdaptiveAvgPool2D as AdaptiveAvgPool2D
from funcnn.nn.pool import AdaptiveMaxPool2D as AdaptiveMaxPool2D
from funcnn.nn.pool import AvgPool2D as AvgPool2D
from funcnn.nn.pool import GlobalAvgPool2D as GlobalAvgPool2D
from funcnn.nn.pool import MaxPool2D as MaxPool2D
from funcnn.nn.pool import MaxUnpool2D as MaxUnpool2D
from funcnn.nn.upsample import Upsample2D as Upsample2D
from funcnn.ops import adaptive_avg_pool2d as adaptive_avg_pool2d
from funcnn.ops import adaptive_max_pool2d as adaptive_max_pool2d
from funcnn.ops import avg_pool2d as avg_pool2d
from funcnn.ops import conv2d as conv2d
from funcnn.ops import conv_transpose2d as conv_transpose2d
from funcnn.ops import dense as dense
from funcnn.ops import max_pool2d as max_pool2d
from funcnn.ops import max_unpool2d as max_unpool2d
from funcnn.ops import upsample2d as upsample2d
from funcnn.training.losses import accuracy as accuracy
from funcnn.training.losses import mse as mse
from funcnn.training.losses import softmax_cross_entropy as softmax_cross_entropy
from funcnn.training.optim import learning_rate as learning_rate
from funcnn.training.optim import make_optimizer as make_optimizer
from funcnn.training.optim import make_schedule as make_schedule
from funcnn.training.run import FitSummary as FitSummary
from funcnn.training.run import SignalStop as SignalStop
from funcnn.training.run import fit as fit
from funcnn.training.step import TrainState as TrainState
from funcnn.training.step import create_train_state as create_train_state
from funcnn.training.step import evaluate as evaluate
from funcnn.training.step import make_eval_step as make_eval_step
from funcnn.training.step import make_train_step as make_train_step

# Public names whose modules load heavier dependencies (safetensors, the
# multi-process runtime), imported on first attribute access.
_LAZY = {
    "CheckpointManager": "funcnn.training.checkpoint",
    "load_checkpoint": "funcnn.training.checkpoint",
    "save_checkpoint": "funcnn.training.checkpoint",
    "initialize_distributed": "funcnn.distributed",
    "data_parallel": "funcnn.distributed",
    "make_mesh": "funcnn.distributed",
    "process_local_batch": "funcnn.distributed",
    "replicate": "funcnn.distributed",
    "shard_batch": "funcnn.distributed",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports
    from funcnn.distributed import data_parallel as data_parallel
    from funcnn.distributed import initialize_distributed as initialize_distributed
    from funcnn.distributed import make_mesh as make_mesh
    from funcnn.distributed import process_local_batch as process_local_batch
    from funcnn.distributed import replicate as replicate
    from funcnn.distributed import shard_batch as shard_batch
    from funcnn.training.checkpoint import CheckpointManager as CheckpointManager
    from funcnn.training.checkpoint import load_checkpoint as load_checkpoint
    from funcnn.training.checkpoint import save_checkpoint as save_checkpoint


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'funcnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.2.0"
