#!/usr/bin/env bash
# The wheel as a new user gets it: build the sdist and the wheel, check them (twine, contents),
# install ONLY the wheel (never the source tree) into a clean venv in a temp dir, and use it from
# a folder outside the repository:
#   1. core install: `salign --help`, `--version` (= the wheel's version), `info`, `data fetch`;
#      a model trained by `salign train`, then the same weights as (a) a user-written model file
#      + a `torch.save`d state dict, (b) a `torch.export` archive (.pt2) of that user model and
#      (c) the salign checkpoint must give byte-identical `salign analyze` CSVs and
#      byte-identical `salign attack` CSVs (issue 19's first acceptance point);
#   2. a study without the report extra stops with a one-line error naming it; with the
#      report extra: a tiny study (`salign run`, 2 λ, 1 epoch on 1000 MNIST images).
#      a zoo study (`salign run` with a models list) of the three forms: identical eval CSVs.
# Fails (non-zero) on any difference. Run by .ci/run after `salign data fetch` (MNIST must be
# in the cache, ~/.cache/salign or $SALIGN_DATA). Every pip call runs under a constraints file:
# the build under constraints.txt, the clean venv under constraints-wheel-check.txt (torch
# 2.13.0, the lower end of our torch range; see that file).
#
#   bash scripts/wheel_check.sh            # PYTHON=.venv/bin/python (has build + twine: dev extra)
#   KEEP=1 bash scripts/wheel_check.sh     # keep the temp dir for a look
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BASE_PYTHON="${BASE_PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/salign-wheel-check.XXXXXX")"
if [[ "${KEEP:-0}" == 1 ]]; then echo "wheel-check: keeping $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=1 SALIGN_QUIET=1
unset PYTHONPATH
T0=$SECONDS
T=$SECONDS
step() { # step NAME: print how long the previous step took, then announce the next
  echo "wheel-check: ($((SECONDS - T)) s)"
  T=$SECONDS
  echo "wheel-check: == $1"
}
fail() { echo "wheel-check: FAILED: $*" >&2; exit 1; }

