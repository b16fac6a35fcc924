#!/usr/bin/env bash
# The GPU checks of issue 14, as one script (about 10 minutes of GPU time in all). Run from the repository root.
#
#   experiments/benchmarks/gpu_checks.sh prepare    # HERE, with network: the wheels the GPU machine lacks, into .whl/
#   experiments/benchmarks/gpu_checks.sh run [STEP...]   # THERE (no network), STEP in: setup tests bench cuda train
#                                                        # (default: all, in that order; setup always runs first)
#
# The GPU machine has PyTorch (CUDA), Triton and nvcc but not the project's other packages: `prepare` downloads
# hydra-core, omegaconf, antlr4, nibabel, nilearn and pysam as Python 3.12 manylinux wheels (the versions of this
# checkout's virtualenv) and the mamba-ssm / causal-conv1d sources into .whl/ (ignored by git; name it in the
# device tool's `carry`). Steps of `run`:
#   setup  wheels -> /tmp/site (PYTHONPATH), versions, nvidia-smi; starts the mamba-ssm build in the background
#          (TORCH_CUDA_ARCH_LIST = this GPU's arch only, MAX_JOBS=8, at most BUILD_S seconds, log under $OUT)
#   tests  python -m pytest -m gpu (the GPU tests only; the CPU suite runs in CI)
#   bench  bench_gpu.py: Caduceus-PS 131k, ssm_backend triton fp32/bf16 and torch -> results/gpu.{md,json}
#   cuda   waits for the build; when mamba_ssm imports, the same rows for ssm_backend=cuda (--append); else a note
#   train  python -m fusion.train trainer=gpu experiment=demo_caduceus trainer.max_epochs=1, then trainer=ddp
#          trainer.devices=1
# Everything is logged to $OUT (the device tool's output folder; experiments/benchmarks/results/gpu_logs without
# it) and the results files are copied there too. Each step has a timeout; a failing step does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RES=experiments/benchmarks/results
OUTDIR=${OUT:-$RES/gpu_logs}
BUILD_S=${BUILD_S:-270}
PY=${PYTHON:-python3}
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 nibabel==5.4.2 nilearn==0.14.1 pysam==0.24.1)
PURE_SDISTS=(antlr4-python3-runtime==4.9.3)  # no wheel published: built here (pure Python, any platform)
SOURCES=(mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0)

prepare() {
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" .whl/src
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
    $PY -m pip wheel -q --no-deps -w .whl "${PURE_SDISTS[@]}"
    # sources only (their metadata step imports torch; the *_SKIP_CUDA_BUILD switches keep it from needing nvcc)
    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
        $PY -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d .whl/src "${SOURCES[@]}" ||
        echo "mamba-ssm / causal-conv1d sources not downloaded: the cuda step will say so"
    du -sh .whl .whl/src
    echo "carry .whl (the device tool takes at most 64 MiB with the working tree; drop .whl/src if it is over)"
}

setup() {
    mkdir -p "$OUTDIR"
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site:$ROOT PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUTDIR/gpu.txt"
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))" | tee -a "$OUTDIR/gpu.txt"
    ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
    if ls .whl/src/*.tar.gz >/dev/null 2>&1; then
        (
            export TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=8 MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE
            timeout "$BUILD_S" nice -n 19 $PY -m pip install --no-index --no-deps --no-build-isolation --target /tmp/site \
                .whl/src/causal_conv1d-*.tar.gz .whl/src/mamba_ssm-*.tar.gz >"$OUTDIR/mamba_build.log" 2>&1
            echo "exit $?" >>"$OUTDIR/mamba_build.log"
        ) &
        BUILD_PID=$!
    else
        echo "no mamba-ssm / causal-conv1d sources in .whl/src (prepare did not fetch them)" >"$OUTDIR/mamba_build.log"
        BUILD_PID=
    fi
}

tests() {
    timeout 240 $PY -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUTDIR/pytest_gpu.log"
}

bench() {
    timeout 300 $PY experiments/benchmarks/bench_gpu.py --backends triton,torch --ref-cache /tmp/cpu_ref.pt 2>&1 | tee "$OUTDIR/bench.log"
    cp $RES/gpu.md $RES/gpu.json "$OUTDIR/" 2>/dev/null
}

cuda() {
    [ -n "${BUILD_PID:-}" ] && wait "$BUILD_PID"
    tail -3 "$OUTDIR/mamba_build.log"
    if $PY -c "import mamba_ssm.ops.selective_scan_interface" 2>>"$OUTDIR/mamba_build.log"; then
        timeout 240 $PY experiments/benchmarks/bench_gpu.py --backends cuda --append \
            --ref-cache /tmp/cpu_ref.pt 2>&1 | tee "$OUTDIR/bench_cuda.log"
    else
        local why
        why=$(grep -m1 -E "^exit|error" "$OUTDIR/mamba_build.log" | head -c 200)
        timeout 60 $PY - "$why" "$BUILD_S" <<'EOF'
import json, sys
from pathlib import Path
from experiments.benchmarks.bench_gpu import RESULTS, markdown
p = RESULTS / "gpu.json"
if p.is_file():
    r = json.loads(p.read_text())
    r["notes"].append(f"ssm_backend=cuda: mamba-ssm did not build within {sys.argv[2]} s for this GPU's "
                      f"architecture only ({sys.argv[1] or 'no sources carried'}); no cuda rows.")
    p.write_text(json.dumps(r, indent=1))
    (RESULTS / "gpu.md").write_text(markdown(r))
EOF
    fi
    cp $RES/gpu.md $RES/gpu.json "$OUTDIR/" 2>/dev/null
}

train() {
    local run=/tmp/gpu_train
    timeout 240 $PY -m fusion.train trainer=gpu experiment=demo_caduceus trainer.max_epochs=1 \
        hydra.run.dir=$run/gpu 2>&1 | tail -40 | tee "$OUTDIR/train_gpu.log"
    timeout 180 $PY -m fusion.train trainer=ddp trainer.devices=1 experiment=demo_caduceus trainer.max_epochs=1 \
        hydra.run.dir=$run/ddp 2>&1 | tail -40 | tee "$OUTDIR/train_ddp.log"
}

case "${1:-}" in
prepare) prepare ;;
run)
    shift
    steps=("$@")
    [ ${#steps[@]} -eq 0 ] && steps=(tests bench cuda train)
    setup
    for s in "${steps[@]}"; do
        echo "== $s $(date -u +%T)"
        "$s"
    done
    echo "== done $(date -u +%T)"
    ;;
*)
    sed -n 2,21p "$0"
    exit 2
    ;;
esac
