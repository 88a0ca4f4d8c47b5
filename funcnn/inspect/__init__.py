"""Seeing the backward pass: gradient checks, the backward trace, how far a rule
is from the true gradient (`alignment`) and plots. The top layer: it may import
everything below it (ops, rules, nn, training); nothing imports it but the
package root and the scripts.

`funcnn.inspect.plots` (matplotlib) is imported on first use.
"""

from funcnn.inspect.align import LayerAlignment as LayerAlignment
from funcnn.inspect.align import alignment as alignment
from funcnn.inspect.gradcheck import GradcheckReport as GradcheckReport
from funcnn.inspect.gradcheck import LeafCheck as LeafCheck
from funcnn.inspect.gradcheck import gradcheck as gradcheck
from funcnn.inspect.trace import BackwardTrace as BackwardTrace
from funcnn.inspect.trace import LayerTrace as LayerTrace
from funcnn.inspect.trace import backward_trace as backward_trace
