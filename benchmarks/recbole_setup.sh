#!/usr/bin/env bash
# A separate venv with RecBole 1.2.1 (not a streamrec dependency) for the peer comparison.
# Usage: bash benchmarks/recbole_setup.sh [VENV_DIR]   (default .streamrec/recbole-venv)
set -euo pipefail
VENV=${1:-.streamrec/recbole-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q --no-deps recbole==1.2.1
"$VENV/bin/pip" install -q "numpy<2" "pandas<2.3" "scipy<1.14" colorlog==4.7.2 colorama==0.4.4 \
  tqdm scikit-learn pyyaml tensorboard thop tabulate plotly texttable psutil
# RecBole imports ray.tune for hyper-parameter search only; a stub keeps ray out.
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/ray"
echo "tune = None" > "$SITE/ray/__init__.py"
echo "RecBole ready in $VENV"
