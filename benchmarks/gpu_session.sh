#!/usr/bin/env bash
# The GPU measurements of issue 13, in parts that each fit one 10-minute call on the lent GPU
# machine. Set up the machine first as ../shared/gpu/README.md says (make test here, then
# ../shared/gpu/make_bundle.sh, then run 1 with .gpu-a sent along), then, with .gpu-b sent along:
#
#   source .gpu-b/on_device.sh && [ $GPU_SITE_READY = 1 ] && benchmarks/gpu_session.sh PART
#
# PART, in the order worth running (each prints its tables and copies them to $OUT):
#   check    nvidia-smi, then every test module with CUDA-only tests (GPU vs CPU within one
#            level, nvJPEG vs libjpeg within the JPEG tolerance, the device read path, the
#            engine and Dask bands on CUDA), found by grep so the list never goes stale
#   demo     throughput.py's device section, demo architecture: forward, reduced outputs,
#            decode limit with 1-16 decoders, the pipeline end to end with GPU busy %, the
#            ratio, and --read-device gpu vs cpu
#   r50      the same for resnet50 + DeepLabV3+ r50 (random weights, made on the machine)
#   decode   decode limit: GPU JPEG decoding vs 1-16 decoder processes vs 1-16 reader threads
#            in one process (whether threads feed a GPU as processes do decides the decoder
#            processes' design: benchmarks/RESULTS.md, "Reader threads against decoder processes")
#   split    decoder processes against writer threads: wsi-segment end to end at each split
#   startup  prepare -> first batch on CUDA, and the engine writer's thread scaling
#   runtimes issue 33's GPU runtimes: the torch path against torch.compile (3 modes) and
#            TensorRT where torch-tensorrt imports, tiles/s and agreement on real tiles
# The bank slide (30720 px) is written once into $WORK and reused while the machine is up.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:?usage: benchmarks/gpu_session.sh check|demo|r50|decode|split|startup|runtimes}
PY=${PY:-python3}
WORK=${WORK:-/tmp/wsi-gpu}
OUT=${OUT:-gpu-out}
SIZE=${SIZE:-30720}
DECODERS=${DECODERS:-1,4,8,16}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the commands on a machine without a GPU
mkdir -p "$OUT" "$WORK"
log="$OUT/$PART.md"
cuda_test_files() { # the test modules that skip without CUDA, found by their skip's words
  grep -rlE --include='test_*.py' 'needs a CUDA device|torch\.cuda\.is_available\(\)' tests | sort
}
device_section() { # extra arguments for throughput.py
  $PY benchmarks/throughput.py --only device --device "$DEVICE" --size "$SIZE" --fast \
    --batch-size 64 --threads 16 --decoders "$DECODERS" --work "$WORK" --no-record "$@"
}
{
  echo "# gpu_session.sh $PART, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  case $PART in
    check)
      nvidia-smi -L || true
      # every test module with a test only a CUDA device runs (`cuda_test_files`)
      mapfile -t files < <(cuda_test_files)
      # PYTEST_ARGS: e.g. "-n 8 --timeout 150" where pytest-xdist and pytest-timeout are installed
      $PY -m pytest -q -p no:cacheprovider -rsfE --tb=short ${PYTEST_ARGS:-} "${files[@]}"
      ;;
    demo) device_section ;;
    r50)
      $PY benchmarks/make_model.py r50 "$WORK/models/r50"
      device_section --model "$WORK/models/r50" --read-devices ""
      ;;
    decode)
      $PY benchmarks/decode.py --size "$SIZE" --modes device,processes,threads --decoders 1,8,16 \
        --model-mpp 0.5 --device "$DEVICE" --work "$WORK" --no-record
      # the demo model's 1 um/px: resampled by 2, with torch's kernel in a thread of the
      # model's process, with PIL's in a decoder process (it never imports torch)
      $PY benchmarks/decode.py --size "$SIZE" --modes processes,threads --decoders 1,8,16 \
        --work "$WORK" --no-record
      ;;
    split)
      # decoder processes against writer threads: end to end at each split, rounds interleaved
      $PY benchmarks/split.py --size "$SIZE" --device "$DEVICE" --splits "${SPLITS:-auto,15:1,8:8}" \
        --work "$WORK" --no-record
      ;;
    startup)
      $PY benchmarks/startup.py --size "$SIZE" --device "$DEVICE" --decoders "${STARTUP_DECODERS:-15}" --work "$WORK" --no-record
      $PY benchmarks/writer.py --size "$SIZE" --threads 1,2,4,8 --work "$WORK" --no-record
      ;;
    runtimes)
      $PY benchmarks/gpu_runtimes.py --device "$DEVICE" --no-record
      ;;
    *) echo "unknown part $PART" >&2; exit 2 ;;
  esac
} 2>&1 | tee "$log"
