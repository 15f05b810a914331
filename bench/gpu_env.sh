# Sourced by the GPU scripts: r1lab from this checkout on PYTHONPATH, quiet libraries, no hub, and the wheels of
# bench/gpu_wheels.sh (in .whl/, when taken along) installed into R1LAB_GPU_SITE (default /tmp/r1lab_site) for each
# module this Python lacks, so that a GPU image without math-verify or datasets still runs the recipes.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
site=${R1LAB_GPU_SITE:-/tmp/r1lab_site}
wheels=()
python3 -c "import math_verify" 2>/dev/null || wheels+=(.whl/math_verify-*.whl .whl/latex2sympy2_extended-*.whl
                                                       .whl/antlr4_python3_runtime-*.whl)
python3 -c "import datasets" 2>/dev/null || wheels+=(.whl/datasets-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  if ls "${wheels[@]}" >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "${wheels[@]}" && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_env: this Python lacks math-verify or datasets and .whl/ does not hold their wheels" \
         "(bash bench/gpu_wheels.sh where pip reaches PyPI, then take .whl/ along)" >&2
  fi
fi
case ":${PYTHONPATH:-}:" in *":$PWD:"*) ;; *) export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} ;; esac
