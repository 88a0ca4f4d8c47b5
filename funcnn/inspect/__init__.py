"""Seeing the backward pass: gradient checks, the backward trace and plots.

`funcnn.inspect.plots` (matplotlib) is imported on first use.
"""

from funcnn.inspect.gradcheck import GradcheckReport as GradcheckReport
from funcnn.inspect.gradcheck import LeafCheck as LeafCheck
from funcnn.inspect.gradcheck import gradcheck as gradcheck
from funcnn.inspect.trace import BackwardTrace as BackwardTrace
from funcnn.inspect.trace import LayerTrace as LayerTrace
from funcnn.inspect.trace import backward_trace as backward_trace
