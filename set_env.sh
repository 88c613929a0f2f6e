# shellcheck shell=bash
# Variables the docker compose files read. Source it (do not run it):  source set_env.sh
# Values already set in the shell win, so it is safe to source twice and to override before sourcing.
# No network calls: the host IP comes from the local interfaces.

if ! (return 0 2>/dev/null); then
    echo "set_env.sh sets variables for your shell: source it (source set_env.sh), do not run it" >&2
    exit 1
fi

_chatqna_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]:-$0}")" >/dev/null && pwd)

# This host's address, for reaching the published ports from other machines (README's curl examples).
if [ -z "${HOST_IP:-}" ]; then
    HOST_IP=$( { hostname -I 2>/dev/null || true; } | awk '{print $1}')
    [ -n "$HOST_IP" ] || HOST_IP=127.0.0.1
fi
export HOST_IP

# Models live on the host and are mounted read-only at /models in the containers.
case "${CHATQNA_MODELS_DIR:-}" in
    "") CHATQNA_MODELS_DIR="$_chatqna_root/models" ;;
    /*) ;;
    *) CHATQNA_MODELS_DIR="$PWD/$CHATQNA_MODELS_DIR" ;;
esac
export CHATQNA_MODELS_DIR
export LLM_MODEL="${LLM_MODEL:-SmolLM2-135M-Instruct.Q4_1.gguf}"
export EMBEDDING_MODEL="${EMBEDDING_MODEL:-all-MiniLM-L6-v2}"

# The collection that dataprep fills and the retriever searches.
export INDEX_NAME="${INDEX_NAME:-rag-redis}"

# Host ports: the gateway (OpenAI-compatible chat) and dataprep (ingestion).
export MEGA_SERVICE_PORT="${MEGA_SERVICE_PORT:-8888}"
export DATAPREP_PORT="${DATAPREP_PORT:-6007}"

if [ ! -e "$CHATQNA_MODELS_DIR/$LLM_MODEL" ] || [ ! -e "$CHATQNA_MODELS_DIR/$EMBEDDING_MODEL" ]; then
    echo "set_env.sh: $LLM_MODEL or $EMBEDDING_MODEL is missing from $CHATQNA_MODELS_DIR; run 'chatqna models fetch'" >&2
fi
unset _chatqna_root
