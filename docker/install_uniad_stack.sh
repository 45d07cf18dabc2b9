#!/usr/bin/env bash
# Install UniAD's training stack into a venv:  install_uniad_stack.sh RECIPE VENV
#   uniad-v2   UniAD v2.0: torch 2.0.1+cu118, mmcv-full 1.6.1, mmdet 2.26.0, mmsegmentation 0.29.1, mmdet3d 1.0.0rc6
#   uniad-trt  NVIDIA DL4AGX uniad-trt training recipe: torch 1.12.1 (cu116 wheels, CUDA 11.8 toolkit), same
#              OpenMMLab versions as uniad-v2
# mmcv-full is compiled here with its CUDA ops (FORCE_CUDA: no GPU is visible during `docker build`).
set -euo pipefail
RECIPE=$1
VENV=$2
case "$RECIPE" in
  uniad-v2)
    TORCH=(torch==2.0.1+cu118 torchvision==0.15.2+cu118)
    INDEX=https://download.pytorch.org/whl/cu118
    ARCHS="7.0;8.0;8.6;9.0" ;;
  uniad-trt)
    TORCH=(torch==1.12.1+cu116 torchvision==0.13.1+cu116)
    INDEX=https://download.pytorch.org/whl/cu116
    ARCHS="7.0;8.0;8.6" ;;
  *)
    echo "unknown RECIPE '$RECIPE': use uniad-v2 or uniad-trt" >&2
    exit 2 ;;
esac
PIP=("$VENV/bin/pip" install --no-cache-dir)
"${PIP[@]}" "setuptools<70" wheel ninja "numpy<1.24"
"${PIP[@]}" --extra-index-url "$INDEX" "${TORCH[@]}"
TORCH_CUDA_ARCH_LIST=$ARCHS FORCE_CUDA=1 MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-8} \
  "${PIP[@]}" --no-build-isolation mmcv-full==1.6.1
"${PIP[@]}" mmdet==2.26.0 mmsegmentation==0.29.1
TORCH_CUDA_ARCH_LIST=$ARCHS FORCE_CUDA=1 "${PIP[@]}" --no-build-isolation mmdet3d==1.0.0rc6
"$VENV/bin/python" -c "import torch, mmcv, mmdet, mmseg, mmdet3d; print('UniAD stack:', torch.__version__, \
mmcv.__version__, mmdet.__version__, mmseg.__version__, mmdet3d.__version__)"
