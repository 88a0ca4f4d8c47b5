"""The learning-rules lab behind experiments/learning_rules.py.

Backprop and every research rule funcnn registers (forward gradients too, also
at 5 times the steps), trained on the same tasks with the rate of each rule
chosen on a validation split of the training set, a few seeds each, written up
as results.md, results.json, accuracy.png and alignment.png.

Modules: `tasks` (data sets, models and their settings), `optimizer` (SGD with
the learning rate in the optimizer state, so that one compiled step serves every
candidate rate), `runs` (one training run through `funcnn.fit`, its record, and
the compiled steps it shares), `sweep` (selection, then the seeds; progress and
resume), `report` (results.md and results.json), `plots` and `cli`.
"""
