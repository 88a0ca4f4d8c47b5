"""Seeing the backward pass: gradient checks and plots.

`funcnn.inspect.plots` (matplotlib) is imported on first use.
"""

from funcnn.inspect.gradcheck import GradcheckReport as GradcheckReport
from funcnn.inspect.gradcheck import LeafCheck as LeafCheck
from funcnn.inspect.gradcheck import gradcheck as gradcheck
