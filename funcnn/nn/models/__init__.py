"""Ready-made networks built from funcnn layers, as models and as layer lists."""

from funcnn.nn.models.classic import lenet as lenet
from funcnn.nn.models.classic import lenet_layers as lenet_layers
from funcnn.nn.models.classic import vgg_small as vgg_small
from funcnn.nn.models.classic import vgg_small_layers as vgg_small_layers
