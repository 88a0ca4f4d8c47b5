"""Ready-made networks built from funcnn layers, as models and as layer lists.

- `classic`: `lenet`, `lenet5` (BioTorch's MNIST LeNet-5), `vgg_small`;
- `resnet`: `resnet20` (the CIFAR ResNet of He et al. 2016), `resnet18`
  (torchvision's);
- `mobilenet`: `mobilenet_v1`;
- `unet`: `unet_small`.

Every model takes `layout="NCHW"` or `"NHWC"`, with the same parameters in both.
"""

from funcnn.nn.models.classic import lenet as lenet
from funcnn.nn.models.classic import lenet5 as lenet5
from funcnn.nn.models.classic import lenet5_layers as lenet5_layers
from funcnn.nn.models.classic import lenet_layers as lenet_layers
from funcnn.nn.models.classic import vgg_small as vgg_small
from funcnn.nn.models.classic import vgg_small_layers as vgg_small_layers
from funcnn.nn.models.mobilenet import mobilenet_v1 as mobilenet_v1
from funcnn.nn.models.mobilenet import mobilenet_v1_layers as mobilenet_v1_layers
from funcnn.nn.models.resnet import ShortcutA as ShortcutA
from funcnn.nn.models.resnet import resnet18 as resnet18
from funcnn.nn.models.resnet import resnet18_layers as resnet18_layers
from funcnn.nn.models.resnet import resnet20 as resnet20
from funcnn.nn.models.resnet import resnet20_layers as resnet20_layers
from funcnn.nn.models.unet import unet_small as unet_small
from funcnn.nn.models.unet import unet_small_layers as unet_small_layers