step "constraints-wheel-check.txt pins agree with requirements-lock.txt"
while read -r pin; do
  [[ -z "$pin" || "$pin" == \#* || "$pin" == torch==* ]] && continue
  grep -qixF "$pin" "$ROOT/requirements-lock.txt" || fail "$pin is not the pin in requirements-lock.txt"
done <"$ROOT/constraints-wheel-check.txt"

step "build the sdist and the wheel (python -m build; the wheel is built from the sdist)"
PIP_CONSTRAINT="$ROOT/constraints.txt" "$PYTHON" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log"; fail "python -m build"; }
WHEEL="$(ls "$WORK"/dist/*.whl)"
ls -l "$WORK"/dist
"$PYTHON" -m twine check --strict "$WORK"/dist/*

step "wheel contents: the package, its configs and py.typed; no tests, no data"
"$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["salign/__init__.py", "salign/cli.py", "salign/py.typed", "salign/configs/demo.yaml"]
missing = [n for n in need if n not in names]
foreign = [n for n in names if not (n.startswith("salign/") or ".dist-info/" in n)]
data = [n for n in names if n.endswith((".npz", ".safetensors", ".pt", ".pt2", ".pth", ".pkl", ".gz", ".png"))]
if missing or foreign or data:
    sys.exit(f"wheel-check: FAILED: missing {missing}, outside the package {foreign}, data files {data}")
print(f"{len(names)} files, {sum(n.endswith('.py') for n in names)} modules")
EOF
VERSION="$(basename "$WHEEL" | cut -d- -f2)"

step "clean venv with ONLY the wheel (core dependencies, torch 2.13.0 CPU)"
export PIP_CONSTRAINT="$ROOT/constraints-wheel-check.txt"
"$BASE_PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/pip" install -q "$WHEEL"
"$V/pip" check

USER_DIR="$WORK/user" # a user's folder, outside the repository
mkdir -p "$USER_DIR"
cd "$USER_DIR"

step "salign --help, --version, info, data fetch mnist (from $USER_DIR)"
where="$("$V/python" -c 'import salign; print(salign.__file__)')"
[[ "$where" == "$WORK/venv/"* ]] || fail "salign imported from $where, not from the clean venv"
"$V/salign" --help >help.txt
grep -q "analyze" help.txt || fail "salign --help lists no analyze command"
[[ "$("$V/salign" --version)" == "salign $VERSION" ]] || fail "salign --version says '$("$V/salign" --version)', the wheel is $VERSION"
"$V/salign" info
# the config behind `salign demo` ships inside the wheel and validates
"$V/python" -c 'from salign.experiments import load_config, packaged_config as p; print(load_config(p("demo")).name, p("demo"))'
"$V/salign" data fetch mnist

step "a study without the report extra: a one-line error naming the extra, before any training"
cat >tiny.yaml <<'EOF'
name: wheel-check
description: the wheel check's tiny study (SmallNet, 1000 MNIST images, 1 epoch, 2 lambdas)
seed: 0
num_threads: 1
dataset: {name: mnist, split: test}
model: {name: smallnet}
training:
  epochs: 1
  batch_size: 50
  optimizer: {name: adam, lr: 2.0e-3}
  schedule: {name: constant}
  regularizer: {method: double_backprop, target: loss, scaling: per_example}
  data: {train_subset: 1000, val_subset: 200}
  tensorboard: false
sweep: {lambdas: [0, 1], method: double_backprop}
evaluation: {n: 40, seed: 0, batch_size: 40, chunk_size: 40, gallery: 2}
attacks: {names: [ddn], budget: fast, steps: 20}
report: {n_bootstrap: 100}
EOF
status=0
"$V/salign" run tiny.yaml --out refused --quiet 2>refused.txt || status=$?
cat refused.txt
[[ $status == 2 && $(wc -l <refused.txt) == 1 && "$(cat refused.txt)" == "error: "*"saliency-alignment[report]"* && ! -d refused/models ]] \
  || fail "salign run without the report extra: status $status, $(wc -l <refused.txt) lines of stderr"

step "train a SmallNet with salign train (core install)"
cat >train.yaml <<'EOF'
model: {name: smallnet}
data: {name: mnist, train_split: train, val_split: test, train_subset: 1000, val_subset: 200}
optimizer: {name: adam, lr: 2.0e-3}
regularizer: {lambda: 0}
epochs: 1
batch_size: 50
seed: 0
device: cpu
EOF
"$V/salign" train train.yaml --out trained --quiet
CKPT="trained/checkpoint.safetensors"
[[ -f "$CKPT" ]] || fail "salign train wrote no $CKPT"

step "the same weights three ways: user file + torch.save'd state dict, .pt2 export, salign checkpoint"
cat >mynet.py <<'EOF'
"""A user's own model file: plain PyTorch, no salign (the layout of a 3-conv MNIST CNN)."""
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 3 * 3, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def make_model() -> nn.Module:
    return Net()
EOF
"$V/python" - "$CKPT" <<'EOF'
import sys

import torch

import mynet
import salign

# The weights the user has: a plain state dict saved with torch.save.
trained = salign.models.load(sys.argv[1])
torch.save(trained.state_dict(), "weights.pt")
# The user's model with those weights, exported with torch.export (dynamic batch).
net = mynet.make_model()
net.load_state_dict(torch.load("weights.pt", weights_only=True), strict=True)
net.eval()
x = torch.rand(2, 1, 28, 28)
batch = torch.export.Dim("batch")
torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)), "mynet.pt2")
print("wrote weights.pt and mynet.pt2")
EOF
declare -A SPEC=(
  [file]="--model mynet.py:make_model --weights weights.pt"
  [pt2]="--model mynet.pt2"
  [checkpoint]="--model $CKPT"
)
for form in file pt2 checkpoint; do
  # shellcheck disable=SC2086  # SPEC values are option lists
  "$V/salign" analyze ${SPEC[$form]} --data mnist --n 200 --out "analyze-$form.csv" --quiet
  # shellcheck disable=SC2086
  "$V/salign" attack ${SPEC[$form]} --data mnist --n 8 --attacks deepfool,ddn --budget fast --steps 30 \
    --out "attack-$form.csv" --quiet
done
for kind in analyze attack; do
  for form in file pt2; do
    cmp "$kind-$form.csv" "$kind-checkpoint.csv" || fail "salign $kind: $form and checkpoint CSVs differ"
  done
  echo "salign $kind: the three CSVs are byte-identical ($(($(wc -l <"$kind-checkpoint.csv") - 1)) rows)"
done

step "report extra and a tiny study (salign run: SmallNet, 2 λ, 1 epoch on 1000 images)"
"$V/pip" install -q "saliency-alignment[report] @ file://$WHEEL"
"$V/pip" check
"$V/salign" run tiny.yaml --out study --quiet >study.txt
cat study.txt
for f in study/report.html study/summary.csv study/eval/0.csv study/eval/1.csv; do
  [[ -s "$f" ]] || fail "the tiny study wrote no $f"
done
[[ "$(tail -1 study.txt)" == *report.html ]] || fail "salign run did not print the report path"

step "a zoo study of the three forms (salign run with a models list): identical evaluations"
cat >zoo.yaml <<ZOO
name: wheel-check-zoo
description: the same weights three ways, evaluated side by side
seed: 0
num_threads: 1
dataset: {name: mnist, split: test}
models:
  - {tag: file, spec: "mynet.py:make_model", weights: weights.pt}
  - {tag: pt2, spec: mynet.pt2}
  - {tag: checkpoint, spec: "$CKPT"}
evaluation: {n: 24, seed: 0, batch_size: 24, chunk_size: 24, gallery: 2}
attacks: {names: [deepfool, ddn], budget: fast, steps: 30}
report: {n_bootstrap: 100}
ZOO
"$V/salign" run zoo.yaml --out zoo --quiet >zoo.txt
for form in file pt2; do
  cmp "zoo/eval/$form.csv" "zoo/eval/checkpoint.csv" || fail "zoo study: $form and checkpoint rows differ"
done
grep -q "checkpoint" zoo/summary.csv || fail "zoo study: summary.csv lists no checkpoint row"
echo "zoo study: the three eval CSVs are byte-identical; report $(tail -1 zoo.txt)"

echo "wheel-check: ($((SECONDS - T)) s)"
echo "wheel-check: OK: $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB) in $((SECONDS - T0)) s"
