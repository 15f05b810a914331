#!/usr/bin/env bash
# Wheels of what the GPU scripts need beyond torch and transformers, for a GPU machine with no internet whose Python
# (3.12 here; PYTHON_VERSION to change) lacks them: math-verify (the math recipes' verifier) and datasets (CSV,
# parquet and hub data), with the dependencies such an image usually lacks. Run it where pip reaches PyPI, then take .whl/
# along to the GPU machine; bench/gpu_env.sh (sourced by the GPU scripts) installs from there what is missing.
#   bash bench/gpu_wheels.sh        # -> .whl/ (git ignores it)
set -eu
python=${PYTHON_VERSION:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl \
  math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls .whl
