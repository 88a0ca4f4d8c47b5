"""Pure-function layers, the combinators that compose them, and models.

See `funcnn.nn.core` for the layer protocol. Imports only `funcnn.ops` (the ops a
layer runs) and `funcnn.rules` (which rule each layer's op runs).
"""

from funcnn.nn import models as models
from funcnn.nn.basic import Dense as Dense
from funcnn.nn.basic import Dropout as Dropout
from funcnn.nn.basic import Flatten as Flatten
from funcnn.nn.basic import LeakyRelu as LeakyRelu
from funcnn.nn.basic import Relu as Relu
from funcnn.nn.basic import Sigmoid as Sigmoid
from funcnn.nn.basic import Softmax as Softmax
from funcnn.nn.basic import Tanh as Tanh
from funcnn.nn.basic import elementwise as elementwise
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
from funcnn.nn.core import APPLY_KEYWORDS as APPLY_KEYWORDS
from funcnn.nn.core import Layer as Layer
from funcnn.nn.core import LayerInfo as LayerInfo
from funcnn.nn.core import he_normal as he_normal
from funcnn.nn.core import leaf_paths as leaf_paths
from funcnn.nn.core import walk as walk
from funcnn.nn.norm import BatchNorm as BatchNorm
from funcnn.nn.norm import BatchNormState as BatchNormState
from funcnn.nn.physical import Physical as Physical
from funcnn.nn.pool import AdaptiveAvgPool2D as AdaptiveAvgPool2D
from funcnn.nn.pool import AdaptiveMaxPool2D as AdaptiveMaxPool2D
from funcnn.nn.pool import AvgPool2D as AvgPool2D
from funcnn.nn.pool import GlobalAvgPool2D as GlobalAvgPool2D
from funcnn.nn.pool import MaxPool2D as MaxPool2D
from funcnn.nn.pool import MaxUnpool2D as MaxUnpool2D
from funcnn.nn.upsample import Upsample2D as Upsample2D
