"""Training: the train and eval steps, optimizers, losses, checkpoints and the
run loop (`fit`, in `funcnn.training.run`). Imports the layers below it (ops,
rules, nn) and the scale-out runtime (`funcnn.distributed`), never
`funcnn.inspect`: the run loop's pictures reach `fit` as a plot hook.

`funcnn.training.checkpoint` (safetensors) is imported on first use.
"""

from funcnn.training.losses import accuracy as accuracy
from funcnn.training.losses import mse as mse
from funcnn.training.losses import softmax_cross_entropy as softmax_cross_entropy
from funcnn.training.optim import learning_rate as learning_rate
from funcnn.training.optim import make_optimizer as make_optimizer
from funcnn.training.optim import make_schedule as make_schedule
from funcnn.training.run import FitSummary as FitSummary
from funcnn.training.run import RunDir as RunDir
from funcnn.training.run import SignalStop as SignalStop
from funcnn.training.run import data_fingerprint as data_fingerprint
from funcnn.training.run import fit as fit
from funcnn.training.step import TrainState as TrainState
from funcnn.training.step import create_train_state as create_train_state
from funcnn.training.step import evaluate as evaluate
from funcnn.training.step import make_eval_step as make_eval_step
from funcnn.training.step import make_train_step as make_train_step
