"""funcnn: a JIT-compiled functional CNN library on JAX with hand-written backward
rules for convolution and pooling."""

from funcnn import data as data
from funcnn import ops as ops
from funcnn.checkpoint import CheckpointManager as CheckpointManager
from funcnn.checkpoint import load_checkpoint as load_checkpoint
from funcnn.checkpoint import save_checkpoint as save_checkpoint
from funcnn.cluster import initialize_distributed as initialize_distributed
from funcnn.combinators import Add as Add
from funcnn.combinators import Concat as Concat
from funcnn.combinators import FanOut as FanOut
from funcnn.combinators import Identity as Identity
from funcnn.combinators import Split as Split
from funcnn.combinators import branches as branches
from funcnn.combinators import parallel as parallel
from funcnn.combinators import residual as residual
from funcnn.combinators import serial as serial
from funcnn.distributed import data_parallel as data_parallel
from funcnn.distributed import make_mesh as make_mesh
from funcnn.distributed import process_local_batch as process_local_batch
from funcnn.distributed import replicate as replicate
from funcnn.distributed import shard_batch as shard_batch
from funcnn.gradcheck import GradcheckReport as GradcheckReport
from funcnn.gradcheck import LeafCheck as LeafCheck
from funcnn.gradcheck import gradcheck as gradcheck
from funcnn.layers import AvgPool2D as AvgPool2D
from funcnn.layers import BatchNorm as BatchNorm
from funcnn.layers import Conv2D as Conv2D
from funcnn.layers import Dense as Dense
from funcnn.layers import Dropout as Dropout
from funcnn.layers import Flatten as Flatten
from funcnn.layers import GlobalAvgPool2D as GlobalAvgPool2D
from funcnn.layers import Layer as Layer
from funcnn.layers import LeakyRelu as LeakyRelu
from funcnn.layers import MaxPool2D as MaxPool2D
from funcnn.layers import Relu as Relu
from funcnn.layers import Sigmoid as Sigmoid
from funcnn.layers import Softmax as Softmax
from funcnn.layers import Tanh as Tanh
from funcnn.losses import accuracy as accuracy
from funcnn.losses import mse as mse
from funcnn.losses import softmax_cross_entropy as softmax_cross_entropy
from funcnn.models import lenet as lenet
from funcnn.models import vgg_small as vgg_small
from funcnn.ops import avg_pool2d as avg_pool2d
from funcnn.ops import conv2d as conv2d
from funcnn.ops import max_pool2d as max_pool2d
from funcnn.optim import learning_rate as learning_rate
from funcnn.optim import make_optimizer as make_optimizer
from funcnn.optim import make_schedule as make_schedule
from funcnn.train import TrainState as TrainState
from funcnn.train import create_train_state as create_train_state
from funcnn.train import evaluate as evaluate
from funcnn.train import make_eval_step as make_eval_step
from funcnn.train import make_train_step as make_train_step

__version__ = "0.1.0"
