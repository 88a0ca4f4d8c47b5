"""The research rules funcnn ships, registered by name: each `grad="<name>"`
is the rule's factory called with its defaults. B is what each conv and dense
layer's input delta flows through in place of W:

- "feedback_alignment", `feedback_alignment()`: B fixed and random;
- "sign_symmetry", `sign_symmetry()`: B = sign(W);
- "usf", `usf()`: B = s * sign(W), s the std of the layer's initializer;
- "brsf", `brsf()`: B = |R| * sign(W), R redrawn at every step;
- "frsf", `frsf()`: B = |B0| * sign(W), B0 fixed;
- "direct_feedback_alignment", `direct_feedback_alignment()`: each layer's
  input delta is a fixed random projection of the output error;
- "kolen_pollack", `kolen_pollack()`: B learns, receiving W's updates.
"""

from __future__ import annotations

from funcnn.ops.registry import register_library
from funcnn.rules.dfa import DirectFeedbackAlignment, direct_feedback_alignment
from funcnn.rules.feedback import FeedbackAlignment, draw_feedback, feedback_alignment
from funcnn.rules.kolen_pollack import KolenPollack, kolen_pollack
from funcnn.rules.sign import (
    BatchRandomSignFeedback,
    FixedRandomSignFeedback,
    SignSymmetry,
    UniformSignFeedback,
    brsf,
    frsf,
    sign_symmetry,
    usf,
)

__all__ = [
    "BatchRandomSignFeedback",
    "DirectFeedbackAlignment",
    "FeedbackAlignment",
    "FixedRandomSignFeedback",
    "KolenPollack",
    "SignSymmetry",
    "UniformSignFeedback",
    "brsf",
    "direct_feedback_alignment",
    "draw_feedback",
    "feedback_alignment",
    "frsf",
    "kolen_pollack",
    "sign_symmetry",
    "usf",
]

register_library("feedback_alignment", feedback_alignment())
register_library("sign_symmetry", sign_symmetry())
register_library("usf", usf())
register_library("brsf", brsf())
register_library("frsf", frsf())
register_library("direct_feedback_alignment", direct_feedback_alignment())
register_library("kolen_pollack", kolen_pollack())
