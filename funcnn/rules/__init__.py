"""Backward rules: which rule each conv, pool and dense op uses, per layer.

`grad=` (at an op, a layer, `model.apply`, `make_train_step`, `make_eval_step`,
`funcnn.backward_trace`, `funcnn.alignment`) is a rule name ("custom",
"autodiff", one of the research rules listed in `funcnn.rules.builtin`, or one
given to `register`), a rule value (a `Rule`, e.g. `feedback_alignment(seed=1)`),
or a mapping from layer paths or glob patterns to those (see
`funcnn.rules.scope`). A rule is a value: print it, hold it, pass it; nothing is
switched globally. `Rule` documents the protocol a user rule follows;
`angle` measures how far a rule's update is from the exact one (`funcnn.alignment`
uses it per layer). `forward_gradient` is a rule of another kind (a `StepRule`):
it replaces a train step's whole backward pass, so only `make_train_step` takes it.

Rules that need the train step's context get it as values: `bind(grad,
step=..., feedback=...)` gives brSF the step whose B it draws and Kolen-Pollack
the train state's learned B (`init_feedback` makes them, `check_feedback`
checks a state against a model); direct feedback alignment's output error is
routed by the model's outermost combinator (`funcnn.nn.output_error`).
`feedback_weights` shows the B of every layer under any of them.

Imports go one way: `funcnn.ops` below, nothing of `funcnn.nn`, `funcnn.training`
or `funcnn.inspect`. A model is read through its `children` and `LayerInfo`
(`funcnn.rules.model`).
"""

from funcnn.ops.registry import names as names
from funcnn.ops.registry import register as register
from funcnn.ops.registry import registered as registered
from funcnn.ops.registry import step_names as step_names
from funcnn.ops.registry import step_rule as step_rule
from funcnn.ops.rule import RULED_OPS as RULED_OPS
from funcnn.ops.rule import Rule as Rule
from funcnn.ops.rule import StepRule as StepRule
from funcnn.ops.rule import Window as Window
from funcnn.rules import dfa as dfa
from funcnn.rules import examples as examples
from funcnn.rules.angles import angle as angle
from funcnn.rules.builtin import BatchRandomSignFeedback as BatchRandomSignFeedback
from funcnn.rules.builtin import DirectFeedbackAlignment as DirectFeedbackAlignment
from funcnn.rules.builtin import FeedbackAlignment as FeedbackAlignment
from funcnn.rules.builtin import FixedRandomSignFeedback as FixedRandomSignFeedback
from funcnn.rules.builtin import KolenPollack as KolenPollack
from funcnn.rules.builtin import SignSymmetry as SignSymmetry
from funcnn.rules.builtin import UniformSignFeedback as UniformSignFeedback
from funcnn.rules.builtin import brsf as brsf
from funcnn.rules.builtin import direct_feedback_alignment as direct_feedback_alignment
from funcnn.rules.builtin import draw_feedback as draw_feedback
from funcnn.rules.builtin import feedback_alignment as feedback_alignment
from funcnn.rules.builtin import frsf as frsf
from funcnn.rules.builtin import kolen_pollack as kolen_pollack
from funcnn.rules.builtin import sign_symmetry as sign_symmetry
from funcnn.rules.builtin import usf as usf
from funcnn.rules.forward import ForwardGradient as ForwardGradient
from funcnn.rules.forward import forward_gradient as forward_gradient
from funcnn.rules.kolen_pollack import check_feedback as check_feedback
from funcnn.rules.kolen_pollack import init_feedback as init_feedback
from funcnn.rules.layers import bind as bind
from funcnn.rules.layers import check_model as check_model
from funcnn.rules.layers import feedback_weights as feedback_weights
from funcnn.rules.layers import layer_rule as layer_rule
from funcnn.rules.layers import validate as validate
from funcnn.rules.model import LayerInfo as LayerInfo
from funcnn.rules.model import walk as walk
from funcnn.rules.scope import Scoped as Scoped
from funcnn.rules.scope import check_patterns as check_patterns
from funcnn.rules.scope import path_of as path_of
from funcnn.rules.scope import pick as pick
from funcnn.rules.scope import scope as scope

# Names that left this package when its imports were made one-way: each now sits
# above `funcnn.rules`, in the package that uses it, so a re-export here would
# import upwards. Asking for one says where it went.
_MOVED = {
    "alignment": "funcnn.inspect.alignment (also funcnn.alignment)",
    "LayerAlignment": "funcnn.inspect.LayerAlignment (also funcnn.LayerAlignment)",
    "alignment_metrics": "funcnn.training.layer_metrics.alignment_metrics",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(
            f"funcnn.rules.{name} moved to {_MOVED[name]}: funcnn.rules imports "
            "nothing above it (docs/guides/architecture.md)."
        )
    raise AttributeError(f"module 'funcnn.rules' has no attribute {name!r}")
