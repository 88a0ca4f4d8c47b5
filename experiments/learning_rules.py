"""The learning-rules lab: backprop and every registered rule, side by side.

    python experiments/learning_rules.py                     # digits and mnist5k
    python experiments/learning_rules.py --quick --out-dir /tmp/lab   # smoke run
    python experiments/learning_rules.py --dataset cifar10 --data-dir DIR  # GPU

For each task (digits: the main job's LeNet on the 8x8 digits; mnist5k: LeNet-5
on 4,000 real 28x28 MNIST digits; cifar10: ResNet-20, BioTorch's CIFAR-10
column) and each rule ("backprop", every research rule in `funcnn.rules.names()`
and the whole-step rules of `funcnn.rules.step_names()`, forward gradients), the
sweep trains the candidate optimizers and peak rates (SGD with momentum 0.9 at
0.01, 0.003 and 0.001 by default, cosine schedule; forward gradients also Adam
at 3e-3, and sign symmetry too) on a stratified validation split of the
training set, chooses the best by validation accuracy, and trains the chosen one
with every seed on the whole training set, evaluating the test set after each
epoch. The entry "forward_gradient_5x" trains forward gradients again for 5
times the epochs, at the rate chosen for "forward_gradient" (any "<rule>_<k>x"
works alike); backprop, feedback alignment and DFA run again at 3x, since random
feedback aligns slowly in the convs.
On mnist5k, Kolen-Pollack trains with its own weight decay (its B aligns with W
through the decay alone; `lab.tasks.RULE_WEIGHT_DECAY`). It writes, into
--out-dir: results.md and results.json (test error mean ± std, seconds per
epoch, the chosen rate, and per layer the final angles of the rule's gradient
and delta to the exact ones, and W-B angles where the rule logs them),
accuracy.png and alignment.png. Each run has its own directory
(<dataset>/<select|final>/<rule>/...); running the same command again skips the
finished runs and resumes a stopped one. See the `lab` package (experiments/lab).
"""

from __future__ import annotations

import sys

from lab.cli import main  # experiments/lab, beside this script (on sys.path)

if __name__ == "__main__":
    sys.exit(main())
