"""Backward rules: which rule each conv, pool and dense op uses, per layer.

`grad=` (at an op, a layer, `model.apply`, `make_train_step`, `make_eval_step`) is
a rule name ("custom", "autodiff", "feedback_alignment", "sign_symmetry", or one
given to `register`), a rule value (a `Rule`, e.g. `feedback_alignment(seed=1)`),
or a mapping from layer paths or glob patterns to those (see
`funcnn.rules.scope`). A rule is a value: print it, hold it, pass it; nothing is
switched globally. `Rule` documents the protocol a user rule follows;
`angle` measures how far a rule's update is from the exact one (`funcnn.alignment`
uses it per layer). `forward_gradient` is a rule of another kind (a `StepRule`):
it replaces a train step's whole backward pass, so only `make_train_step` takes it.

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
from funcnn.rules import examples as examples
from funcnn.rules.angles import angle as angle
from funcnn.rules.builtin import FeedbackAlignment as FeedbackAlignment
from funcnn.rules.builtin import SignSymmetry as SignSymmetry
from funcnn.rules.builtin import draw_feedback as draw_feedback
from funcnn.rules.builtin import feedback_alignment as feedback_alignment
from funcnn.rules.builtin import sign_symmetry as sign_symmetry
from funcnn.rules.forward import ForwardGradient as ForwardGradient
from funcnn.rules.forward import forward_gradient as forward_gradient
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
