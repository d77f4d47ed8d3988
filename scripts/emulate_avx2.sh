#!/usr/bin/env bash
# Run a command as if this CPU had AVX2 and nothing newer (issue #37: the suite and the demo must be fast on the
# AVX2-only machines CI gets, and a session is not always lent one).
#
#   sudo scripts/emulate_avx2.sh make test          # or any command; needs root for the mount namespace
#
# What it does, in a private mount namespace so that nothing outside changes:
# - /proc/cpuinfo without the avx512*, amx*, avx_vnni and *_bf16 flags, so `model.dtype: auto` resolves to float32
#   as on an AVX2-only CPU (common/devices.py reads the flags there): the dtype decision, which is most of the gap
#   (bf16 vs float32, about 2x in training);
# - MKL capped at AVX2 (MKL_ENABLE_INSTRUCTIONS).
# What it cannot do: torch's and oneDNN's own kernels, and vLLM's, pick their code path from the cpuid instruction.
# Capping them (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2) breaks vLLM's bf16 engine on this CPU (it checks
# cpuid for avx512, then calls torch kernels that the cap removed: "pack_vnni2 is only supported when avx512 is
# supported", or an abort), so they are left uncapped: float32 runs with wider vectors than an AVX2 machine has, and
# the figure is a lower bound of such a machine's time, not its figure. And bubblewrap cannot mount a fresh /proc
# where /proc/cpuinfo is covered by a bind mount, so the sandboxed-grader tests fail inside it: time them outside and
# add them (README, the suite's table).
set -euo pipefail
if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: $0 needs root (a private mount namespace to cover /proc/cpuinfo)" >&2
    exit 2
fi
fake=$(mktemp /tmp/cpuinfo.avx2.XXXXXX)
sed -E '/^flags/ s/ (avx512[a-z0-9_]*|amx[a-z0-9_]*|avx_vnni|[a-z0-9_]*bf16)\b//g' /proc/cpuinfo > "$fake"
if grep -qE '^flags.*(avx512|amx|bf16)' "$fake"; then
    echo "error: could not strip the avx512/amx/bf16 flags from /proc/cpuinfo" >&2
    rm -f "$fake"
    exit 1
fi
export MKL_ENABLE_INSTRUCTIONS=AVX2
rc=0
unshare --mount --propagation private bash -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$fake" "$@" || rc=$?
rm -f "$fake"
exit $rc
