# Shared settings of the per-phase launchers: launch/phaseN.sh sources this file and calls
# `launch_phase N DEFAULT_CONFIG "$@"`. Environment (Megatron-LM / torchtitan conventions):
#
#   GPUS_PER_NODE  ranks per node; default $SLURM_GPUS_ON_NODE, else the visible GPUs
#                  (CUDA_VISIBLE_DEVICES, else nvidia-smi), else 1 (CPU, gloo)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
#                  inside a Slurm job: SLURM_NNODES, SLURM_NODEID, the job's first host, 29500;
#                  otherwise one node: 1, 0, localhost, 29500
#   RDZV_BACKEND   c10d inside a Slurm job (ranks assigned at rendezvous), else static
#                  (torchrun --node-rank/--master-addr, one launch per node)
#   CONFIG         YAML config; default: the phase's example in examples/
#   LOG_DIR        per-rank log files (torchrun --tee); default runs/phaseN/logs
#   LOG_RANK       local ranks echoed to the console, e.g. 0 (default: all)
#   STOP_GRACE     seconds torchrun gives the ranks, after it forwards a SIGTERM, to finish the
#                  step, save and exit before it kills them (default 600; torchrun's own is 30)
#   PYTHON         interpreter for DRY_RUN (default python)
#   DRY_RUN=1      validate the config for GPUS_PER_NODE*NNODES ranks, print it and the torchrun
#                  command, start nothing; on a machine without GPUs (and GPUS_PER_NODE unset)
#                  for the config's own world size, its `# world_size: N` header line
# Extra arguments go to launch/pretrain_omni.py, e.g. --set training.lr=1e-5.
#
# Preemption: SIGTERM or SIGUSR1 to the ranks makes them finish the step, save and exit 0
# (training/trainer.py). torchrun forwards SIGTERM to the ranks itself; SIGUSR1 (Slurm's
# --signal, see slurm/pretrain.sbatch) goes to every process of the job step, so torchrun is
# started with SIGUSR1 ignored (it would otherwise die of it) and the ranks handle it.

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$LAUNCH_DIR")"

_visible_gpus() {
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
        local -a ids
        IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
        echo "${#ids[@]}"
    elif command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi --list-gpus 2> /dev/null | wc -l
    else
        echo 0
    fi
}

NO_GPUS=0  # 1: GPUS_PER_NODE was not given and none is visible (a CPU machine)
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(_visible_gpus)}}"
if (( GPUS_PER_NODE < 1 )); then
    GPUS_PER_NODE=1
    NO_GPUS=1
fi
if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    NNODES="${NNODES:-${SLURM_NNODES:-1}}"
    NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
    MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)}"  # sed reads all: no SIGPIPE under pipefail
    RDZV_BACKEND="${RDZV_BACKEND:-c10d}"
else
    NNODES="${NNODES:-1}"
    NODE_RANK="${NODE_RANK:-0}"
    MASTER_ADDR="${MASTER_ADDR:-localhost}"
    RDZV_BACKEND="${RDZV_BACKEND:-static}"
fi
MASTER_PORT="${MASTER_PORT:-29500}"
WORLD_SIZE=$(( GPUS_PER_NODE * NNODES ))

export CUDA_DEVICE_MAX_CONNECTIONS=1  # megatron: TP/SP communication overlaps compute in order
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / GPUS_PER_NODE > 1 ? $(nproc) / GPUS_PER_NODE : 1 ))}"

DISTRIBUTED_ARGS=(--nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES")
if [[ "$RDZV_BACKEND" == c10d ]]; then
    DISTRIBUTED_ARGS+=(--rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"
                       --rdzv-id "${SLURM_JOB_ID:-megatron-omni}")
else
    DISTRIBUTED_ARGS+=(--node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
fi

# The N of the config's `# world_size: N` header line (the ranks it is laid out for), or nothing.
_header_world_size() {
    [[ -f "$1" ]] || return 0
    sed -n 's/^#[[:space:]]*world_size:[[:space:]]*\([0-9][0-9]*\)[[:space:]]*$/\1/p' "$1" | sed -n 1p
}

# launch_phase PHASE DEFAULT_CONFIG [pretrain_omni.py arguments...]
launch_phase() {
    local phase="$1" config="${CONFIG:-$2}"
    shift 2
    if [[ ! -f "$config" ]]; then
        echo "error: config $config does not exist; set CONFIG to a YAML file (examples/)" >&2
        exit 2
    fi
    local log_dir="${LOG_DIR:-runs/phase$phase/logs}"
    local -a train_args=(--phase "$phase" --config "$config" "$@")
    local -a log_args=(--log-dir "$log_dir" --tee 3)
    if [[ -n "${LOG_RANK:-}" ]]; then
        log_args+=(--local-ranks-filter "$LOG_RANK")
    fi
    local -a command=(torchrun "${DISTRIBUTED_ARGS[@]}" "${log_args[@]}"
                      --shutdown-timeout "${STOP_GRACE:-600}"
                      "$LAUNCH_DIR/pretrain_omni.py" "${train_args[@]}")
    echo "phase $phase: $NNODES node(s) x $GPUS_PER_NODE ranks = $WORLD_SIZE, node rank $NODE_RANK," \
         "$RDZV_BACKEND rendezvous at $MASTER_ADDR:$MASTER_PORT, config $config" >&2
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        echo "would run: ${command[*]}" >&2
        local world_size="$WORLD_SIZE" header
        header="$(_header_world_size "$config")"
        if (( NO_GPUS )) && [[ -n "$header" ]]; then
            world_size="$header"
            echo "no GPUs here: validating for the config's world_size $world_size" \
                 "(set GPUS_PER_NODE and NNODES to choose)" >&2
        fi
        exec "${PYTHON:-python}" "$LAUNCH_DIR/pretrain_omni.py" "${train_args[@]}" \
            --dry-run --world-size "$world_size"
    fi
    mkdir -p "$log_dir"
    trap '' USR1  # inherited by torchrun through exec; the ranks install their own handler
    exec "${command[@]}"
}
