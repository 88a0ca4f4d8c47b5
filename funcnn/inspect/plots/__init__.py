"""PNG plots: of a training run (`run`: curves, filters, feature maps), of the
backward pass (`backward`: deltas, gradient flow), and `run_plots`, the hook that
draws them all into a run directory for `fit`. matplotlib loads on import."""

from funcnn.inspect.plots.backward import plot_deltas as plot_deltas
from funcnn.inspect.plots.backward import plot_grad_flow as plot_grad_flow
from funcnn.inspect.plots.hook import run_plots as run_plots
from funcnn.inspect.plots.run import FEATURE_LAYERS as FEATURE_LAYERS
from funcnn.inspect.plots.run import layer_outputs as layer_outputs
from funcnn.inspect.plots.run import plot_curves as plot_curves
from funcnn.inspect.plots.run import plot_feature_maps as plot_feature_maps
from funcnn.inspect.plots.run import plot_filters as plot_filters
