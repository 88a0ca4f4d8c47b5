"""Backward rules: which rule each conv, pool and dense op uses, per layer.

`grad=` is a rule name ("custom", "autodiff"), or a mapping from layer paths (or
glob patterns over them) to names; see `funcnn.rules.scope`.
"""

from funcnn.rules.scope import Scoped as Scoped
from funcnn.rules.scope import check_patterns as check_patterns
from funcnn.rules.scope import path_of as path_of
from funcnn.rules.scope import pick as pick
from funcnn.rules.scope import scope as scope
from funcnn.rules.scope import validate as validate
